"""`pneumoscope calibrate`: temperature scaling and the operating threshold, on validation.

The calibrate step: the run's validation logits, a ``TemperatureScaler`` fitted on them
(model.calibration), the threshold chosen on the calibrated validation probabilities by a
policy, RUN/calibration.json (which predict and evaluate read) and the validation
reliability plot. It never touches the OOD guard: that is its own step
(``model.ood.fit_ood_guard``), which ``train`` and ``pneumoscope calibrate --ood`` run after.

``threshold_tta`` K > 0 chooses the threshold on the validation images plus K randomly
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
from pathlib import Path

import numpy as np

from pneumoscope.core.errors import UserError
from pneumoscope.data.cache import Cache, open_cache
from pneumoscope.evaluation import plots
from pneumoscope.evaluation.metrics import POLICIES, binary_metrics, choose_threshold
from pneumoscope.model.calibration import (
    TemperatureScaler,
    ThresholdAugmentation,
    ValidationCheck,
    nll,
    sigmoid,
)
from pneumoscope.model.run import (
    LoadedRun,
    check_compatible,
    load_run,
    row_batches,
)
from pneumoscope.model.tta import TestTimeAugmentation, with_tta


def data_digest(cache: Cache, rows: np.ndarray, labels: np.ndarray) -> str:
    """SHA-256 of the validation pixels and labels: says which data the calibration saw."""
    h = hashlib.sha256()
    for start in range(0, len(rows), 256):
        h.update(np.ascontiguousarray(cache.images[rows[start : start + 256]]).tobytes())
    h.update(np.asarray(labels, dtype=np.int8).tobytes())
    return h.hexdigest()


def augmented_logits(
    runner,
    augment: dict,
    images: np.ndarray,
    rows: np.ndarray,
    copies: int,
    seed: int = 0,
    batch_size: int = 128,
) -> np.ndarray:
    """Logits (copies, N) of ``copies`` augmented copies of each image, transformed by the training
    augmentation ``augment`` as training fed them, with a generator seeded by ``seed``,
    rounded to uint8 and scored by ``runner`` (anything with ``logits_and_features``:
    a LoadedRun, a backend, one wrapped in test-time augmentation)."""
    import torch

    from pneumoscope.data.augment import AugmentConfig, augment_batch

    aug = AugmentConfig.from_dict(augment)
    gen = torch.Generator().manual_seed(seed)
    out = np.empty((copies, len(rows)), dtype=np.float64)
    for v in range(copies):
        for start, chunk in row_batches(images, rows, batch_size):
            x = torch.from_numpy(chunk).unsqueeze(1).float().div_(255.0)
            x = augment_batch(x, aug, gen).mul_(255.0).round_().squeeze(1).to(torch.uint8)
            out[v, start : start + len(chunk)] = runner.logits_and_features(x.numpy())[0]
    return out


def _summary(y: np.ndarray, logits: np.ndarray, t: float) -> dict:
    m = binary_metrics(y, sigmoid(logits / t), 0.5)
    return {"nll": nll(logits, y, t), "ece": m["ece"], "brier": m["brier"], "auroc": m["auroc"]}


def _check_settings(policy: str, cost_fn: float, cost_fp: float, target_sensitivity: float):
    if policy not in POLICIES:
        raise UserError(f"--policy must be one of {', '.join(POLICIES)}, got '{policy}'")
    if cost_fn <= 0 or cost_fp <= 0:
        raise UserError("--cost-fn and --cost-fp must be positive")
    if not 0.0 < target_sensitivity <= 1.0:
        raise UserError("--target-sensitivity must be in (0, 1]")


def _threshold_scores(
    loaded: LoadedRun,
    scorer,
    cache: Cache,
    rows: np.ndarray,
    y: np.ndarray,
    p_cal: np.ndarray,
    scaler: TemperatureScaler,
    copies: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, ThresholdAugmentation | None]:
    """(labels, calibrated probabilities, copies note) the threshold is chosen on: the
    validation images (``p_cal``), plus ``copies`` augmented copies of each when asked,
    each scored by ``scorer`` as every film is (with test-time augmentation, if any)."""
    if not copies:
        return y, p_cal, None
    augment = loaded.card.training.augment or {}
    z_copies = augmented_logits(scorer, augment, cache.images, rows, copies, seed)
    p_copies = sigmoid(z_copies / scaler.temperature_)
    y_thr = np.concatenate([y] + [y] * copies)
    note = ThresholdAugmentation(
        copies=copies,
        seed=seed,
        augment=loaded.card.training.augment,
        n_scored=int(len(y_thr)),
        copies_auroc=binary_metrics(np.tile(y, copies), p_copies.ravel(), 0.5)["auroc"],
    )
    return y_thr, np.concatenate([p_cal, p_copies.ravel()]), note


def _tta(loaded: LoadedRun, k: int) -> TestTimeAugmentation | None:
    """K copies drawn from the run's training augmentation, seed 0; None for K = 0."""
    return TestTimeAugmentation(k, 0, dict(loaded.card.training.augment or {})) if k else None


