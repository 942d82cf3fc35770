"""The Python API for notebooks and scripts: load a run once, predict on files or arrays.

    import pneumoscope
    model = pneumoscope.load("runs/reference")
    table = model.predict(["film.png", "scans/"])    # one row per file, as `predict` writes

Files and arrays go through the same preprocessing, model, temperature, threshold and
out-of-distribution guard as `pneumoscope predict`, so a file gets the same probability here
as in the CSV.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pneumoscope.core.errors import ImageReadError, UserError
from pneumoscope.data.preprocess import preprocess_gray, to_gray_uint8
from pneumoscope.inference.inputs import expand_inputs
from pneumoscope.inference.predict import predict_rows
from pneumoscope.inference.predictor import Predictor
from pneumoscope.inference.scoring import CSV_COLUMNS


class Model:
    """A run folder loaded once: weights, input specification, calibration, OOD guard,
    intended-use rules (``allow`` relaxes them, as --allow does)."""

    def __init__(self, predictor: Predictor):
        self.predictor = predictor.ready()
        self.run = predictor.loaded
        self.backend = predictor.backend

    @property
    def card(self):
        """The run's model card (architecture, input, training data, metrics)."""
        return self.run.card

    @property
    def threshold(self) -> float:
        """P(pneumonia) at or above which a film is called PNEUMONIA."""
        return self.run.threshold

    def predict(
        self, inputs: str | Path | Sequence[str | Path], batch_size: int = 32
    ) -> pd.DataFrame:
        """One row per file (files, folders, globs or a CSV list), with the columns of the
        predict CSV (probability and ood_score as numbers, NaN where a file could not be read);
        an unreadable file gets status "error" and its reason, never an exception."""
        items = [inputs] if isinstance(inputs, str | Path) else list(inputs)
        paths = expand_inputs([str(p) for p in items])
        if not paths:
            raise UserError("no inputs: give image files, folders, glob patterns or a CSV list")
        rows = predict_rows(self.predictor, paths, batch_size=batch_size)
        table = pd.DataFrame([vars(r) for r in rows])
        return table[CSV_COLUMNS]

    def predict_proba(self, images: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """Calibrated P(pneumonia) for decoded images: each a 2-D gray array (uint8 or 16-bit,
        any size) or (H, W, 3) in OpenCV's BGR order. Raises ImageReadError for an array that
        is no image (wrong shape or channel count). Arrays carry no header and meet no
        intended-use rule here: ``estimate_population`` says whose films they look like."""
        batch = [images] if isinstance(images, np.ndarray) and images.ndim == 2 else images
        if len(batch) == 0:
            return np.empty(0, dtype=np.float64)
        cfg = self.run.preprocess
        pixels = np.stack([preprocess_gray(to_gray_uint8(np.asarray(im)), cfg) for im in batch])
        logits, _ = self.predictor.runner.logits_and_features(pixels)
        return self.run.proba_from_logits(logits)

    def estimate_population(self, images: Sequence[np.ndarray] | np.ndarray) -> pd.DataFrame:
        """The population check's estimate for decoded images (as ``predict_proba`` takes
        them): ``estimated_age_group``, ``adult_probability`` and ``in_population`` (the
        group is one of the run's training population's; None when the card records none)."""
        batch = [images] if isinstance(images, np.ndarray) and images.ndim == 2 else images
        scope = self.predictor.scope
        rows = []
        for im in batch:
            est = scope.estimate(to_gray_uint8(np.asarray(im)))
            inside = None if not scope.groups or est is None else est.group in scope.groups
            rows.append(
                {
                    "estimated_age_group": est.group if est else "",
                    "adult_probability": est.adult_probability if est else np.nan,
                    "in_population": inside,
                }
            )
        return pd.DataFrame(
            rows, columns=["estimated_age_group", "adult_probability", "in_population"]
        )


def load(run: str | Path, backend: str = "torch", allow: Sequence[str] = ()) -> Model:
    """Load a run folder; ``backend`` "onnx" or "onnx-int8" uses its `pneumoscope export`;
    ``allow`` relaxes intended-use rules for DICOM inputs (as `predict --allow`)."""
    return Model(Predictor.from_run(run, backend, allow))


__all__ = ["ImageReadError", "Model", "load"]
