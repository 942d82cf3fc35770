"""The static int8 export and its check against float32: a faithful model is accepted and
its figures recorded; a model beyond tolerance is refused and leaves no int8 file.

On the small run trained by the session fixture (seed_cnn, 32 px synthetic films) and its
validation images; no timing is asserted.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from pneumoscope.core.errors import UserError
from pneumoscope.data.cache import open_cache
from pneumoscope.inference.export import export_onnx, fidelity_of
from pneumoscope.inference.fidelity import TOLERANCE, Tolerance, compare, judge, problems
from pneumoscope.inference.onnx_runner import OnnxRunner
from pneumoscope.model.contract import RunFiles
from pneumoscope.model.network import save_weights
from pneumoscope.model.run import load_run


@pytest.fixture(scope="module")
def val(data_dir) -> tuple[np.ndarray, np.ndarray]:
    """The validation split's images and labels (both classes)."""
    cache = open_cache(data_dir)
    rows = cache.split("val")
    return np.asarray(cache.images[rows["index"].to_numpy()]), rows["label"].to_numpy()


# 24 validation images: one pair of images swapping rank moves the AUROC by 1/144 and one
# flip is 4% of the calls, so the targets (0.002, 1%) cannot be told apart from
# chance here; the probability tolerance is the default one
SMALL_SET = Tolerance(auroc=0.03, max_prob_diff=TOLERANCE.max_prob_diff, flip_fraction=0.1)


@pytest.fixture(scope="module")
def exported(run_dir, val, tmp_path_factory):
    run = tmp_path_factory.mktemp("int8") / "run"
    shutil.copytree(run_dir, run)
    record = export_onnx(
        run, quantize=True, check_images=val[0], check_labels=val[1], tolerance=SMALL_SET
    )
    return run, record


def test_compare_counts_flips_auroc_and_probability_change():
    ref = np.array([0.1, 0.4, 0.6, 0.9])
    labels = np.array([0, 0, 1, 1])
    f = compare(ref, np.array([0.1, 0.7, 0.6, 0.9]), 0.5, labels)
    assert f["flips"] == 1 and f["flip_fraction"] == 0.25
    assert f["max_prob_diff"] == pytest.approx(0.3)
    assert f["auroc_fp32"] == 1.0 and f["auroc_change"] == pytest.approx(-0.25)
    assert len(problems(f)) == 3
    assert problems(compare(ref, ref + 0.01, 0.5, labels)) == []
    assert compare(ref, ref, 0.5)["auroc_change"] is None  # no labels: no AUROC to judge


def test_judge_refuses_in_one_line_and_accepts_within_tolerance():
    ref = np.linspace(0.01, 0.99, 200)
    moved = ref.copy()
    moved[99:101] = [0.6, 0.4]  # two calls of 200 flip (1% is allowed), each moved by ~0.1
    f = judge("m", compare(ref, ref, 0.5), TOLERANCE)
    assert f["accepted"] and f["tolerance"] == TOLERANCE.to_dict()
    with pytest.raises(UserError, match=r"^m refused: .*probability moved by 0\.10") as err:
        judge("m", compare(ref, moved, 0.5), TOLERANCE)
    assert "\n" not in str(err.value)
    loose = Tolerance(max_prob_diff=0.2, flip_fraction=0.01)
    assert judge("m", compare(ref, moved, 0.5), loose)["flips"] == 2


