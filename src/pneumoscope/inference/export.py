"""ONNX export of a run, an ONNX Runtime backend for it, and optional int8 weights.

``export_onnx`` writes ``RUN/model.onnx`` (uint8 images in, logits and features out, the
normalisation inside, any batch size), checks it against PyTorch on real images before it
replaces the previous file, and records the weights' SHA-256 in ``RUN/export.json`` so
that ``OnnxRunner`` refuses an export made from other weights.

Exporter: ``torch.onnx.export(dynamo=True)`` with a dynamic batch dimension. It is the
default, maintained exporter of PyTorch 2.9+, while the TorchScript one (``dynamo=False``)
is deprecated; both gave the same numbers for seed_cnn, resnet10t/18 and efficientnet_b0.

int8: ``quantize_dynamic`` on the Gemm/MatMul layers only (``INT8_OPS``). Measured on this
project's conv nets (ONNX Runtime 1.31, 2 CPU threads, 128 px): dynamic quantisation of
the convolutions too (ConvInteger, whose inputs are re-quantised at every call) ran
2-8x *slower* than fp32, and Gemm/MatMul-only ran as fast as fp32 with logits within
0.01. Dynamic int8 therefore brings no speed-up to conv nets; pass ``int8_ops=("Conv",
"MatMul", "Gemm")`` for a 4x smaller (but slower) file. What did speed conv nets up in
the same test was static QDQ quantisation (calibrated activations, QLinearConv): 1.3-2.6x
faster than fp32, at a larger logit change; it is not implemented here.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from pneumoscope.core import __version__
from pneumoscope.core.errors import UserError
from pneumoscope.core.io import atomic_write, write_json_atomic
from pneumoscope.model.contract import RunFiles, read_card
from pneumoscope.model.run import InferenceNet, LoadedRun, load_run, row_batches

INPUT = "image"
OUTPUTS = ("logit", "features")
DEFAULT_OPSET = 20  # torch 2.15's default; ONNX Runtime >= 1.18 runs it
LOGIT_TOLERANCE = 1e-4
MAX_CHECK = 32
INT8_OPS = ("MatMul", "Gemm")


# ---------------------------------------------------------------- export


def export_onnx(
    run: str | Path,
    out: str | Path | None = None,
    quantize: bool = False,
    check_images: np.ndarray | None = None,
    opset: int = DEFAULT_OPSET,
    int8_ops: Sequence[str] = INT8_OPS,
) -> dict:
    """Export ``run`` to ONNX, verify it against PyTorch, optionally write int8; return the record.

    ``check_images`` are preprocessed uint8 images (N, S, S) (the first ``MAX_CHECK`` are
    used); without them, random pixels are used, which check the arithmetic but not the
    range of real inputs. The record (also written as export.json) holds the paths, the
    differences to PyTorch and the weights' SHA-256.
    """
    files = RunFiles.of(run)
    read_card(files)  # a missing or unfinished run gets its own message
    digest = files.weights_sha256()  # taken before loading: the weights the export is made from
    loaded = load_run(files.root, use_calibration=False)  # calibration does not touch the graph
    images = _check_set(check_images, loaded.preprocess.img_size)
    out = Path(out).expanduser() if out else files.onnx
    record_path = RunFiles.record_beside(out)
    record_path.unlink(missing_ok=True)  # a half-finished export must never look current
    net = loaded.inference_net()
    ref = _torch_outputs(net, images)
    diffs: dict = {}

    def write(tmp: str) -> None:
        _export(net, images, tmp, opset)
        diffs.update(_verify(tmp, images, ref))

    atomic_write(out, write)
    record = _record(loaded, out, record_path, digest, diffs, len(images), check_images)
    if quantize:
        int8_path = RunFiles.int8_beside(out)
        record["int8"] = _write_int8(out, int8_path, images, ref, int8_ops)
        record["paths"]["int8"] = str(int8_path.resolve())
    if files.weights_sha256() != digest:
        raise UserError(f"{files.weights} changed during the export; run the export again")
    write_json_atomic(record_path, record)
    return record


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
        "int8": None,
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


def _torch_outputs(net: InferenceNet, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.inference_mode():
        z, f = net(torch.from_numpy(images).unsqueeze(1))
    return z.float().numpy(), f.float().numpy()


def _export(net: InferenceNet, images: np.ndarray, path: str, opset: int) -> None:
    """Trace with a batch of 2 (torch.export specialises size-1 dimensions) and save one file."""
    import onnx

    example = torch.from_numpy(np.resize(images, (2, *images.shape[1:]))).unsqueeze(1)
    program = torch.onnx.export(
        net,
        (example,),
        input_names=[INPUT],
        output_names=list(OUTPUTS),
        opset_version=opset,
        dynamo=True,
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        verbose=False,
    )
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    onnx.save_model(program.model_proto, path)


def _verify(path: str, images: np.ndarray, ref: tuple[np.ndarray, np.ndarray]) -> dict:
    """Max |ONNX Runtime - PyTorch| over the whole set in one batch and the first image alone.

    The batch of one proves the batch axis is really dynamic (the trace used two).
    """
    session = _session(path, None)
    z, f = _run(session, images)
    z1, f1 = _run(session, images[:1])
    dz = max(_maxdiff(z, ref[0]), _maxdiff(z1, ref[0][:1]))
    df = max(_maxdiff(f, ref[1]), _maxdiff(f1, ref[1][:1]))
    if not dz <= LOGIT_TOLERANCE:  # also catches NaN
        raise UserError(
            f"the ONNX export disagrees with PyTorch: max |logit difference| {dz:.3g} > "
            f"{LOGIT_TOLERANCE:g} (features {df:.3g}) on {len(images)} images; the previous "
            "export (if any) was kept. Report this with the run's architecture."
        )
    return {"max_abs_diff_logit": dz, "max_abs_diff_features": df}


def _maxdiff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)), initial=0.0))


def _opset_of(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _write_int8(
    src: Path, dst: Path, images: np.ndarray, ref: tuple[np.ndarray, np.ndarray], ops
) -> dict:
    """Dynamic int8 (QInt8 weights) of ``ops``; returns its differences to PyTorch.

    quant_pre_process first: it folds batch norms and re-infers shapes; without it the
    quantiser rejects the dynamo exporter's shape annotations of transposed Gemm weights.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="pneumoscope-int8-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre))
        atomic_write(
            dst,
            lambda out: quantize_dynamic(
                pre, out, op_types_to_quantize=list(ops), weight_type=QuantType.QInt8
            ),
        )
    z, _ = _run(_session(dst, None), images)
    return {
        "ops": list(ops),
        "weight_type": "QInt8",
        "max_abs_diff_logit": _maxdiff(z, ref[0]),
        "logit_pearson": _pearson(z, ref[0]),
    }


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


