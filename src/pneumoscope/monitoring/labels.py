"""Ground truth that arrives later (a radiologist's read, a culture), joined to the log.

``--labels CSV`` has a ``request_id`` or ``sha256`` column (or both: then both must match,
as a batch request gives several films one request id) and a ``label`` column (NORMAL /
PNEUMONIA or 0 / 1). The analysed films that find a label give observed sensitivity and
specificity, each with a Wilson 95% interval (a window holds tens of films, where the
normal approximation's interval leaves [0, 1] and the bootstrap's is ragged), and the
calibration: the observed pneumonia rate per probability bin and the ECE, evaluation's
metrics on the same arrays.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pneumoscope.core import CLASS_NAMES
from pneumoscope.core.errors import UserError
from pneumoscope.evaluation.metrics import ECE_BINS, binary_metrics, wilson_interval

KEYS = ("request_id", "sha256")


def read_labels(path: str | Path) -> pd.DataFrame:
    """The labels CSV as key column(s) and ``y`` (1 = PNEUMONIA), one row per key."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"labels file not found: {path}")
    try:
        df = pd.read_csv(path, dtype=str)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the labels {path}: {exc}") from None
    keys = [k for k in KEYS if k in df.columns]
    if not keys or "label" not in df.columns:
        raise UserError(
            f"{path} needs a label column (NORMAL/PNEUMONIA or 0/1) and a request_id or "
            f"sha256 column; it has {', '.join(df.columns) or 'no columns'}"
        )
    df = df[[*keys, "label"]].dropna(subset=keys)
    y = df["label"].str.strip().str.upper().map(_LABEL_VALUES)
    if y.isna().any():
        row = int(np.flatnonzero(y.isna().to_numpy())[0])
        raise UserError(
            f"{path}, row {row + 2}: label {df['label'].iloc[row]!r} is not NORMAL, "
            "PNEUMONIA, 0 or 1"
        )
    df = df.assign(y=y.astype(int)).drop(columns="label").drop_duplicates()
    clash = df.duplicated(subset=keys, keep=False)
    if clash.any():
        key = df.loc[clash, keys].iloc[0].tolist()
        raise UserError(f"{path} gives {'/'.join(map(str, key))} two different labels")
    return df


_LABEL_VALUES = {CLASS_NAMES[0]: 0, CLASS_NAMES[1]: 1, "0": 0, "1": 1}


def join_labels(records: pd.DataFrame, labels: pd.DataFrame) -> pd.Series:
    """Each record's label (NaN where none), by the labels' key column(s)."""
    keys = [k for k in KEYS if k in labels.columns]
    if keys == ["request_id"]:
        per_request = records.loc[records["status"] == "ok", "request_id"].value_counts()
        shared = per_request[per_request > 1]
        if len(shared) and shared.index.isin(labels["request_id"]).any():
            raise UserError(
                "a labelled request_id holds several films (a batch request): give the "
                "labels a sha256 column too"
            )
    left = records[keys].astype(object).where(records[keys].notna(), None)
    joined = left.merge(labels, on=keys, how="left", validate="many_to_one")
    return pd.Series(joined["y"].to_numpy(), index=records.index)


def labelled_figures(y: np.ndarray, p: np.ndarray, threshold: float) -> dict:
    """Observed performance of the labelled analysed films: counts, sensitivity and
    specificity with Wilson intervals, PPV, NPV, AUROC (both classes needed) and ECE."""
    y = np.asarray(y, dtype=int)
    p = np.asarray(p, dtype=float)
    if len(y) == 0:
        return {"n": 0}
    m = binary_metrics(y, p, threshold)
    (tn, fp), (fn, tp) = m["confusion_matrix"]
    return {
        "n": m["n"],
        "n_pneumonia": m["n_pneumonia"],
        "n_normal": m["n_normal"],
        "sensitivity": _number(m["sensitivity"]),
        "sensitivity_ci": wilson_interval(tp, tp + fn),
        "specificity": _number(m["specificity"]),
        "specificity_ci": wilson_interval(tn, tn + fp),
        "ppv": _number(m["ppv"]),
        "npv": _number(m["npv"]),
        "auroc": _number(m["auroc"]),
        "ece": _number(m["ece"]),
        "confusion_matrix": m["confusion_matrix"],
    }


def reliability(y: np.ndarray, p: np.ndarray, n_bins: int = ECE_BINS) -> list[dict]:
    """Observed pneumonia rate against mean probability per equal-width bin (the bins
    ECE sums over), non-empty bins only, each rate with its Wilson interval."""
    y = np.asarray(y, dtype=int)
    p = np.asarray(p, dtype=float)
    bins = np.clip((p * n_bins).astype(int), 0, n_bins - 1)
    out = []
    for b in np.unique(bins):
        sel = bins == b
        k, n = int(y[sel].sum()), int(sel.sum())
        out.append(
            {
                "bin": [b / n_bins, (b + 1) / n_bins],
                "n": n,
                "mean_probability": float(p[sel].mean()),
                "observed_rate": k / n,
                "observed_ci": wilson_interval(k, n),
            }
        )
    return out


def _number(v: float) -> float | None:
    return None if v is None or np.isnan(v) else float(v)
