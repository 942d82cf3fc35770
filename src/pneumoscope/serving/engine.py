"""The model behind the service: loaded once, fed decoded uploads, same numbers as `predict`.

An upload is recognised by its bytes, decoded in memory by the bytes twin of the file
decoder, and goes through the run's runner, temperature, threshold and OOD guard exactly
as `predict_rows` does for a file, so the same film gets the same probability from both.
A DICOM upload meets the same intended-use rules as in `predict` first: one that is no
image (status ``skipped``) or that the model was not made for (``out_of_scope``) is that
upload's outcome, HTTP 422 with the reason, and the others in a batch go on.
"""

from __future__ import annotations

import base64
import hashlib
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from pneumoscope.evaluation.record import EvaluationRecord
from pneumoscope.inference.predictor import Predictor
from pneumoscope.inference.scoring import Prediction
from pneumoscope.serving.batcher import MicroBatcher
from pneumoscope.serving.decoders import Decoded, InlineDecoder


@dataclass
class Upload:
    """One uploaded file, held in memory only; ``filename`` is echoed back, never used."""

    data: bytes
    filename: str = ""


@dataclass
class Outcome:
    """One upload's result: the prediction plus what the response and the audit log need."""

    prediction: Prediction
    sha256: str
    size: int
    http_status: int = 200  # 400 unreadable, 415 not an image, 422 skipped or out of scope
    pictures: dict[str, str] = field(default_factory=dict)  # image_png, heatmap_png (base64)
    heat: np.ndarray | None = None  # Grad-CAM in [0, 1] when asked (for DICOM results)


def png_base64(image: np.ndarray) -> str:
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise ValueError("PNG encoding failed")
    return base64.b64encode(buf.tobytes()).decode("ascii")


def heatmap_rgba(heat: np.ndarray) -> np.ndarray:
    """Grad-CAM heat in [0, 1] -> BGRA colour map (JET) whose opacity is the heat itself,
    so the page can lay it over the X-ray and cool regions stay see-through."""
    level = np.round(np.clip(heat, 0.0, 1.0) * 255).astype(np.uint8)
    return np.dstack([cv2.applyColorMap(level, cv2.COLORMAP_JET), level])


