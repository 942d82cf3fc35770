"""ONNX export of a run, an ONNX Runtime backend for it, and a static int8 model.

``export_onnx`` writes ``RUN/model.onnx`` (uint8 images in, logits and features out, the
normalisation inside, any batch size), checks it against PyTorch on real images before it
replaces the previous file, and records the weights' SHA-256 in ``RUN/export.json`` so
that ``OnnxRunner`` refuses an export made from other weights.

Exporter: ``torch.onnx.export(dynamo=True)`` with a dynamic batch dimension. It is the
default, maintained exporter of PyTorch 2.9+, while the TorchScript one (``dynamo=False``)
is deprecated; both gave the same numbers for seed_cnn, resnet10t/18 and efficientnet_b0.

int8 (``--int8``): a static QDQ model, convolutions included, per-channel weights,
calibrated on validation images (:mod:`pneumoscope.inference.quantize`). The previous
dynamic int8 (last layer only) ran no faster than float32, and dynamic quantisation of the
convolutions ran 2-8x slower; static QDQ runs the convolutions on the int8 units. Each
model is compared with the float32 torch model on the validation images given
(:mod:`pneumoscope.inference.fidelity`: AUROC change, largest probability change, calls
flipped at the run's threshold); an int8 model beyond tolerance is refused (UserError) and
no int8 file is left, the float32 export staying usable. When OpenVINO is installed, its
run of the int8 file is checked the same way (``--backend openvino``).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from pneumoscope.core import __version__
from pneumoscope.core.errors import UserError
from pneumoscope.core.io import atomic_write, write_json_atomic
from pneumoscope.inference.export_record import (
    INT8_FORMAT,
    check_export,
    export_problem,
    views_record,
)
from pneumoscope.inference.fidelity import TOLERANCE, Tolerance, compare, judge
from pneumoscope.inference.onnx_runner import (
    CAM,
    INPUT,
    OUTPUTS,
    OnnxRunner,
    open_session,
    run_batch,
)
from pneumoscope.inference.quantize import CALIB_N, calibration_sample, quantize_qdq
from pneumoscope.model.contract import RunFiles, read_card
from pneumoscope.model.hardware import cpu_features
from pneumoscope.model.network import InferenceNet, cam_weights
from pneumoscope.model.run import LoadedRun, load_run

__all__ = [
    "INT8_FORMAT",
    "OnnxRunner",
    "check_export",
    "export_onnx",
    "export_problem",
    "fidelity_of",
]

DEFAULT_OPSET = 20  # torch 2.15's default; ONNX Runtime >= 1.18 runs it
LOGIT_TOLERANCE = 1e-4
MAX_CHECK = 32  # images of the exact (1e-4) arithmetic check
MAX_FIDELITY = 2048  # validation images of the fidelity check


# ---------------------------------------------------------------- export


def export_onnx(
    run: str | Path,
    out: str | Path | None = None,
    quantize: bool = False,
    check_images: np.ndarray | None = None,
    opset: int = DEFAULT_OPSET,
    check_labels: np.ndarray | None = None,
    tolerance: Tolerance = TOLERANCE,
    calib_n: int = CALIB_N,
    seed: int = 0,
) -> dict:
    """Export ``run`` to ONNX, verify it against PyTorch, optionally write int8; return the record.

    ``check_images`` are preprocessed uint8 validation images (N, S, S): the first
    ``MAX_CHECK`` check the arithmetic (max |logit difference| <= 1e-4), up to
    ``MAX_FIDELITY`` (with ``check_labels`` for the AUROC) compare each model with float32
    torch, and a seeded sample of ``calib_n`` calibrates the int8 model. Without them,
    random pixels check the arithmetic only, and int8 is refused. The record (also written
    as export.json) holds the paths, the figures and the weights' SHA-256.
    """
    files = RunFiles.of(run)
    read_card(files)  # a missing or unfinished run gets its own message
    digest = files.weights_sha256()  # taken before loading: the weights the export is made from
    loaded = _load(files)
    size = loaded.preprocess.img_size
    images = _check_set(check_images, size)
    if quantize and check_images is None:
        raise UserError("int8 needs validation images to calibrate and check it on")
    val = _fidelity_set(check_images, check_labels, size)
    out = Path(out).expanduser() if out else files.onnx
    record_path = RunFiles.record_beside(out)
    record_path.unlink(missing_ok=True)  # a half-finished export must never look current
    int8_path = RunFiles.int8_beside(out)
    int8_path.unlink(missing_ok=True)  # so is an int8 model of other weights
    net = _export_net(loaded, images)
    diffs: dict = {}

    def write(tmp: str) -> None:
        _export(net, images, tmp, opset)
        diffs.update(_verify(tmp, images, _torch_outputs(net, images)))

    atomic_write(out, write)
    record = _record(loaded, out, record_path, digest, diffs, len(images), check_images)
    record["tolerance"] = tolerance.to_dict()
    if val is not None:
        ref = _fidelity_ref(loaded, val[0])
        record["fidelity"] = _figures(loaded, OnnxRunner.at(out), val, ref)
    if quantize:
        _add_int8(record, loaded, out, int8_path, val, ref, (tolerance, calib_n, seed))
    if files.weights_sha256() != digest:
        raise UserError(f"{files.weights} changed during the export; run the export again")
    write_json_atomic(record_path, record)
    return record


def _export_net(loaded: LoadedRun, images: np.ndarray) -> InferenceNet:
    """The run's inference module, with the class activation map as a third output when
    its head is global average pooling + linear (where that map is Grad-CAM's)."""
    net = loaded.inference_net()
    x = loaded.model_input(torch.from_numpy(images[:2]).unsqueeze(1))
    weights = cam_weights(loaded.model, x)
    if weights is None:
        return net
    return InferenceNet(
        loaded.model, net.mean, net.std, loaded.in_chans, loaded.eval_crop, cam=weights
    ).eval()


def _load(files: RunFiles) -> LoadedRun:
    """The run, with its calibration (temperature, threshold) when current: the check
    compares calibrated probabilities; a stale calibration leaves the card's threshold."""
    from pneumoscope.model.calibration import TemperatureScaler

    loaded = load_run(files.root, use_calibration=False)  # calibration never touches the graph
    with contextlib.suppress(UserError):  # stale: 'calibrate' says so where it matters
        loaded.calibration = TemperatureScaler.load(files)
    return loaded


def _add_int8(record: dict, loaded: LoadedRun, src: Path, dst: Path, val, ref, how) -> None:
    """Quantise, check and (when within tolerance) install the int8 model; record it.

    A refused model is deleted before the UserError, and the record (without int8, with
    ``int8_refused``) is still written, so ``--backend onnx`` keeps working.
    """
    tolerance, calib_n, seed = how
    calib = val[0][calibration_sample(len(val[0]), calib_n, seed)]
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".int8-") as tmp:
        candidate = Path(tmp) / dst.name
        info = quantize_qdq(src, candidate, calib)
        info["calibration"]["seed"] = seed
        info["calibration"]["images"] = "validation split (seeded sample)"
        figures = _figures(loaded, OnnxRunner.at(candidate), val, ref)
        try:
            info["fidelity"] = judge("the int8 model", figures, tolerance)
        except UserError:
            record["int8_refused"] = {**info, "fidelity": figures}
            write_json_atomic(record["paths"]["record"], record)
            raise
        info["openvino"] = _openvino_figures(loaded, candidate, val, ref, tolerance)
        os.replace(candidate, dst)
    ours = record["int8"] = info
    ours["max_abs_diff_logit"] = figures.pop("max_abs_diff_logit")
    ours["logit_pearson"] = figures.pop("logit_pearson")
    record["paths"]["int8"] = str(dst.resolve())


