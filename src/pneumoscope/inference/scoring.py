"""One prediction row per input, from preprocessed pixels: what every engine runs.

`predict` on this machine (:func:`pneumoscope.inference.predict.predict_rows`), the Ray
engine's workers (:mod:`pneumoscope.inference.ray_predict`) and the service all turn
screened, preprocessed images into :class:`Prediction` rows here: the runner's logits and
features, the run's temperature and threshold, the OOD guard; an input that was not
decoded keeps its status and reason. (It lives apart from predict.py so that the Ray
engine can use it without importing predict, which imports the engine.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pneumoscope.inference.intended_use import Screened
from pneumoscope.model.ood import OodGuard
from pneumoscope.model.run import LoadedRun

CSV_COLUMNS = [
    "path",
    "probability",
    "label",
    "threshold",
    "model_id",
    "ood",
    "ood_score",
    "status",
    "error",
    "note",
    "estimated_age_group",
    "adult_probability",
]


def model_id(loaded: LoadedRun) -> str:
    """Run folder name and the start of the weights' SHA-256: names the exact model."""
    return f"{loaded.root.name}@{loaded.files.weights_sha256()[:12]}"


@dataclass
class Prediction:
    """One input's outcome: the predict CSV's row, with typed values."""

    path: str
    threshold: float
    model_id: str
    probability: float | None = None
    label: str = ""
    ood: bool | None = None
    ood_score: float | None = None
    status: str = "ok"
    error: str = ""
    note: str = ""  # analysed outside the intended use because a rule was relaxed (--allow)
    heatmap: str = ""
    estimated_age_group: str = ""  # the population check's estimate (child, adult)
    adult_probability: float | None = None  # its p(adult)

    def set_estimate(self, estimate) -> None:
        """Carry the population check's estimate (a PopulationEstimate, or None)."""
        if estimate is not None:
            self.estimated_age_group = estimate.group
            self.adult_probability = estimate.adult_probability

    def csv_cells(self, with_heatmap: bool = False) -> list[str]:
        """The row as `predict` writes it (fixed decimals, empty cells for missing values)."""
        ok = self.probability is not None
        cells = [
            self.path,
            f"{self.probability:.6f}" if ok else "",
            self.label,
            f"{self.threshold:.6f}",
            self.model_id,
            "" if self.ood is None else str(self.ood).lower(),
            "" if self.ood_score is None else f"{self.ood_score:.4f}",
            self.status,
            self.error,
            self.note,
            self.estimated_age_group,
            "" if self.adult_probability is None else f"{self.adult_probability:.4f}",
        ]
        return cells + ([self.heatmap] if with_heatmap else [])


def score_batch(
    loaded: LoadedRun, runner, guard: OodGuard | None, pixels: np.ndarray, paths, mid: str
) -> list[Prediction]:
    """Predictions for a stack of preprocessed images: logits and features from the runner,
    the run's temperature and threshold, the OOD guard. `predict` and the service share it."""
    logits, feats = runner.logits_and_features(pixels)
    probs = loaded.proba_from_logits(logits)
    scores, flags = guard.score(feats) if guard else (None, None)
    thr, names = loaded.threshold, loaded.card.class_names
    return [
        Prediction(
            path,
            thr,
            mid,
            float(p),
            names[int(p >= thr)],
            None if guard is None else bool(flags[k]),
            None if guard is None else float(scores[k]),
        )
        for k, (path, p) in enumerate(zip(paths, probs, strict=True))
    ]


def score_screened(
    loaded: LoadedRun, runner, guard: OodGuard | None, mid: str, batch: list[Screened]
) -> list[Prediction]:
    """One Prediction per screened input (as ``intended_use.load_screened`` reads each
    file), in order: the images scored together in one runner call, every other input a
    row with its status and reason; each with the population check's estimate."""
    good = [i for i, s in enumerate(batch) if s.pixels is not None]
    done: dict[int, Prediction] = {}
    if good:
        imgs = np.stack([batch[i].pixels for i in good])
        preds = score_batch(loaded, runner, guard, imgs, [batch[i].path for i in good], mid)
        done = dict(zip(good, preds, strict=True))
        for i in good:  # an analysed film's note: outside rules relaxed with --allow
            done[i].note = batch[i].reason
    thr = loaded.threshold
    rows = [
        done.get(i) or Prediction(s.path, thr, mid, status=s.status, error=s.reason)
        for i, s in enumerate(batch)
    ]
    for row, s in zip(rows, batch, strict=True):
        row.set_estimate(s.estimate)
    return rows
