"""ONNX export and the ONNX Runtime backend, on tiny random-initialised runs (nothing trained)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pneumoscope.core.errors import UserError
from pneumoscope.inference.export import LOGIT_TOLERANCE, export_onnx
from pneumoscope.inference.fidelity import Tolerance
from pneumoscope.inference.onnx_runner import OnnxRunner
from pneumoscope.model.architectures import build_model
from pneumoscope.model.contract import RunFiles
from pneumoscope.model.network import save_weights
from pneumoscope.model.run import load_run

ONNX_FILE, INT8_FILE, RECORD_FILE = RunFiles.ONNX, RunFiles.INT8, RunFiles.EXPORT_RECORD

SIZE = 32
ANY = Tolerance(auroc=1.0, max_prob_diff=1.0, flip_fraction=1.0)


def make_run(root: Path, arch: str, seed: int = 0) -> Path:
    """A run folder as training leaves it (weights + card), with random weights."""
    torch.manual_seed(seed)
    model = build_model(arch, 1, SIZE).eval()
    for m in model.modules():  # He init keeps activations O(1) through depth, as trained
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):  # nets do; the default shrinks
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")  # seed_cnn's to ~0
    root.mkdir(parents=True, exist_ok=True)
    save_weights(model, root / "model.safetensors")
    card = {
        "architecture": arch,
        "in_chans": 1,
        "img_size": SIZE,
        "preprocess": {"img_size": SIZE, "clahe": True},
        "normalization": {"mean": [0.5], "std": [0.25], "scale": "pixel / 255"},
        "class_names": ["NORMAL", "PNEUMONIA"],
        "positive_class": "PNEUMONIA",
        "threshold": 0.5,
        "weights": "model.safetensors",
    }
    (root / "model.json").write_text(json.dumps(card))
    return root


def images(n: int, seed: int = 1) -> np.ndarray:
    """Images whose brightness and contrast vary a lot, so random nets' logits spread out."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.0, 1.0, SIZE)[None, :]
    out = []
    for _ in range(n):
        level, slope = rng.uniform(0, 200), rng.uniform(-120, 120)
        img = level + slope * ramp + rng.normal(0, rng.uniform(2, 40), (SIZE, SIZE))
        out.append(np.clip(img, 0, 255))
    return np.stack(out).astype(np.uint8)


@pytest.fixture(scope="module", params=["seed_cnn", "resnet10t"])
def exported(request, tmp_path_factory) -> tuple[Path, dict]:
    run = make_run(tmp_path_factory.mktemp(request.param) / "run", request.param)
    # random nets put many logits near the threshold: the fidelity tolerance is tested on a
    # trained run in test_int8_fidelity.py; here only the mechanics are
    return run, export_onnx(run, quantize=True, check_images=images(24), tolerance=ANY)


def _ort(path: Path, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return tuple(sess.run(["logit", "features"], {"image": batch[:, None]}))


@pytest.mark.parametrize("batch", [1, 5])
def test_onnx_matches_torch_at_any_batch_size(exported, batch):
    run, record = exported
    x = images(batch, seed=7 + batch)
    with torch.inference_mode():
        z, f = load_run(run).inference_net()(torch.from_numpy(x).unsqueeze(1))
    oz, of = _ort(run / ONNX_FILE, x)
    assert oz.shape == (batch,) and of.shape == tuple(f.shape)
    assert np.abs(oz - z.numpy()).max() <= LOGIT_TOLERANCE
    assert np.abs(of - f.numpy()).max() <= 1e-3


def test_record_is_written(exported):
    run, record = exported
    on_disk = json.loads((run / RECORD_FILE).read_text())
    assert on_disk == json.loads(json.dumps(record))
    assert record["weights_sha256"] == RunFiles(run).weights_sha256()
    assert record["max_abs_diff_logit"] <= LOGIT_TOLERANCE
    assert record["n_checked"] == 24 and record["opset"] >= 17
    assert Path(record["paths"]["int8"]) == run / INT8_FILE


def test_runner_equals_loaded_run_with_rows(exported):
    run, _ = exported
    x = images(21, seed=3)
    rows = np.array([20, 3, 3, 0, 11, 7, 15])
    runner, loaded = OnnxRunner(run, threads=1), load_run(run)
    for kw in ({}, {"rows": rows}):
        z, f = runner.logits_and_features(x, batch_size=4, **kw)
        tz, tf = loaded.logits_and_features(x, batch_size=4, **kw)
        assert z.dtype == np.float32 and z.shape == tz.shape and f.shape == tf.shape
        assert np.abs(z - tz).max() <= LOGIT_TOLERANCE
        assert np.abs(f - tf).max() <= 1e-3


def test_int8_tracks_fp32(exported):
    run, record = exported
    x = images(64, seed=5)
    z, _ = OnnxRunner(run, threads=1).logits_and_features(x, batch_size=16)
    q, _ = OnnxRunner(run, int8=True, threads=1).logits_and_features(x, batch_size=16)
    assert np.corrcoef(z, q)[0, 1] > 0.95
    assert record["int8"]["logit_pearson"] > 0.95


def test_runner_refuses_wrong_images(exported):
    run, _ = exported
    with pytest.raises(UserError, match="uint8"):
        OnnxRunner(run).logits_and_features(images(2).astype(np.float32))


def test_stale_export_is_refused(tmp_path):
    run = make_run(tmp_path / "run", "seed_cnn")
    export_onnx(run, check_images=images(4))
    OnnxRunner(run)  # current: fine
    make_run(run, "seed_cnn", seed=1)  # retrained: other weights, same file name
    with pytest.raises(UserError, match="other weights.*pneumoscope export"):
        OnnxRunner(run)
    with pytest.raises(UserError, match="pneumoscope export --run .* --int8"):
        OnnxRunner(run, int8=True)  # never exported with int8


def test_missing_export_says_how_to_make_it(tmp_path):
    run = make_run(tmp_path / "run", "seed_cnn")
    with pytest.raises(UserError, match="pneumoscope export --run"):
        OnnxRunner(run)


def test_wrong_check_images_are_refused(tmp_path):
    run = make_run(tmp_path / "run", "seed_cnn")
    with pytest.raises(UserError, match="check images"):
        export_onnx(run, check_images=np.zeros((3, 16, 16), np.uint8))
    assert not (run / ONNX_FILE).exists()