# ---------------------------------------------------------------- runtime


def export_problem(run: str | Path, int8: bool = False) -> str | None:
    """Why RUN's ONNX export cannot be used (missing, unfinished, stale), or None if it can."""
    files = RunFiles.of(run)
    path = files.int8 if int8 else files.onnx
    again = f"run 'pneumoscope export --run {files.root}{' --int8' if int8 else ''}'"
    if not path.is_file():
        return f"{path} not found; {again} first"
    record_path = files.export_record
    if not record_path.is_file():
        return f"{record_path} is missing (the export did not finish); {again} again"
    try:
        record = json.loads(record_path.read_text())
    except json.JSONDecodeError as exc:
        return f"{record_path} is not valid JSON ({exc}); {again} again"
    if record.get("weights_sha256") != files.weights_sha256():
        return f"{path} was exported from other weights than {files.weights}; {again} again"
    if int8 and not record.get("int8"):
        return f"{path} is not from the latest export (it had no int8); {again} again"
    return None


def check_export(run: str | Path, int8: bool = False) -> None:
    """Raise UserError with the way out when RUN's ONNX export is missing or stale."""
    read_card(run)  # a missing or unfinished run folder gets its own message
    problem = export_problem(run, int8)
    if problem:
        raise UserError(problem)


def _session(path: str | Path, threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.inter_op_num_threads = 1  # the graph is a chain: no parallel branches to run
    options.log_severity_level = 3  # errors only: ORT's warnings are not the user's business
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _run(session, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    z, f = session.run(list(OUTPUTS), {INPUT: batch[:, None]})
    return z.astype(np.float32, copy=False), f.astype(np.float32, copy=False)


class OnnxRunner:
    """ONNX Runtime twin of ``LoadedRun.logits_and_features`` (CPU), refusing stale exports.

    ``threads`` sets ONNX Runtime's intra-op threads (default: all cores).
    """

    def __init__(self, run: str | Path, int8: bool = False, threads: int | None = None):
        files = RunFiles.of(run)
        self.root = files.root
        check_export(self.root, int8)
        self.path = files.int8 if int8 else files.onnx
        self.int8 = int8
        self.session = _session(self.path, threads)
        shape = self.session.get_inputs()[0].shape
        self.img_size = int(shape[-1])
        self.n_features = int(self.session.get_outputs()[1].shape[-1])

    def logits_and_features(
        self, images: np.ndarray, batch_size: int = 64, rows: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Logits (N,) and penultimate features (N, D) of preprocessed uint8 images.

        ``rows`` selects images of a (memory-mapped) array batch by batch, so a large
        split is never loaded whole.
        """
        self._check_images(images)
        logits = [np.zeros(0, np.float32)]
        feats = [np.zeros((0, self.n_features), np.float32)]
        for _, chunk in row_batches(images, rows, batch_size):
            z, f = _run(self.session, chunk)
            logits.append(z)
            feats.append(f)
        return np.concatenate(logits), np.concatenate(feats)

    def _check_images(self, images: np.ndarray) -> None:
        """ONNX Runtime's own errors for a wrong dtype or size do not say what to do."""
        s = self.img_size
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (s, s):
            raise UserError(
                f"{self.path.name} expects preprocessed uint8 images (N, {s}, {s}), got "
                f"{images.dtype} {images.shape}; preprocess them with the run's settings"
            )
