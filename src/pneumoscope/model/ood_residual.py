"""The residual score of the OOD guard: how much of an input's feature direction lies
outside the directions the training images span.

Each penultimate feature vector is scaled to unit length; from the training images we keep
the mean of these unit vectors and the top principal directions of their spread (as in
ViM, Wang et al., CVPR 2022, without its logit term). An input's score is the length of what
is left of its centred unit vector once its part along those directions is removed. The
Mahalanobis distance (``ood.py``) measures how far a vector lies *along* the training
spread; this measures what lies *off* it, which is where adult films differ from the
pediatric ones (experiments/ood_guard). The guard combines the two. Mean and directions are
kept in float32, as saved in RUN/ood.safetensors, so a fitted guard scores like a loaded one.
"""

from __future__ import annotations

import numpy as np

DIMS = 64  # principal directions kept


def unit_rows(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float64); an all-zero row stays zero."""
    f = np.asarray(features, dtype=np.float64)
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)


def fit_subspace(features: np.ndarray, dims: int = DIMS) -> tuple[np.ndarray, np.ndarray]:
    """(mean (D,), basis (k, D)) of the training features' unit vectors, float32: the top
    k = ``dims`` principal directions, fewer where the vectors span fewer (one direction is
    always left out, so that some residual remains)."""
    unit = unit_rows(features)
    mean = unit.mean(axis=0)
    _, _, vt = np.linalg.svd(unit - mean, full_matrices=False)
    k = max(1, min(dims, len(vt) - 1))
    return mean.astype(np.float32), vt[:k].astype(np.float32)


def residual(features: np.ndarray, mean: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """Per row: the length of its centred unit vector outside the span of ``basis``."""
    x = unit_rows(features) - np.asarray(mean, dtype=np.float64)
    b = np.asarray(basis, dtype=np.float64)
    return np.linalg.norm(x - (x @ b.T) @ b, axis=1)