def _openvino_figures(loaded: LoadedRun, path: Path, val, ref, tolerance) -> dict | None:
    """OpenVINO's run of the int8 file against float32 (None when OpenVINO is not installed)."""
    from pneumoscope.inference.ov_runner import OpenVinoRunner, openvino_available

    if not openvino_available():
        return None
    figures = _figures(loaded, OpenVinoRunner.at(path), val, ref)
    try:
        judge("OpenVINO's run of the int8 model", figures, tolerance)
    except UserError as exc:
        figures["refused"] = str(exc)
    return figures


def _fidelity_set(images, labels, size: int):
    """(images, labels or None) of the fidelity check: up to MAX_FIDELITY, or None."""
    if images is None:
        return None
    images = np.asarray(images[:MAX_FIDELITY])
    _check_set(images, size)
    if labels is not None:
        labels = np.asarray(labels[:MAX_FIDELITY])
        if len(labels) != len(images):
            raise UserError(f"{len(labels)} check labels for {len(images)} check images")
    return images, labels


def fidelity_of(
    loaded: LoadedRun, runner, images: np.ndarray, labels: np.ndarray | None = None
) -> dict:
    """Figures (:func:`pneumoscope.inference.fidelity.compare`) of ``runner`` against the
    float32 torch model of ``loaded`` on preprocessed uint8 ``images``."""
    val = (np.asarray(images), None if labels is None else np.asarray(labels))
    return _figures(loaded, runner, val, _fidelity_ref(loaded, val[0]))


