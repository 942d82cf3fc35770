"""``--backend openvino``: OpenVINO running the run's static int8 model (model.int8.onnx).

OpenVINO reads the QDQ file as an int8 network and picks the CPU's fastest kernels itself
(VNNI, AMX; bf16 for what stays in float on bf16 CPUs). On the 2-core AVX512-VNNI/BF16
development machine it ran the ResNet-18 int8 model about 1.4x faster than ONNX Runtime
and halved its single-image latency (bench/predict.py). It is an optional dependency
(``pip install 'pneumoscope[openvino]'``); the export checks OpenVINO's run of the int8
file against float32 when it is installed, and this backend refuses a file never checked
that way or outside the tolerance.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np

from pneumoscope.core.errors import UserError
from pneumoscope.inference.export_record import export_problem
from pneumoscope.model.contract import RunFiles, read_card
from pneumoscope.model.run import row_batches

INSTALL = "pip install 'pneumoscope[openvino]'"


def openvino_available() -> bool:
    return importlib.util.find_spec("openvino") is not None


def openvino_problem(files: RunFiles) -> str | None:
    """Why OpenVINO cannot run the run's int8 model (not installed, no current int8
    export, OpenVINO's run of it unchecked or refused), or None if it can."""
    if not openvino_available():
        return f"--backend openvino needs OpenVINO: {INSTALL}"
    problem = export_problem(files.root, int8=True)
    if problem:
        return problem
    ov = json.loads(files.export_record.read_text())["int8"].get("openvino")
    if ov is None:
        return (
            "the export did not check the int8 model under OpenVINO; run 'pneumoscope export "
            f"--run {files.root} --int8' again with OpenVINO installed"
        )
    if ov.get("refused"):
        return f"{ov['refused']}; use --backend onnx-int8"
    return None


def openvino_checked(files: RunFiles) -> bool:
    return openvino_problem(files) is None


class OpenVinoRunner:
    """OpenVINO twin of ``LoadedRun.logits_and_features`` on the run's int8 model."""

    def __init__(self, run: str | Path, threads: int | None = None):
        files = RunFiles.of(run)
        read_card(files)  # a missing or unfinished run folder gets its own message
        problem = openvino_problem(files)
        if problem:
            raise UserError(problem)
        self._open(files.int8, threads)
        self.root = files.root

    @classmethod
    def at(cls, path: str | Path, threads: int | None = None) -> OpenVinoRunner:
        """A runner of the ONNX file ``path`` as it is (no checks): for the export."""
        runner = cls.__new__(cls)
        runner._open(Path(path), threads)
        runner.root = None
        return runner

    def _open(self, path: Path, threads: int | None) -> None:
        import openvino as ov

        self.path = path
        core = ov.Core()
        config = {
            "INFERENCE_NUM_THREADS": threads or os.cpu_count() or 1,
            "PERFORMANCE_HINT": "LATENCY",  # one request at a time: predict's and the service's
        }
        self.model = core.compile_model(core.read_model(str(path)), "CPU", config)
        self.request = self.model.create_infer_request()
        self.img_size = int(self.model.input(0).get_partial_shape()[-1].get_length())

    def logits_and_features(
        self, images: np.ndarray, batch_size: int = 64, rows: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Logits (N,) and penultimate features (N, D), float32, of preprocessed uint8 images."""
        s = self.img_size
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (s, s):
            raise UserError(
                f"{self.path.name} expects preprocessed uint8 images (N, {s}, {s}), got "
                f"{images.dtype} {images.shape}; preprocess them with the run's settings"
            )
        logits, feats = [], []
        for _, chunk in row_batches(images, rows, batch_size):
            out = self.request.infer({0: chunk[:, None]})
            logits.append(np.asarray(out[self.model.output("logit")], np.float32).copy())
            feats.append(np.asarray(out[self.model.output("features")], np.float32).copy())
        return np.concatenate(logits), np.concatenate(feats)
