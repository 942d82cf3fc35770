"""Backends: what computes (logits, features) from preprocessed films for a run: torch
(float32 or bf16), ONNX Runtime (float32 or static int8) or OpenVINO (int8), or "auto",
the fastest this run and CPU allow."""

from __future__ import annotations

from pneumoscope.core.errors import UserError
from pneumoscope.model.run import LoadedRun

BACKENDS = ("torch", "torch-bf16", "onnx", "onnx-int8", "openvino", "auto")


def make_runner(loaded: LoadedRun, backend: str):
    """Whatever computes (logits, features) from uint8 images: torch (float32 or bf16),
    ONNX Runtime (float32 or static int8) or OpenVINO (int8); "auto" picks the fastest
    this run and CPU allow (:func:`resolve_backend`). Wrapped in the run's test-time
    augmentation when its calibration has it (``LoadedRun.scorer``), as every command scores."""
    from pneumoscope.inference.export_record import recorded_views

    runner = _backend_runner(loaded, resolve_backend(loaded, backend))
    return loaded.scorer(runner, recorded_views(loaded.root, loaded.tta))


def _backend_runner(loaded: LoadedRun, backend: str):
    if backend in ("torch", "torch-bf16"):
        _ = loaded.model  # the network now: no torch, or bad weights, is one line, early
    if backend == "torch":
        return loaded
    if backend == "torch-bf16":
        from pneumoscope.inference.bf16 import TorchBf16Runner

        return TorchBf16Runner(loaded)
    if backend == "openvino":
        from pneumoscope.inference.ov_runner import OpenVinoRunner

        return OpenVinoRunner(loaded.root)
    from pneumoscope.inference.onnx_runner import OnnxRunner

    return OnnxRunner(loaded.root, int8=backend == "onnx-int8")


def resolve_backend(loaded: LoadedRun, backend: str) -> str:
    """The backend ``backend`` names; for "auto", the fastest usable one, in the order
    measured on an AVX512-VNNI/BF16 CPU (bench/predict.py): OpenVINO int8, ONNX Runtime
    int8 (both need a current `pneumoscope export --int8`), torch bf16 (a CPU with native
    bf16), ONNX Runtime float32 (an export), torch float32."""
    if backend not in BACKENDS:
        raise UserError(f"--backend must be one of {', '.join(BACKENDS)}, got '{backend}'")
    if backend != "auto":
        return backend
    from pneumoscope.inference.export_record import export_problem
    from pneumoscope.model.run import torch_missing

    int8 = export_problem(loaded.root, int8=True) is None
    if int8 and _openvino_checked(loaded):
        return "openvino"
    if int8:
        return "onnx-int8"
    if torch_missing("auto") is None:
        from pneumoscope.model.hardware import cpu_features

        if cpu_features().bf16_fast:
            return "torch-bf16"
    return "onnx" if export_problem(loaded.root) is None else "torch"


def _openvino_checked(loaded: LoadedRun) -> bool:
    from pneumoscope.inference.ov_runner import openvino_checked

    return openvino_checked(loaded.files)
