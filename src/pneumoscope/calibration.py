"""`pneumoscope calibrate`: temperature scaling and the operating threshold, on validation.

Temperature scaling divides the logits by one number T fitted to minimise the negative
log-likelihood of the validation labels. It leaves the ranking (AUROC) unchanged and
makes the probabilities honest. The threshold is then chosen on the calibrated
validation probabilities by a policy. Everything lands in RUN/calibration.json, which
predict and evaluate read.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from scipy.optimize import minimize_scalar

from . import plots
from .cache import Cache, open_cache
from .errors import UserError
from .io_utils import write_json_atomic
from .metrics import POLICIES, binary_metrics, choose_threshold
from .runs import CALIBRATION, check_compatible, load_run, sigmoid, weights_digest


def nll(logits: np.ndarray, y: np.ndarray, temperature: float = 1.0) -> float:
    """Mean binary negative log-likelihood of sigmoid(logits / T), computed stably."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    # -[y log s(z) + (1-y) log(1-s(z))] = softplus(z) - y z
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The T > 0 minimising validation NLL (searched on log T, bounded to [e^-4, e^4])."""
    y = np.asarray(y, dtype=np.float64)
    res = minimize_scalar(
        lambda lt: nll(logits, y, float(np.exp(lt))),
        bounds=(-4.0, 4.0),
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(np.exp(res.x))


def data_digest(cache: Cache, rows: np.ndarray, labels: np.ndarray) -> str:
    """SHA-256 of the validation pixels and labels: says which data the calibration saw."""
    h = hashlib.sha256()
    for start in range(0, len(rows), 256):
        h.update(np.ascontiguousarray(cache.images[rows[start : start + 256]]).tobytes())
    h.update(np.asarray(labels, dtype=np.int8).tobytes())
    return h.hexdigest()


def _summary(y: np.ndarray, logits: np.ndarray, t: float) -> dict:
    m = binary_metrics(y, sigmoid(logits / t), 0.5)
    return {"nll": nll(logits, y, t), "ece": m["ece"], "brier": m["brier"], "auroc": m["auroc"]}


def calibrate(
    run: str | Path,
    data: str | Path,
    policy: str = "youden",
    cost_fn: float = 5.0,
    cost_fp: float = 1.0,
    target_sensitivity: float = 0.95,
) -> dict:
    if policy not in POLICIES:
        raise UserError(f"--policy must be one of {', '.join(POLICIES)}, got '{policy}'")
    if cost_fn <= 0 or cost_fp <= 0:
        raise UserError("--cost-fn and --cost-fp must be positive")
    if not 0.0 < target_sensitivity <= 1.0:
        raise UserError("--target-sensitivity must be in (0, 1]")
    loaded = load_run(run, use_calibration=False)
    cache = open_cache(data)
    check_compatible(cache, loaded, data)
    val = cache.split("val")
    y = val["label"].to_numpy()
    if len(np.unique(y)) < 2:
        raise UserError(f"the validation split of {data} holds one class only: cannot calibrate")
    rows = val["index"].to_numpy()
    logits = loaded.predict_logits(cache.images, rows=rows).astype(np.float64)
    t = fit_temperature(logits, y)
    p_cal = sigmoid(logits / t)
    params = {"cost_fn": cost_fn, "cost_fp": cost_fp, "target_sensitivity": target_sensitivity}
    thresholds = {pol: choose_threshold(y, p_cal, pol, **params) for pol in POLICIES}
    result = {
        "temperature": t,
        "policy": policy,
        "policy_params": params,
        "threshold": thresholds[policy],
        "thresholds_by_policy": thresholds,
        "validation": {
            "n": int(len(y)),
            "before": _summary(y, logits, 1.0),
            "after": _summary(y, logits, t),
            "at_threshold": binary_metrics(y, p_cal, thresholds[policy]),
        },
        "validation_data_sha256": data_digest(cache, rows, y),
        "weights_sha256": weights_digest(loaded.root),
        "data": str(Path(data).expanduser().resolve()),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_json_atomic(loaded.root / CALIBRATION, result)
    from .ood import fit_ood  # the OOD guard is fitted on held-out data too

    result["ood"] = fit_ood(loaded, cache)
    plots.reliability(y, sigmoid(logits), p_cal, loaded.root / "reliability_val.png", "validation")
    return result