def _fidelity_ref(loaded: LoadedRun, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Float32 torch logits and probabilities: what every model is compared with."""
    logits = loaded.predict_logits(images, batch_size=32)
    return logits, loaded.proba_from_logits(logits)


def _figures(loaded: LoadedRun, runner, val, ref) -> dict:
    """compare() of ``runner`` on the fidelity set, with the logit differences."""
    logits, _ = runner.logits_and_features(val[0], batch_size=32)
    figures = compare(ref[1], loaded.proba_from_logits(logits), loaded.threshold, val[1])
    figures["max_abs_diff_logit"] = _maxdiff(logits, ref[0])
    figures["logit_pearson"] = _pearson(logits, ref[0])
    return figures


def _record(
    loaded: LoadedRun, out: Path, record_path: Path, digest: str, diffs: dict, n: int, given
) -> dict:
    """What export.json holds: enough to find the files, trust them and detect staleness."""
    return {
        "paths": {"onnx": str(out.resolve()), "int8": None, "record": str(record_path.resolve())},
        **diffs,
        "n_checked": n,
        "check_images": "random pixels" if given is None else "given",
        "opset": _opset_of(out),
        "weights_sha256": digest,
        "img_size": loaded.preprocess.img_size,
        "architecture": loaded.card.architecture,
        "exporter": "torch.onnx.export(dynamo=True), dynamic batch axis",
        "versions": _versions(),
        "cpu": cpu_features().to_dict(),
        "fidelity": None,
        "int8": None,
        "tta_views": views_record(loaded.tta),
    }


def _check_set(images: np.ndarray | None, size: int) -> np.ndarray:
    """Up to MAX_CHECK uint8 (N, S, S) images; random pixels (fixed seed) when none given."""
    if images is None:
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, (MAX_CHECK, size, size), dtype=np.uint8)
    images = np.asarray(images[:MAX_CHECK])
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (size, size):
        raise UserError(
            f"check images must be uint8 (N, {size}, {size}) preprocessed like the run, "
            f"got {images.dtype} {images.shape}"
        )
    if len(images) == 0:
        raise UserError("no check images given: pass at least one preprocessed image")
    return np.ascontiguousarray(images)


def _torch_outputs(net: InferenceNet, images: np.ndarray) -> tuple[np.ndarray, ...]:
    """(logits, features) and, when the module has it, the class activation map."""
    with torch.inference_mode():
        outputs = net(torch.from_numpy(images).unsqueeze(1))
    return tuple(o.float().numpy() for o in outputs)


def _export(net: InferenceNet, images: np.ndarray, path: str, opset: int) -> None:
    """Trace with a batch of 2 (torch.export specialises size-1 dimensions) and save one file."""
    import onnx

    example = torch.from_numpy(np.resize(images, (2, *images.shape[1:]))).unsqueeze(1)
    program = torch.onnx.export(
        net,
        (example,),
        input_names=[INPUT],
        output_names=[*OUTPUTS, CAM] if net.with_cam else list(OUTPUTS),
        opset_version=opset,
        dynamo=True,
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        verbose=False,
    )
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    onnx.save_model(program.model_proto, path)


def _verify(path: str, images: np.ndarray, ref: tuple[np.ndarray, ...]) -> dict:
    """Max |ONNX Runtime - PyTorch| over the whole set in one batch and the first image alone.

    The batch of one proves the batch axis is really dynamic (the trace used two).
    """
    session = open_session(path, None)
    z, f = run_batch(session, images)
    z1, f1 = run_batch(session, images[:1])
    dz = max(_maxdiff(z, ref[0]), _maxdiff(z1, ref[0][:1]))
    df = max(_maxdiff(f, ref[1]), _maxdiff(f1, ref[1][:1]))
    if not dz <= LOGIT_TOLERANCE:  # also catches NaN
        raise UserError(
            f"the ONNX export disagrees with PyTorch: max |logit difference| {dz:.3g} > "
            f"{LOGIT_TOLERANCE:g} (features {df:.3g}) on {len(images)} images; the previous "
            "export (if any) was kept. Report this with the run's architecture."
        )
    diffs = {"max_abs_diff_logit": dz, "max_abs_diff_features": df, "cam": len(ref) > 2}
    if len(ref) > 2:  # the map's own scale varies by model: its difference relative to it
        [cam] = session.run([CAM], {INPUT: images[:, None]})
        scale = max(float(np.max(np.abs(ref[2]))), 1e-12)
        diffs["max_rel_diff_cam"] = _maxdiff(cam, ref[2]) / scale
    return diffs


def _maxdiff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)), initial=0.0))


def _opset_of(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    if len(a) < 2 or np.std(a) == 0 or np.std(b) == 0:
        return None
    return float(np.corrcoef(a.astype(np.float64), b.astype(np.float64))[0, 1])


def _versions() -> dict:
    import onnx
    import onnxruntime

    return {
        "pneumoscope": __version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
