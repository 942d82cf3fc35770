"""`pneumoscope evaluate`: metrics with confidence intervals, per-group results, plots and
a self-contained HTML report, for one split of a prepared cache or every image of it
(``all``: a prepared folder the run never trained on)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from pneumoscope.core.errors import UserError
from pneumoscope.core.io import write_json_atomic
from pneumoscope.data.cache import Cache, counts_table, open_cache, write_csv
from pneumoscope.evaluation import plots
from pneumoscope.evaluation.bootstrap import bootstrap_ci
from pneumoscope.evaluation.metrics import METRIC_LABELS, binary_metrics
from pneumoscope.evaluation.report import write_report
from pneumoscope.model.contract import ModelCard, RunFiles
from pneumoscope.model.run import LoadedRun, check_compatible, load_run, sigmoid

GROUP_COLUMNS = ("source", "age_group")
MIN_GROUP_SIZE = 10  # smaller groups are listed with their n, without metrics
N_WORST = 8  # most confident false positives and false negatives named in metrics.json
PER_IMAGE_COLUMNS = ("index", "path", "source", "patient", "group", "age_group", "class_name")
SPLITS = ("train", "val", "test", "all")  # all: every image of the folder, whatever its split


def evaluated_rows(cache: Cache, split: str) -> pd.DataFrame:
    """The manifest rows of ``split``: one of the cache's splits, or every row (``all``)."""
    if split not in SPLITS:
        raise UserError(f"--split must be one of {' | '.join(SPLITS)}, got '{split}'")
    return cache.manifest if split == "all" else cache.split(split)


def training_cache_match(card: ModelCard, cache: Cache) -> str:
    """Why ``cache`` looks like the one ``card``'s run was trained on, or "" when it does
    not: the same folder as the card's training_data.cache, or the same counts per split
    and class and the same split note. The card keeps no digest of the training pixels, so
    this is a likeness (a copy of the cache matches, a re-preparation of other images with
    equal counts would too): grounds for a warning, never for a refusal."""
    td = card.training_data
    if td.cache and Path(td.cache) == cache.root.expanduser().resolve():
        return "the folder its model.json names as the training data"
    same = (td.counts, td.split_note) == (counts_table(cache.manifest), cache.info.split_note)
    if td.counts and same:
        return "the counts per split and class and the split note of its training data"
    return ""


def per_image(rows: pd.DataFrame, y: np.ndarray, p: np.ndarray, threshold: float) -> pd.DataFrame:
    """One row per evaluated image: its calibrated probability, call and outcome, so every
    error can be traced back to its file."""
    df = rows[[c for c in PER_IMAGE_COLUMNS if c in rows.columns]].copy()
    df["label"] = y
    df["probability"] = p
    pred = (p >= threshold).astype(int)
    df["predicted"] = pred
    df["outcome"] = np.select(
        [(y == 1) & (pred == 1), (y == 0) & (pred == 0), (y == 0) & (pred == 1)],
        ["TP", "TN", "FP"],
        default="FN",
    )
    return df


def worst_errors(df: pd.DataFrame, n: int = N_WORST) -> dict[str, list[dict]]:
    """The n false positives with the highest and the n false negatives with the lowest
    probability: where the model is most confidently wrong."""
    fp = df[df["outcome"] == "FP"].sort_values("probability", ascending=False, kind="stable")
    fn = df[df["outcome"] == "FN"].sort_values("probability", ascending=True, kind="stable")
    cols = [c for c in ("index", "path", "source", "probability") if c in df.columns]
    return {
        "false_positives": fp[cols].head(n).to_dict("records"),
        "false_negatives": fn[cols].head(n).to_dict("records"),
    }


def _per_group(
    rows: pd.DataFrame,
    y: np.ndarray,
    p: np.ndarray,
    threshold: float,
    groups: np.ndarray,
    n_boot: int,
    seed: int,
) -> dict:
    """Metrics with intervals for each value of each group column the manifest has."""
    out: dict[str, dict] = {}
    for col in GROUP_COLUMNS:
        if col not in rows or rows[col].nunique() < 2:
            continue
        out[col] = {}
        for value in sorted(rows[col].unique()):
            mask = (rows[col] == value).to_numpy()
            entry: dict = {"n": int(mask.sum())}
            if mask.sum() >= MIN_GROUP_SIZE and len(np.unique(y[mask])) == 2:
                entry.update(binary_metrics(y[mask], p[mask], threshold))
                entry["ci"] = bootstrap_ci(
                    y[mask], p[mask], threshold, groups[mask], n_boot=n_boot, seed=seed
                )
            out[col][str(value)] = entry
    return out