def test_int8_is_static_qdq_with_per_channel_conv_weights(exported):
    import onnx
    from onnx import numpy_helper

    run, record = exported
    q = record["int8"]
    assert (
        q["format"] == "QDQ (static, 7-bit weights)" and "Conv" in q["ops"] and "Gemm" in q["ops"]
    )
    graph = onnx.load(str(run / RunFiles.INT8)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    conv_w = [n.input[1] for n in graph.node if n.op_type == "Conv"]
    producers = {o: n for n in graph.node for o in n.output}
    scales = [inits[producers[w].input[1]] for w in conv_w]  # DequantizeLinear's scale
    assert all(producers[w].op_type == "DequantizeLinear" for w in conv_w)
    assert all(s.ndim == 1 and len(s) > 1 for s in scales)  # one scale per output channel
    assert q["calibration"]["n_images"] == min(256, record["int8"]["fidelity"]["n_images"])


def test_int8_weights_use_seven_bits_and_older_8_bit_exports_are_refused(exported, tmp_path):
    """8-bit weights saturate ONNX Runtime's int8 kernels on CPUs without VNNI (AVX2)."""
    import onnx
    from onnx import numpy_helper

    from pneumoscope.inference.export_record import export_problem

    run, _ = exported
    graph = onnx.load(str(run / RunFiles.INT8)).graph
    weights = [
        numpy_helper.to_array(i) for i in graph.initializer if i.data_type == onnx.TensorProto.INT8
    ]
    assert weights and max(int(np.abs(w.astype(np.int16)).max()) for w in weights) <= 64
    old = tmp_path / "old"
    shutil.copytree(run, old)
    record = json.loads((old / RunFiles.EXPORT_RECORD).read_text())
    record["int8"]["format"] = "QDQ (static)"
    (old / RunFiles.EXPORT_RECORD).write_text(json.dumps(record))
    assert "8-bit weights, which are wrong on CPUs without VNNI" in export_problem(old, int8=True)
    assert export_problem(old) is None  # the float32 export is still good


def test_faithful_int8_is_accepted_and_its_figures_recorded(exported, val):
    run, record = exported
    f = record["int8"]["fidelity"]
    assert f["accepted"] and f["n_images"] == len(val[0])
    assert abs(f["auroc_change"]) <= SMALL_SET.auroc and f["flip_fraction"] <= 0.1
    assert f["tolerance"] == SMALL_SET.to_dict()
    assert 0 < f["max_prob_diff"] <= 0.05  # int8 moved something, within tolerance
    assert record["fidelity"]["max_prob_diff"] < 1e-4  # float32 ONNX: same numbers
    assert json.loads((run / RunFiles.EXPORT_RECORD).read_text())["int8"]["fidelity"] == f
    loaded = load_run(run)
    z, _ = OnnxRunner(run, int8=True, threads=1).logits_and_features(val[0])
    p, ref = loaded.proba_from_logits(z), loaded.predict_proba(val[0])
    assert np.abs(p - ref).max() == pytest.approx(f["max_prob_diff"], abs=1e-6)


def test_int8_beyond_tolerance_is_refused_and_leaves_no_int8_file(run_dir, val, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    strict = Tolerance(auroc=0.0, max_prob_diff=0.0, flip_fraction=0.0)
    with pytest.raises(UserError, match="the int8 model refused: .*probability moved"):
        export_onnx(run, quantize=True, check_images=val[0], check_labels=val[1], tolerance=strict)
    assert not (run / RunFiles.INT8).exists()
    assert not [p for p in run.iterdir() if p.name.startswith(".int8-")]  # no leftovers
    record = json.loads((run / RunFiles.EXPORT_RECORD).read_text())
    assert record["int8"] is None and record["int8_refused"]["fidelity"]["accepted"] is False
    OnnxRunner(run)  # the float32 export stays usable
    with pytest.raises(UserError, match="not found"):
        OnnxRunner(run, int8=True)


def test_a_model_with_perturbed_weights_is_refused(run_dir, val, tmp_path, one_torch_thread):
    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    model = load_run(broken).model
    gen = torch.Generator().manual_seed(0)  # not the global stream: other tests move it
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1 + 0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    save_weights(model, RunFiles.of(broken).weights)
    export_onnx(broken, check_images=val[0])
    figures = fidelity_of(load_run(run_dir), OnnxRunner(broken), *val)
    with pytest.raises(UserError, match="refused"):
        judge("the perturbed model", figures)
    assert figures["max_prob_diff"] > TOLERANCE.max_prob_diff


def test_int8_without_validation_images_is_refused(run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    with pytest.raises(UserError, match="validation images"):
        export_onnx(run, quantize=True)
