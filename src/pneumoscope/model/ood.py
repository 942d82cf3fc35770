"""Out-of-distribution guard: is this input like the images the model was trained on?

Method (documented for users): class-conditional Mahalanobis distance in the model's
penultimate feature space (Lee et al., NeurIPS 2018). From the training images we keep
the mean feature vector of each class and one shared covariance (Ledoit-Wolf shrinkage,
stable with few images per dimension). An input's score is its distance to the nearer
class mean. The flag threshold is the 99th percentile of the scores of the held-out
validation images, so about 1% of in-distribution images are flagged by design; a
photo, a CT slice, a lateral view or an adult film for a child-only model lands far
away. Reported as ``ood_score`` = distance / threshold (>= 1 means flagged).

``OodGuard`` is the estimator (``fit`` on features, ``save``/``load`` RUN/ood.json and
RUN/ood.safetensors); ``fit_ood_guard`` is the step that fits it on a run and a prepared
cache, which ``train`` runs after calibration and ``calibrate --ood`` runs again.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file
from sklearn.covariance import LedoitWolf

from pneumoscope.core.errors import UserError
from pneumoscope.core.io import atomic_write, write_json_atomic
from pneumoscope.data.cache import open_cache
from pneumoscope.model.contract import RunFiles
from pneumoscope.model.run import LoadedRun, check_compatible, load_run

QUANTILE = 0.99
MAX_FIT_IMAGES = 3000
METHOD = (
    "class-conditional Mahalanobis distance, penultimate features, Ledoit-Wolf shared covariance"
)


class OodGuard:
    """Class means and a shared precision matrix of penultimate features, and a threshold.

    Settings: ``quantile`` of the validation distances that sets the threshold,
    ``max_fit_images`` training images at most (a seeded sample, ``seed``). Fitted state:
    ``means_`` (2, D), ``precision_`` (D, D), ``threshold_``, ``shrinkage_``,
    ``feature_dim_``, ``n_fit_``, ``n_val_``, ``val_flag_rate_``, ``threshold_rule_``;
    ``weights_sha256_`` and ``created_`` are stamped by ``save``.
    """

    def __init__(
        self, quantile: float = QUANTILE, max_fit_images: int = MAX_FIT_IMAGES, seed: int = 0
    ):
        self.quantile = quantile
        self.max_fit_images = max_fit_images
        self.seed = seed

    def sample_rows(self, rows: np.ndarray) -> np.ndarray:
        """The training rows the guard is fitted on: all, or a seeded sample of them."""
        if len(rows) <= self.max_fit_images:
            return rows
        rng = np.random.default_rng(self.seed)
        return np.sort(rng.choice(rows, size=self.max_fit_images, replace=False))

    def fit(self, features: np.ndarray, labels: np.ndarray, val_features: np.ndarray) -> OodGuard:
        """Class means and Ledoit-Wolf precision on training features; the threshold is the
        ``quantile`` of the validation distances. The statistics are kept as they are
        saved (float32), so a fitted guard scores exactly like a loaded one."""
        means = np.stack([features[labels == c].mean(axis=0) for c in (0, 1)])
        lw = LedoitWolf(assume_centered=True).fit(features - means[labels])
        self.means_ = means.astype(np.float64)
        self.precision_ = lw.precision_.astype(np.float64)
        vdist = self.distance(val_features)
        self.threshold_ = float(np.quantile(vdist, self.quantile))
        self.threshold_rule_ = f"{self.quantile:.0%} quantile of validation distances"
        self.feature_dim_ = int(features.shape[1])
        self.n_fit_ = int(len(features))
        self.shrinkage_ = float(lw.shrinkage_)
        self.n_val_ = int(len(vdist))
        self.val_flag_rate_ = float(np.mean(vdist >= self.threshold_))
        self.means_ = self.means_.astype(np.float32).astype(np.float64)
        self.precision_ = self.precision_.astype(np.float32).astype(np.float64)
        return self

    def distance(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance to the nearest class mean, per row."""
        f = np.asarray(features, dtype=np.float64)
        d2 = []
        for mu in self.means_:
            diff = f - mu
            d2.append(np.einsum("nd,de,ne->n", diff, self.precision_, diff))
        return np.sqrt(np.maximum(np.min(np.stack(d2), axis=0), 0.0))

    def score(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ood_score = distance / threshold, flagged = ood_score >= 1)."""
        s = self.distance(features) / self.threshold_
        return s, s >= 1.0

    # ----------------------------------------------------------------- persistence

    def to_dict(self) -> dict[str, Any]:
        """ood.json's content, keys in the order they have always been written."""
        return {
            "method": METHOD,
            "threshold": self.threshold_,
            "threshold_rule": self.threshold_rule_,
            "feature_dim": self.feature_dim_,
            "n_fit": self.n_fit_,
            "shrinkage": self.shrinkage_,
            "n_val": self.n_val_,
            "val_flag_rate": self.val_flag_rate_,
            "weights_sha256": self.weights_sha256_,
            "created": self.created_,
        }

    def save(self, files: RunFiles) -> None:
        """Write RUN/ood.safetensors (float32 statistics) and RUN/ood.json, tied to the
        run's current weights."""
        self.weights_sha256_ = files.weights_sha256()
        self.created_ = datetime.now(timezone.utc).isoformat(timespec="seconds")
        stats = {
            "means": self.means_.astype(np.float32),
            "precision": self.precision_.astype(np.float32),
        }
        atomic_write(files.ood_stats, lambda tmp: save_file(stats, tmp))
        write_json_atomic(files.ood_card, self.to_dict())

    @classmethod
    def load(cls, files: RunFiles) -> OodGuard | None:
        """The run's guard, or None when the run has none (trained before the guard
        existed). Refused when it was fitted on other weights than the run's."""
        if not files.ood_card.is_file() or not files.ood_stats.is_file():
            return None
        try:
            d = json.loads(files.ood_card.read_text())
        except json.JSONDecodeError as exc:
            raise UserError(
                f"{files.ood_card} is not valid JSON ({exc}); run 'pneumoscope calibrate "
                f"--run {files.root} --data DATA' again"
            ) from None
        if d.get("weights_sha256") != files.weights_sha256():
            raise UserError(
                f"{files.ood_card} was fitted on other weights; run 'pneumoscope "
                f"calibrate --run {files.root} --data DATA' again"
            )
        stats = load_file(str(files.ood_stats))
        guard = cls()
        guard.means_ = stats["means"].astype(np.float64)
        guard.precision_ = stats["precision"].astype(np.float64)
        guard.threshold_ = float(d["threshold"])
        guard.threshold_rule_ = d.get("threshold_rule", "")
        guard.feature_dim_ = int(d.get("feature_dim", guard.means_.shape[1]))
        guard.n_fit_ = d.get("n_fit")
        guard.shrinkage_ = d.get("shrinkage")
        guard.n_val_ = d.get("n_val")
        guard.val_flag_rate_ = d.get("val_flag_rate")
        guard.weights_sha256_ = d["weights_sha256"]
        guard.created_ = d.get("created", "")
        return guard


def fit_ood_guard(run: str | Path | LoadedRun, data: str | Path, seed: int = 0) -> OodGuard:
    """Fit the run's OOD guard on the training images of ``data`` (the threshold on its
    validation images) and write it into the run folder."""
    loaded = run if isinstance(run, LoadedRun) else load_run(run, use_calibration=False)
    cache = open_cache(data)
    check_compatible(cache, loaded, data)
    guard = OodGuard(seed=seed)
    rows = guard.sample_rows(cache.split("train")["index"].to_numpy())
    labels = cache.manifest["label"].to_numpy()[rows]
    _, feats = loaded.logits_and_features(cache.images, rows=rows)
    val_rows = cache.split("val")["index"].to_numpy()
    _, val_feats = loaded.logits_and_features(cache.images, rows=val_rows)
    guard.fit(feats, labels, val_feats).save(loaded.files)
    return guard
