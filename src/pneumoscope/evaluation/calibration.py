"""`pneumoscope calibrate`: temperature scaling and the operating threshold, on validation.

Temperature scaling divides the logits by one number T fitted to minimise the negative
log-likelihood of the validation labels. It leaves the ranking (AUROC) unchanged and
makes the probabilities honest. The threshold is then chosen on the calibrated
validation probabilities by a policy. Everything lands in RUN/calibration.json, which
predict and evaluate read.

``views`` K > 0 chooses the threshold on the validation images plus K randomly
transformed copies of each, drawn from the run's own training augmentation (seeded).
The training augmentation states the variation the model is meant to be indifferent to
(field of view, position, exposure); a threshold chosen on plain validation images alone
sits wherever those particular films put it. In the pediatric set, where validation
NORMAL films share the training films' wide field of view, the plain choice is low:
tighter films (as on other sites, or in the official test split) then cross it.
The temperature is always fitted on the plain validation images.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from scipy.optimize import minimize_scalar

from pneumoscope.core.errors import UserError
from pneumoscope.core.io import write_json_atomic
from pneumoscope.data.cache import Cache, open_cache
from pneumoscope.evaluation import plots
from pneumoscope.evaluation.metrics import POLICIES, binary_metrics, choose_threshold
from pneumoscope.model.run import (
    CALIBRATION,
    LoadedRun,
    check_compatible,
    load_run,
    normalize_float,
    row_batches,
    sigmoid,
    weights_digest,
)


def nll(logits: np.ndarray, y: np.ndarray, temperature: float = 1.0) -> float:
    """Mean binary negative log-likelihood of sigmoid(logits / T), computed stably."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    # -[y log s(z) + (1-y) log(1-s(z))] = softplus(z) - y z
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


LOG_T_BOUND = 4.0  # T is searched in [e^-4, e^4] = [0.018, 54.6]


def temperature_warning(t: float) -> str | None:
    """A line for a temperature stuck at its search bound, else None."""
    if abs(np.log(t)) < LOG_T_BOUND - 1e-3:
        return None
    if t > 1:
        return (
            f"temperature {t:.3g} is at the upper end of its search range: no temperature "
            "makes the validation logits much better than a constant 0.5 (they carry little "
            "information, or are shifted towards one class, as after a very short run), so "
            "the probabilities are not calibrated; train longer or check the data"
        )
    return (
        f"temperature {t:.3g} is at the lower end of its search range: the validation set "
        "is perfectly separated, so nothing bounds how confident the probabilities become; "
        "calibrate on a larger validation set"
    )


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The T > 0 minimising validation NLL (searched on log T, bounded to [e^-4, e^4])."""
    y = np.asarray(y, dtype=np.float64)
    res = minimize_scalar(
        lambda lt: nll(logits, y, float(np.exp(lt))),
        bounds=(-LOG_T_BOUND, LOG_T_BOUND),
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


def augmented_view_logits(
    loaded: LoadedRun,
    images: np.ndarray,
    rows: np.ndarray,
    views: int,
    seed: int = 0,
    batch_size: int = 128,
) -> np.ndarray:
    """Logits (views, N) of ``views`` copies of each image, transformed by the run's
    training augmentation exactly as training fed them (augment_batch, then the
    normalisation; no evaluation crop), with a generator seeded by ``seed``."""
    import torch

    from pneumoscope.data.augment import AugmentConfig, augment_batch

    aug = AugmentConfig.from_dict(loaded.card.get("training", {}).get("augment") or {})
    net = loaded.model.eval()
    gen = torch.Generator().manual_seed(seed)
    out = np.empty((views, len(rows)), dtype=np.float64)
    with torch.inference_mode():
        for v in range(views):
            for start, chunk in row_batches(images, rows, batch_size):
                x = torch.from_numpy(chunk).unsqueeze(1).float().div_(255.0)
                x = normalize_float(
                    augment_batch(x, aug, gen), loaded.mean, loaded.std, loaded.in_chans
                )
                out[v, start : start + len(chunk)] = net(x).squeeze(1).float().numpy()
    return out


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
    views: int | None = None,
    views_seed: int = 0,
) -> dict:
    """``views`` None: the run's training setting (model.json training.threshold_views;
    0 for runs made before it existed)."""
    if policy not in POLICIES:
        raise UserError(f"--policy must be one of {', '.join(POLICIES)}, got '{policy}'")
    if cost_fn <= 0 or cost_fp <= 0:
        raise UserError("--cost-fn and --cost-fp must be positive")
    if not 0.0 < target_sensitivity <= 1.0:
        raise UserError("--target-sensitivity must be in (0, 1]")
    loaded = load_run(run, use_calibration=False)
    if views is None:
        views = int(loaded.card.get("training", {}).get("threshold_views") or 0)
    if views < 0:
        raise UserError(f"--views must be 0 or more, got {views}")
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
    y_thr, p_thr, view_note = y, p_cal, None
    if views:
        z_views = augmented_view_logits(loaded, cache.images, rows, views, views_seed)
        p_views = sigmoid(z_views / t)
        y_thr = np.concatenate([y] + [y] * views)
        p_thr = np.concatenate([p_cal, p_views.ravel()])
        view_note = {
            "views": views,
            "seed": views_seed,
            "augment": loaded.card.get("training", {}).get("augment"),
            "n_scored": int(len(y_thr)),
            "views_auroc": binary_metrics(np.tile(y, views), p_views.ravel(), 0.5)["auroc"],
        }
    thresholds = {pol: choose_threshold(y_thr, p_thr, pol, **params) for pol in POLICIES}
    result = {
        "temperature": t,
        "temperature_warning": temperature_warning(t),
        "policy": policy,
        "policy_params": params,
        "threshold_views": view_note,
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
    from pneumoscope.model.ood import fit_ood  # the OOD guard is fitted on held-out data too

    result["ood"] = fit_ood(loaded, cache)
    plots.reliability(y, sigmoid(logits), p_cal, loaded.root / "reliability_val.png", "validation")
    return result