def calibrate(
    run: str | Path,
    data: str | Path,
    policy: str = "youden",
    cost_fn: float = 5.0,
    cost_fp: float = 1.0,
    target_sensitivity: float = 0.95,
    threshold_tta: int | None = None,
    threshold_tta_seed: int = 0,
    tta: int | None = None,
) -> TemperatureScaler:
    """Fit the temperature and choose the threshold on validation; write
    RUN/calibration.json and RUN/reliability_val.png; return the fitted scaler.

    ``threshold_tta`` None: the run's training setting (model.json training.threshold_tta;
    0 for runs made before it existed). ``tta`` K > 0 averages every logit over the film
    and K augmented copies (model.tta): the temperature and the threshold are then fitted
    on those averaged logits, and every command scores that way; None: the run's training
    setting (training.tta, 0 for runs made before it existed)."""
    _check_settings(policy, cost_fn, cost_fp, target_sensitivity)
    loaded = load_run(run, use_calibration=False)
    if threshold_tta is None:
        threshold_tta = int(loaded.card.training.threshold_tta or 0)
    if tta is None:
        tta = int(loaded.card.training.tta or 0)
    if threshold_tta < 0 or tta < 0:
        raise UserError(f"--threshold-tta and --tta must be 0 or more, got {threshold_tta}, {tta}")
    cache = open_cache(data)
    check_compatible(cache, loaded, data)
    val = cache.split("val")
    y = val["label"].to_numpy()
    if len(np.unique(y)) < 2:
        raise UserError(f"the validation split of {data} holds one class only: cannot calibrate")
    rows = val["index"].to_numpy()
    tv = _tta(loaded, tta)
    scorer = with_tta(loaded, tv)
    logits = scorer.predict_logits(cache.images, rows=rows).astype(np.float64)
    scaler = TemperatureScaler().fit(logits, y, tv)
    p_cal = sigmoid(logits / scaler.temperature_)
    params = {"cost_fn": cost_fn, "cost_fp": cost_fp, "target_sensitivity": target_sensitivity}
    y_thr, p_thr, note = _threshold_scores(
        loaded, scorer, cache, rows, y, p_cal, scaler, threshold_tta, threshold_tta_seed
    )
    thresholds = {pol: choose_threshold(y_thr, p_thr, pol, **params) for pol in POLICIES}
    scaler.set_threshold(policy, thresholds, params, note)
    check = ValidationCheck(
        n=int(len(y)),
        before=_summary(y, logits, 1.0),
        after=_summary(y, logits, scaler.temperature_),
        at_threshold=binary_metrics(y, p_cal, scaler.threshold_),
    )
    data_path = str(Path(data).expanduser().resolve())
    scaler.set_provenance(check, data_path, data_digest(cache, rows, y))
    scaler.save(loaded.files)
    plots.reliability(y, sigmoid(logits), p_cal, loaded.files.reliability_val, "validation")
    return scaler
