"""Binary classification metrics and operating thresholds.

The metrics are written in NumPy so that a 1,000-replicate bootstrap stays fast; the
tests check every one against scikit-learn on the same arrays. Thresholds are chosen on
validation data only, by one of four policies.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

POLICIES = ("youden", "f1", "cost", "sensitivity")
ECE_BINS = 15

# Metric names in report order, with the label a table shows.
METRIC_LABELS = {
    "auroc": "AUROC",
    "auprc": "AUPRC",
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy",
    "sensitivity": "sensitivity (recall)",
    "specificity": "specificity",
    "ppv": "PPV (precision)",
    "npv": "NPV",
    "f1": "F1",
    "brier": "Brier score",
    "ece": "ECE",
}


def auroc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with mid-ranks for ties)."""
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(p)
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the precision-recall curve as sum over thresholds of dRecall * precision
    (the step-wise definition scikit-learn uses; tied scores form one threshold)."""
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-p, kind="mergesort")
    ps, ys = p[order], y[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(ps)), len(ps) - 1]
    tp = np.cumsum(ys)[last_of_tie]
    k = last_of_tie + 1
    precision = tp / k
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def expected_calibration_error(y: np.ndarray, p: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Weighted mean |observed rate - mean probability| over equal-width probability bins."""
    bins = np.clip((p * n_bins).astype(int), 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    conf = np.bincount(bins, weights=p, minlength=n_bins)
    obs = np.bincount(bins, weights=y.astype(float), minlength=n_bins)
    nz = count > 0
    return float(np.sum(np.abs(obs[nz] - conf[nz])) / len(y))


def _div(a: float, b: float) -> float:
    return float(a / b) if b else float("nan")


def wilson_interval(k: int, n: int, z: float = 1.959964) -> list[float] | None:
    """The 95% Wilson score interval of a proportion k/n (None when n is 0): a rate's
    interval that stays inside [0, 1] and is not degenerate at 0/n or n/n."""
    if n <= 0:
        return None
    phat = k / n
    denom = 1 + z * z / n
    centre = (phat + z * z / (2 * n)) / denom
    half = z * np.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / denom
    return [float(max(0.0, centre - half)), float(min(1.0, centre + half))]


def binary_metrics(y_true: np.ndarray, prob: np.ndarray, threshold: float) -> dict:
    """Every figure of a binary evaluation at one threshold.

    The confusion matrix is [[TN, FP], [FN, TP]] (rows: true NORMAL, PNEUMONIA).
    """
    y = np.asarray(y_true).astype(int)
    p = np.asarray(prob, dtype=np.float64)
    pred = p >= threshold
    tp = int(np.sum(pred & (y == 1)))
    fp = int(np.sum(pred & (y == 0)))
    fn = int(np.sum(~pred & (y == 1)))
    tn = int(np.sum(~pred & (y == 0)))
    sens, spec = _div(tp, tp + fn), _div(tn, tn + fp)
    ppv = _div(tp, tp + fp)
    eps = np.finfo(np.float64).eps  # the clipping scikit-learn applies
    pc = np.clip(p, eps, 1 - eps)
    return {
        "n": int(len(y)),
        "n_pneumonia": int(y.sum()),
        "n_normal": int(len(y) - y.sum()),
        "threshold": float(threshold),
        "auroc": auroc(y, p),
        "auprc": average_precision(y, p),
        "accuracy": _div(tp + tn, len(y)),
        "balanced_accuracy": float((sens + spec) / 2),
        "sensitivity": sens,
        "specificity": spec,
        "ppv": ppv,
        "precision": ppv if tp + fp else 0.0,
        "npv": _div(tn, tn + fn),
        "f1": _div(2 * tp, 2 * tp + fp + fn) if tp + fp + fn else 0.0,
        "brier": float(np.mean((p - y) ** 2)),
        "ece": expected_calibration_error(y, p),
        "log_loss": float(-np.mean(y * np.log(pc) + (1 - y) * np.log(1 - pc))),
        "confusion_matrix": [[tn, fp], [fn, tp]],
    }


def _candidates(p: np.ndarray) -> np.ndarray:
    """Midpoints between consecutive distinct scores, plus one above and one below all:
    every distinct decision on these data, none sitting exactly on an image's score."""
    u = np.unique(p)
    mids = (u[:-1] + u[1:]) / 2
    return np.r_[u[0] - 1e-6, mids, u[-1] + 1e-6].clip(0.0, 1.0)


def _counts_at(y: np.ndarray, p: np.ndarray, thr: np.ndarray):
    """TP, FP, FN, TN for each threshold in ``thr`` (predict positive when p >= t)."""
    pos_sorted = np.sort(p[y == 1])
    neg_sorted = np.sort(p[y == 0])
    tp = len(pos_sorted) - np.searchsorted(pos_sorted, thr, side="left")
    fp = len(neg_sorted) - np.searchsorted(neg_sorted, thr, side="left")
    return tp, fp, len(pos_sorted) - tp, len(neg_sorted) - fp


def choose_threshold(
    y_true: np.ndarray,
    prob: np.ndarray,
    policy: str = "youden",
    cost_fn: float = 5.0,
    cost_fp: float = 1.0,
    target_sensitivity: float = 0.95,
) -> float:
    """The operating threshold under ``policy``; call it on validation data only.

    - youden: maximise sensitivity + specificity - 1;
    - f1: maximise F1 of the PNEUMONIA class;
    - cost: minimise cost_fn * FN + cost_fp * FP (a missed pneumonia usually costs more);
    - sensitivity: the highest threshold whose sensitivity reaches the target, which gives
      the best specificity at that sensitivity.
    Ties go to the higher threshold (fewer positive calls).
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown policy '{policy}' (choose from {', '.join(POLICIES)})")
    y = np.asarray(y_true).astype(int)
    p = np.asarray(prob, dtype=np.float64)
    if len(np.unique(y)) < 2:
        return 0.5
    thr = _candidates(p)
    tp, fp, fn, tn = _counts_at(y, p, thr)
    if policy == "youden":
        score = tp / (tp + fn) + tn / (tn + fp) - 1
    elif policy == "f1":
        score = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
    elif policy == "cost":
        score = -(cost_fn * fn + cost_fp * fp)
    else:
        ok = tp / (tp + fn) >= target_sensitivity
        score = np.where(ok, thr, -np.inf)
    best = np.flatnonzero(score == score.max())
    return float(thr[best[-1]])


def youden_threshold(y_true: np.ndarray, prob: np.ndarray) -> float:
    return choose_threshold(y_true, prob, "youden")