class Engine:
    """The service's predictor (the run, its runner, guard, rules and model id), fed
    decoded uploads.

    Uploads are decoded by the decoder given to ``predict`` (the service's worker pool; by
    default this process, at most ``decoders`` at once); their images are then scored in
    micro-batches shared with concurrent requests (at most ``max_batch`` images, gathered
    for up to ``window_s``). Model work is serialised by a lock: Grad-CAM hooks the shared
    network, and a concurrent forward pass would disturb it.
    """

    def __init__(
        self,
        predictor: Predictor,
        max_batch: int = 16,
        window_s: float = 0.002,
        decoders: int = 2,
    ):
        self.predictor = predictor.ready()
        self.loaded = predictor.loaded
        self.scope = predictor.scope
        self.guard = predictor.guard
        self.model_id = predictor.model_id
        self._lock = threading.Lock()
        self.inline = InlineDecoder(predictor.preprocess, self.scope, decoders)
        self.batcher = MicroBatcher(self._score, max_batch, window_s)

    @classmethod
    def load(
        cls, run: str | Path, backend: str = "torch", allow: tuple[str, ...] = (), **batching
    ) -> Engine:
        """The predictor of ``run`` for ``backend`` with the rules ``allow`` relaxes,
        batched as ``batching`` says (ServeSettings.batching): raises UserError."""
        return cls(Predictor.from_run(run, backend, allow), **batching)

    @property
    def runner(self):
        return self.predictor.runner

    @property
    def backend(self) -> str:
        return self.predictor.backend

    def close(self) -> None:
        self.batcher.close()

    def info(self) -> dict:
        """GET /v1/model: the card, the threshold and its policy, calibration, OOD guard."""
        run = self.loaded
        return {
            "model_id": self.model_id,
            "card": run.card.to_dict(),
            "threshold": run.threshold,
            "threshold_policy": run.threshold_policy,
            "calibration": run.calibration.to_dict() if run.calibration else None,
            "ood": self.guard.to_dict() if self.guard else None,
            "intended_use": run.card.intended_use,
            "intended_use_rules": self.scope.to_dict(),
            "test_metrics": self._test_metrics(),
        }

    def _test_metrics(self) -> dict | None:
        """The run's own evaluation (RUN/metrics.json from `pneumoscope evaluate`), its scalar
        figures and 95% intervals only; None when the run was never evaluated."""
        record = EvaluationRecord.read_if_any(self.loaded.files.metrics)
        if record is None or record.figure("auroc") is None:
            return None
        return record.public()

    def predict(
        self,
        uploads: list[Upload],
        heatmap: bool = False,
        deadline: float | None = None,
        decoder=None,
    ) -> list[Outcome]:
        """One Outcome per upload, in order; an unreadable one never fails the others.
        ``decoder`` (the service's worker pool; by default this process, two at once)
        decodes them; ``deadline`` (time.monotonic()) bounds the whole request:
        TimeoutError after it."""
        decoder = decoder or self.inline
        decoded = decoder.decode([u.data for u in uploads], deadline)
        good = [i for i, d in enumerate(decoded) if d.pixels is not None]
        pixels = np.stack([decoded[i].pixels for i in good]) if good else None
        done = self._infer(pixels, heatmap, deadline) if good else []
        by_index = dict(zip(good, done, strict=True))
        return [
            self._outcome(up, d, by_index.get(i))
            for i, (up, d) in enumerate(zip(uploads, decoded, strict=True))
        ]

    def _outcome(self, upload: Upload, decoded: Decoded, scored) -> Outcome:
        digest = hashlib.sha256(upload.data).hexdigest()
        if scored is None:
            pred = self._prediction(upload.filename, status=decoded.status, error=decoded.error)
            pred.set_estimate(decoded.estimate)
            return Outcome(pred, digest, len(upload.data), http_status=decoded.http_status)
        pred, pictures, heat = scored
        pred.path, pred.note = upload.filename, decoded.note
        pred.set_estimate(decoded.estimate)
        return Outcome(pred, digest, len(upload.data), 200, pictures, heat)

    def _prediction(self, filename: str, **values) -> Prediction:
        return Prediction(filename, self.predictor.threshold, self.model_id, **values)

    def _infer(
        self, pixels: np.ndarray, heatmap: bool, deadline: float | None
    ) -> list[tuple[Prediction, dict, np.ndarray | None]]:
        """`predict`'s scoring step (score_batch) on decoded uploads, plus the pictures:
        with a heatmap on its own (Grad-CAM needs the network to itself), else batched."""
        if heatmap:
            with self._lock:
                preds = self._score_unlocked(pixels)
                heats = self._gradcam(pixels)
            pictures = [
                {"image_png": png_base64(p), "heatmap_png": png_base64(heatmap_rgba(h))}
                for p, h in zip(pixels, heats, strict=True)
            ]
            return list(zip(preds, pictures, heats, strict=True))
        preds = self._batched(pixels, deadline)
        return [(pred, {}, None) for pred in preds]

    def _batched(self, pixels: np.ndarray, deadline: float | None) -> list[Prediction]:
        job = self.batcher.submit(pixels)
        wait = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        try:
            return job.result(wait)
        except futures.TimeoutError:  # not the builtin one before Python 3.11
            job.cancel()  # dropped unless its batch already runs
            raise TimeoutError("the request's time limit passed while it waited") from None

    def _score(self, pixels: np.ndarray) -> list[Prediction]:
        with self._lock:
            return self._score_unlocked(pixels)

    def _score_unlocked(self, pixels: np.ndarray) -> list[Prediction]:
        names = [""] * len(pixels)
        return self.predictor.score(pixels, names)

    def _gradcam(self, pixels: np.ndarray) -> np.ndarray:
        return self.predictor.heatmaps(pixels)