def evaluate(
    run: str | Path,
    data: str | Path,
    split: str = "test",
    out: str | Path | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    runner=None,
) -> dict:
    """Metrics of ``run`` on a split. ``runner`` computes the logits (anything with
    ``logits_and_features(images, rows=...)``, e.g. ``inference.predict.make_runner``'s
    bf16 or int8 backends); default the run's float32 torch model. Either is wrapped in
    the run's test-time augmentation when its calibration has it."""
    loaded = load_run(run)
    cache = open_cache(data)
    check_compatible(cache, loaded, data)
    rows = evaluated_rows(cache, split).reset_index(drop=True)
    y = rows["label"].to_numpy()
    if len(np.unique(y)) < 2:
        raise UserError(f"split '{split}' of {data} holds one class only: AUROC is undefined")
    if n_boot < 0:
        raise UserError("--bootstrap must be 0 (no intervals) or more")
    model = loaded.scorer(runner)
    logits, _ = model.logits_and_features(cache.images, rows=rows["index"].to_numpy())
    logits = logits.astype(float)
    p_raw = sigmoid(logits)
    p = loaded.proba_from_logits(logits)
    thr = loaded.threshold
    # Resample whole groups (a patient's images plus any copies of them) where the cache
    # has them; older caches only know patients.
    unit = "group" if "group" in rows.columns else "patient"
    groups = rows[unit].astype(str).to_numpy()
    m = binary_metrics(y, p, thr)
    ci = bootstrap_ci(y, p, thr, groups, n_boot=n_boot, seed=seed) if n_boot else {}
    operating_points = _operating_points(loaded, y, p)
    warnings = []
    if split == "all" and (why := training_cache_match(loaded.card, cache)):
        warnings.append(
            f"{data} looks like the run's own training cache ({why}): --split all scores its "
            "training and validation images too, so these figures do not measure unseen films"
        )
    out_files = RunFiles.of(out) if out else loaded.files
    out_dir = out_files.root
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {
        "run": str(loaded.root),
        "data": str(Path(data).expanduser().resolve()),
        "split": split,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "threshold_policy": loaded.threshold_policy,
        "temperature": loaded.temperature,
        **m,
        "ci": ci,
        "bootstrap": {
            "replicates": n_boot,
            "level": 0.95,
            "resampling_unit": unit,
            "n_patients": int(len(np.unique(groups))),  # resampled units (groups)
            "seed": seed,
        },
        "uncalibrated": {k: binary_metrics(y, p_raw, 0.5)[k] for k in ("brier", "ece", "log_loss")},
        "operating_points": operating_points,
        "per_group": _per_group(rows, y, p, thr, groups, n_boot, seed) if n_boot else {},
        "metric_labels": METRIC_LABELS,
        "warnings": warnings,
    }
    images = per_image(rows, y, p, thr)
    predictions_csv = out_files.predictions(split)
    write_csv(predictions_csv, images)
    result["per_image"] = {"csv": predictions_csv.name, **worst_errors(images)}
    write_json_atomic(out_files.metrics, result)
    _plots(out_files, result, y, p, p_raw, split)
    write_report(out_files.report, result, loaded, cache)
    return result


def _operating_points(loaded: LoadedRun, y: np.ndarray, p: np.ndarray) -> dict:
    """Metrics at the threshold of every calibration policy (none for an uncalibrated run)."""
    if not loaded.calibration:
        return {}
    keys = ("threshold", "sensitivity", "specificity", "ppv", "npv", "f1", "accuracy")
    out = {}
    for pol, t in loaded.calibration.thresholds_by_policy_.items():
        mp = binary_metrics(y, p, t)
        out[pol] = {k: mp[k] for k in (*keys, "confusion_matrix")}
    return out


def _plots(
    files: RunFiles, m: dict, y: np.ndarray, p: np.ndarray, p_raw: np.ndarray, split: str
) -> None:
    """The evaluation's figures, at the threshold of ``m`` (metrics.json's content)."""
    thr = m["threshold"]
    plots.confusion(m["confusion_matrix"], files.confusion, f"{split}: threshold {thr:.3f}")
    plots.roc(y, p, m["auroc"], thr, files.roc)
    plots.pr(y, p, files.pr)
    plots.reliability(y, p_raw, p, files.reliability, split)
    plots.histograms(y, p, thr, files.histograms)
