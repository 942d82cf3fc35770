"""Out-of-distribution guard: is this input like the images the model was trained on?

Method (documented for users): the class-conditional Mahalanobis distance of the model's
penultimate features (Lee et al., NeurIPS 2018). From the training images we keep the mean
feature vector of each class and one shared covariance (Ledoit-Wolf shrinkage, stable with
few images per dimension); an input's score is its distance to the nearer class mean. The
flag threshold is the 99th percentile of the held-out validation images' scores, so about
1% of in-distribution images are flagged by design; a photo, a CT slice, a rotated or
inverted film lands far away, an adult film for a child-only model mostly does not.
Reported as ``ood_score`` = score / threshold (>= 1 means flagged).

Opt-in (``calibrate --ood-method mahalanobis+residual``): the larger of that distance and
the residual (``ood_residual``): the length of the input's L2-normalised, centred feature
vector outside the training vectors' top 64 principal directions, each divided by the 99th
percentile of its validation values; the flag threshold is again the 99th percentile on
validation. On the 192 px reference runs it flags about twice as many adult films, at a
higher in-distribution rate (experiments/ood_guard); it was found after the pre-written rule had
adopted nothing, so it is not the default. ``method`` is stored in ood.json; files without
one are the Mahalanobis guard, read as before.

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
from pneumoscope.model import ood_residual
from pneumoscope.model.contract import RunFiles
from pneumoscope.model.run import LoadedRun, check_compatible, load_run

QUANTILE = 0.99
MAX_FIT_IMAGES = 3000
MAHALANOBIS = "mahalanobis"
COMBINED = "mahalanobis+residual"
METHODS = {
    MAHALANOBIS: (
        "class-conditional Mahalanobis distance, penultimate features, Ledoit-Wolf shared "
        "covariance"
    ),
    COMBINED: (
        "larger of the class-conditional Mahalanobis distance (penultimate features, "
        "Ledoit-Wolf shared covariance) and the residual of the L2-normalised features "
        "outside their top principal directions, each over its validation threshold"
    ),
}
DEFAULT_METHOD = MAHALANOBIS  # what new fits use; COMBINED is opt-in (experiments/ood_guard)
METHOD = METHODS[DEFAULT_METHOD]
_STATS = {
    MAHALANOBIS: ("means", "precision"),
    COMBINED: ("means", "precision", "residual_mean", "residual_basis"),
}


class OodGuard:
    """Class means and a shared precision matrix of penultimate features (and, for the
    combined method, the training features' principal directions), and a threshold.

    Settings: ``method`` ("mahalanobis", how runs before the residual were fitted, or
    "mahalanobis+residual"), ``dims`` principal directions of the residual, ``quantile`` of
    the validation scores that sets the threshold, ``max_fit_images`` training images at
    most (a seeded sample, ``seed``). Fitted state: ``means_`` (2, D), ``precision_``
    (D, D), for the combined method ``mean_`` (D,), ``basis_`` (dims, D) and
    ``part_thresholds_`` (Mahalanobis, residual); ``threshold_``, ``shrinkage_``,
    ``feature_dim_``, ``n_fit_``, ``n_val_``, ``val_flag_rate_``, ``threshold_rule_``;
    ``weights_sha256_`` and ``created_`` are stamped by ``save``.
    """

    def __init__(
        self,
        quantile: float = QUANTILE,
        max_fit_images: int = MAX_FIT_IMAGES,
        seed: int = 0,
        method: str = MAHALANOBIS,
        dims: int = ood_residual.DIMS,
    ):
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        self.quantile = quantile
        self.max_fit_images = max_fit_images
        self.seed = seed
        self.method = method
        self.dims = dims

    def sample_rows(self, rows: np.ndarray) -> np.ndarray:
        """The training rows the guard is fitted on: all, or a seeded sample of them."""
        if len(rows) <= self.max_fit_images:
            return rows
        rng = np.random.default_rng(self.seed)
        return np.sort(rng.choice(rows, size=self.max_fit_images, replace=False))

    def fit(self, features: np.ndarray, labels: np.ndarray, val_features: np.ndarray) -> OodGuard:
        """Class means and Ledoit-Wolf precision (and the residual's directions) on training
        features; the threshold is the ``quantile`` of the validation scores. The
        statistics are kept as they are saved (float32), so a fitted guard scores exactly
        like a loaded one."""
        means = np.stack([features[labels == c].mean(axis=0) for c in (0, 1)])
        lw = LedoitWolf(assume_centered=True).fit(features - means[labels])
        self.means_ = means.astype(np.float64)
        self.precision_ = lw.precision_.astype(np.float64)
        if self.method == COMBINED:
            self._round_stats()
            self._fit_residual(features, val_features)
        vdist = self.distance(val_features)
        self.threshold_ = float(np.quantile(vdist, self.quantile))
        what = "distances" if self.method == MAHALANOBIS else "scores"
        self.threshold_rule_ = f"{self.quantile:.0%} quantile of validation {what}"
        self.feature_dim_ = int(features.shape[1])
        self.n_fit_ = int(len(features))
        self.shrinkage_ = float(lw.shrinkage_)
        self.n_val_ = int(len(vdist))
        self.val_flag_rate_ = float(np.mean(vdist >= self.threshold_))
        self._round_stats()
        return self

    def _round_stats(self) -> None:
        self.means_ = self.means_.astype(np.float32).astype(np.float64)
        self.precision_ = self.precision_.astype(np.float32).astype(np.float64)

    def _fit_residual(self, features: np.ndarray, val_features: np.ndarray) -> None:
        """The residual's directions, and each part's validation threshold."""
        self.mean_, self.basis_ = ood_residual.fit_subspace(features, self.dims)
        parts = (self.mahalanobis(val_features), self.residual(val_features))
        self.part_thresholds_ = tuple(
            max(float(np.quantile(p, self.quantile)), 1e-12) for p in parts
        )

    def mahalanobis(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance to the nearest class mean, per row."""
        f = np.asarray(features, dtype=np.float64)
        d2 = []
        for mu in self.means_:
            diff = f - mu
            d2.append(np.einsum("nd,de,ne->n", diff, self.precision_, diff))
        return np.sqrt(np.maximum(np.min(np.stack(d2), axis=0), 0.0))

    def residual(self, features: np.ndarray) -> np.ndarray:
        """The residual per row (combined method only): see ``ood_residual``."""
        return ood_residual.residual(features, self.mean_, self.basis_)

    def distance(self, features: np.ndarray) -> np.ndarray:
        """The guard's raw score per row: the Mahalanobis distance, or for the combined
        method the larger of it and the residual, each over its part threshold."""
        d = self.mahalanobis(features)
        if self.method == MAHALANOBIS:
            return d
        t_maha, t_res = self.part_thresholds_
        return np.maximum(d / t_maha, self.residual(features) / t_res)

    def score(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ood_score = distance / threshold, flagged = ood_score >= 1)."""
        s = self.distance(features) / self.threshold_
        return s, s >= 1.0

    # ----------------------------------------------------------------- persistence

    def to_dict(self) -> dict[str, Any]:
        """ood.json's content; a Mahalanobis guard's keys in the order they have always been
        written, the combined method's id and parameters after "method"."""
        d: dict[str, Any] = {"method": METHODS[self.method]}
        if self.method == COMBINED:
            t_maha, t_res = self.part_thresholds_
            d["method_id"] = self.method
            d["residual_dims"] = int(self.basis_.shape[0])
            d["part_thresholds"] = {"mahalanobis": t_maha, "residual": t_res}
        return d | {
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
        arrays = {
            "means": self.means_,
            "precision": self.precision_,
            "residual_mean": getattr(self, "mean_", None),
            "residual_basis": getattr(self, "basis_", None),
        }
        stats = {k: np.asarray(arrays[k], np.float32) for k in _STATS[self.method]}
        atomic_write(files.ood_stats, lambda tmp: save_file(stats, tmp))
        write_json_atomic(files.ood_card, self.to_dict())

    @classmethod
    def load(cls, files: RunFiles) -> OodGuard | None:
        """The run's guard, or None when the run has none (trained before the guard
        existed). A file without "method_id" is a Mahalanobis guard. Refused when it was
        fitted on other weights than the run's."""
        if not files.ood_card.is_file() or not files.ood_stats.is_file():
            return None
        d = _read_card(files)
        try:
            stats = load_file(str(files.ood_stats))
        except Exception as exc:  # unreadable (its mode: PermissionError), corrupt
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise UserError(f"cannot read {files.ood_stats}: {why}") from None
        guard = cls(method=d.get("method_id", MAHALANOBIS))
        missing = [k for k in _STATS[guard.method] if k not in stats]
        if missing:
            raise UserError(f"{files.ood_stats} lacks {', '.join(missing)}; {_refit(files)}")
        guard.means_ = stats["means"].astype(np.float64)
        guard.precision_ = stats["precision"].astype(np.float64)
        if guard.method == COMBINED:
            guard.mean_, guard.basis_ = stats["residual_mean"], stats["residual_basis"]
            part = d["part_thresholds"]
            guard.part_thresholds_ = (float(part["mahalanobis"]), float(part["residual"]))
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


def _refit(files: RunFiles) -> str:
    return f"run 'pneumoscope calibrate --run {files.root} --data DATA' again"


def _read_card(files: RunFiles) -> dict[str, Any]:
    """ood.json, checked: valid JSON, a method this version knows, the run's weights."""
    try:
        d = json.loads(files.ood_card.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{files.ood_card} is not valid JSON ({exc}); {_refit(files)}") from None
    if d.get("method_id", MAHALANOBIS) not in METHODS:
        raise UserError(
            f"{files.ood_card}: unknown guard method {d['method_id']!r} (written by a newer "
            f"pneumoscope?); {_refit(files)}"
        )
    if d.get("weights_sha256") != files.weights_sha256():
        raise UserError(f"{files.ood_card} was fitted on other weights; {_refit(files)}")
    return d


def fit_ood_guard(
    run: str | Path | LoadedRun, data: str | Path, seed: int = 0, method: str = DEFAULT_METHOD
) -> OodGuard:
    """Fit the run's OOD guard (``method``, by default the combined one) on the training
    images of ``data`` (the threshold on its validation images) and write it into the run
    folder."""
    loaded = run if isinstance(run, LoadedRun) else load_run(run, use_calibration=False)
    cache = open_cache(data)
    check_compatible(cache, loaded, data)
    guard = OodGuard(seed=seed, method=method)
    rows = guard.sample_rows(cache.split("train")["index"].to_numpy())
    labels = cache.manifest["label"].to_numpy()[rows]
    _, feats = loaded.logits_and_features(cache.images, rows=rows)
    val_rows = cache.split("val")["index"].to_numpy()
    _, val_feats = loaded.logits_and_features(cache.images, rows=val_rows)
    guard.fit(feats, labels, val_feats).save(loaded.files)
    return guard
