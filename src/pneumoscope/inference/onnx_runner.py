"""ONNX Runtime backend of an exported run: uint8 films in, (logits, features) out, and the
class activation map when the export has one. Needs no PyTorch: this is what the serving
install scores with.

An export (``pneumoscope export``) holds the whole input path (scale, evaluation crop,
channels, normalisation) and the network; its outputs are the logit, the penultimate
features (the OOD guard's) and, for a global-average-pooling + linear head, ``cam``: the
last feature map weighted by the head's weights, which :mod:`pneumoscope.inference.cam`
turns into the same heatmap Grad-CAM gives there.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pneumoscope.core.errors import UserError
from pneumoscope.inference.cam import heat_from_maps
from pneumoscope.inference.export_record import check_export
from pneumoscope.model.contract import RunFiles
from pneumoscope.model.run import row_batches

INPUT = "image"
OUTPUTS = ("logit", "features")
CAM = "cam"  # (B, h, w): the feature map weighted by the head's weights (exports of 0.3+)


def open_session(path: str | Path, threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.inter_op_num_threads = 1  # the graph is a chain: no parallel branches to run
    options.log_severity_level = 3  # errors only: ORT's warnings are not the user's business
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_batch(session, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    z, f = session.run(list(OUTPUTS), {INPUT: batch[:, None]})
    return z.astype(np.float32, copy=False), f.astype(np.float32, copy=False)


class OnnxRunner:
    """ONNX Runtime twin of ``LoadedRun.logits_and_features`` (CPU), refusing stale exports.

    ``threads`` sets ONNX Runtime's intra-op threads (default: all cores).
    """

    def __init__(self, run: str | Path, int8: bool = False, threads: int | None = None):
        files = RunFiles.of(run)
        check_export(files.root, int8)
        self._open(files.int8 if int8 else files.onnx, threads)
        self.root = files.root
        self.int8 = int8

    @classmethod
    def at(cls, path: str | Path, threads: int | None = None) -> OnnxRunner:
        """A runner of the ONNX file ``path`` as it is (no staleness check): for the export."""
        runner = cls.__new__(cls)
        runner._open(Path(path), threads)
        runner.root, runner.int8 = None, None
        return runner

    def _open(self, path: Path, threads: int | None) -> None:
        self.path = path
        self.session = open_session(self.path, threads)
        shape = self.session.get_inputs()[0].shape
        self.img_size = int(shape[-1])
        self.n_features = int(self.session.get_outputs()[1].shape[-1])
        self.has_cam = CAM in {o.name for o in self.session.get_outputs()}

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
            z, f = run_batch(self.session, chunk)
            logits.append(z)
            feats.append(f)
        return np.concatenate(logits), np.concatenate(feats)

    def heatmaps(self, images: np.ndarray, eval_crop: float, batch_size: int = 16) -> np.ndarray:
        """Heatmaps (N, S, S) float32 in [0, 1] of the PNEUMONIA logit from the export's
        class activation map: Grad-CAM's map for this head, computed without autograd."""
        if not self.has_cam:
            raise UserError(
                f"{self.path.name} has no class activation map output (exported before 0.3, "
                "or its head is not global pooling + linear); export the run again with "
                "'pneumoscope export', or explain with the torch backend"
            )
        self._check_images(images)
        out = [np.zeros((0, self.img_size, self.img_size), np.float32)]
        for _, chunk in row_batches(images, None, batch_size):
            [maps] = self.session.run([CAM], {INPUT: chunk[:, None]})
            out.append(heat_from_maps(maps, self.img_size, eval_crop))
        return np.concatenate(out)

    def _check_images(self, images: np.ndarray) -> None:
        """ONNX Runtime's own errors for a wrong dtype or size do not say what to do."""
        s = self.img_size
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (s, s):
            raise UserError(
                f"{self.path.name} expects preprocessed uint8 images (N, {s}, {s}), got "
                f"{images.dtype} {images.shape}; preprocess them with the run's settings"
            )
