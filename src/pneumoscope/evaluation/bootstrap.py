"""Percentile bootstrap confidence intervals, resampling patients rather than images.

Images of one patient are correlated; resampling them one by one would make the
intervals too narrow. Each replicate draws patients with replacement and keeps all of
a drawn patient's images.
"""

from __future__ import annotations

import numpy as np

from pneumoscope.evaluation.metrics import METRIC_LABELS, binary_metrics


def _group_layout(groups: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row order sorted by group, each group's start in it, and each group's size."""
    _, inv = np.unique(groups, return_inverse=True)
    order = np.argsort(inv, kind="stable")
    sizes = np.bincount(inv)
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    return order, starts, sizes


def bootstrap_ci(
    y: np.ndarray,
    p: np.ndarray,
    threshold: float,
    groups: np.ndarray | None = None,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, list[float]]:
    """{metric: [low, high]} for every metric in METRIC_LABELS.

    Replicates where a metric is undefined (one class only) are left out of its interval.
    """
    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=np.float64)
    groups = np.arange(len(y)) if groups is None else np.asarray(groups)
    order, starts, sizes = _group_layout(groups)
    n_groups = len(sizes)
    keys = list(METRIC_LABELS)
    rng = np.random.default_rng(seed)
    vals = np.full((n_boot, len(keys)), np.nan)
    for b in range(n_boot):
        g = rng.integers(0, n_groups, n_groups)
        sz = sizes[g]
        offsets = np.arange(sz.sum()) - np.repeat(np.cumsum(sz) - sz, sz)
        idx = order[np.repeat(starts[g], sz) + offsets]
        m = binary_metrics(y[idx], p[idx], threshold)
        vals[b] = [m[k] for k in keys]
    alpha = (1.0 - level) / 2
    out: dict[str, list[float]] = {}
    for j, k in enumerate(keys):
        col = vals[:, j][np.isfinite(vals[:, j])]
        if len(col) < n_boot // 2:
            out[k] = [float("nan"), float("nan")]
        else:
            lo, hi = np.quantile(col, [alpha, 1 - alpha])
            out[k] = [float(lo), float(hi)]
    return out
