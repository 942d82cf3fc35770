"""Out-of-distribution guard: is this input like the images the model was trained on?

Method (documented for users): class-conditional Mahalanobis distance in the model's
penultimate feature space (Lee et al., NeurIPS 2018). From the training images we keep
the mean feature vector of each class and one shared covariance (Ledoit-Wolf shrinkage,
stable with few images per dimension). An input's score is its distance to the nearer
class mean. The flag threshold is the 99th percentile of the scores of the held-out
validation images, so about 1% of in-distribution images are flagged by design; a
photo, a CT slice, a lateral view or an adult film for a child-only model lands far
away. Reported as ``ood_score`` = distance / threshold (>= 1 means flagged).
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file
from sklearn.covariance import LedoitWolf

from pneumoscope.core.errors import UserError
from pneumoscope.core.io import atomic_write, write_json_atomic
from pneumoscope.data.cache import Cache
from pneumoscope.model.run import LoadedRun, weights_digest

OOD_STATS = "ood.safetensors"
OOD_CARD = "ood.json"
QUANTILE = 0.99
MAX_FIT_IMAGES = 3000


class OodGuard:
    def __init__(self, means: np.ndarray, precision: np.ndarray, threshold: float):
        self.means = means.astype(np.float64)  # (n_classes, D)
        self.precision = precision.astype(np.float64)  # (D, D)
        self.threshold = float(threshold)

    def distance(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance to the nearest class mean, per row."""
        f = np.asarray(features, dtype=np.float64)
        d2 = []
        for mu in self.means:
            diff = f - mu
            d2.append(np.einsum("nd,de,ne->n", diff, self.precision, diff))
        return np.sqrt(np.maximum(np.min(np.stack(d2), axis=0), 0.0))

    def score(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ood_score = distance / threshold, flagged = ood_score >= 1)."""
        s = self.distance(features) / self.threshold
        return s, s >= 1.0


def _sample(rows: np.ndarray, n: int, seed: int) -> np.ndarray:
    if len(rows) <= n:
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, size=n, replace=False))


def fit_ood(loaded: LoadedRun, cache: Cache, seed: int = 0) -> dict:
    """Fit class means and shared covariance on train features, threshold on validation."""
    train = cache.split("train")
    rows = _sample(train["index"].to_numpy(), MAX_FIT_IMAGES, seed)
    labels = cache.manifest["label"].to_numpy()[rows]
    _, feats = loaded.logits_and_features(cache.images, rows=rows)
    means = np.stack([feats[labels == c].mean(axis=0) for c in (0, 1)])
    centred = feats - means[labels]
    lw = LedoitWolf(assume_centered=True).fit(centred)
    val = cache.split("val")
    _, vfeats = loaded.logits_and_features(cache.images, rows=val["index"].to_numpy())
    guard = OodGuard(means, lw.precision_, 1.0)
    vdist = guard.distance(vfeats)
    threshold = float(np.quantile(vdist, QUANTILE))
    save = {"means": means.astype(np.float32), "precision": lw.precision_.astype(np.float32)}
    atomic_write(loaded.root / OOD_STATS, lambda tmp: save_file(save, tmp))
    card = {
        "method": "class-conditional Mahalanobis distance, penultimate features, "
        "Ledoit-Wolf shared covariance",
        "threshold": threshold,
        "threshold_rule": f"{QUANTILE:.0%} quantile of validation distances",
        "feature_dim": int(feats.shape[1]),
        "n_fit": int(len(rows)),
        "shrinkage": float(lw.shrinkage_),
        "n_val": int(len(vdist)),
        "val_flag_rate": float(np.mean(vdist >= threshold)),
        "weights_sha256": weights_digest(loaded.root),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_json_atomic(loaded.root / OOD_CARD, card)
    return card


def load_guard(run: Path) -> OodGuard | None:
    """The run's guard, or None when the run has none (trained before the guard existed)."""
    import json

    if not (run / OOD_CARD).is_file() or not (run / OOD_STATS).is_file():
        return None
    card = json.loads((run / OOD_CARD).read_text())
    if card.get("weights_sha256") != weights_digest(run):
        raise UserError(
            f"{run / OOD_CARD} was fitted on other weights; run 'pneumoscope "
            f"calibrate --run {run} --data DATA' again"
        )
    stats = load_file(str(run / OOD_STATS))
    return OodGuard(stats["means"], stats["precision"], card["threshold"])
