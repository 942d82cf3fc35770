"""The figures of experiments/adult_films/README.md from `evaluate`'s per-image files.

    python experiments/adult_films/analyse.py reference --predictions EVAL/predictions_all.csv
    python experiments/adult_films/analyse.py joint --predictions JOINT/predictions_test.csv

``reference``: the pediatric model on every adult film (AUROC with a patient bootstrap,
adult normals called pneumonia with a Wilson interval, sensitivity; the same per source
and for NORMAL against non-COVID pneumonia, from adults.csv's own labels and findings).
``joint``: the joint model on its test split, per age group, and the confound's own score
(AUROC of the bare indicator "adult" for pneumonia on the same films). Prints a table and
writes results_NAME.json beside this file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from pneumoscope.evaluation.bootstrap import bootstrap_ci
from pneumoscope.evaluation.metrics import auroc, wilson_interval

HERE = Path(__file__).resolve().parent
ADULTS = Path(__file__).resolve().parents[2].parent / "shared/data/adult_public/adults.csv"


def _block(df: pd.DataFrame, threshold: float, n_boot: int = 2000) -> dict:
    """AUROC [CI], normals called pneumonia (k/n, Wilson), sensitivity [CI] for one set."""
    y, p = df["label"].to_numpy(int), df["probability"].to_numpy(float)
    called = p >= threshold
    normals, sick = y == 0, y == 1
    out = {"n": int(len(y)), "normal": int(normals.sum()), "pneumonia": int(sick.sum())}
    k = int(called[normals].sum())
    out["normals_called_pneumonia"] = [k, int(normals.sum())]
    out["normals_called_pneumonia_ci95"] = wilson_interval(k, int(normals.sum()))
    out["sensitivity"] = float(called[sick].mean()) if sick.any() else None
    out["sensitivity_ci95"] = wilson_interval(int(called[sick].sum()), int(sick.sum()))
    if normals.any() and sick.any():
        groups = df["patient"].astype(str).to_numpy()
        ci = bootstrap_ci(y, p, threshold, groups, n_boot=n_boot, seed=0)
        out["auroc"] = auroc(y, p)
        out["auroc_ci95"] = ci["auroc"]
    return out


def reference(pred: pd.DataFrame) -> dict:
    meta = pd.read_csv(ADULTS)
    meta["path"] = meta["path"].map(lambda s: str((ADULTS.parent / s).resolve()))
    df = pred.merge(meta[["path", "label", "source", "finding"]], on="path", suffixes=("", "_csv"))
    assert len(df) == len(pred), "every scored film is in adults.csv"
    thr = float(pred["threshold"].iloc[0])
    out = {"threshold": thr, "all adult films": _block(df, thr)}
    for source, part in df.groupby("source_csv"):
        out[f"source {source}"] = _block(part, thr)
    no_covid = df[df["label_csv"].isin(["NORMAL", "PNEUMONIA"])]
    out["NORMAL vs PNEUMONIA (COVID-19 left out)"] = _block(no_covid, thr)
    return out


def joint(pred: pd.DataFrame) -> dict:
    thr = float(pred["threshold"].iloc[0])
    out = {"threshold": thr}
    for group, part in pred.groupby("age_group"):
        out[f"age group {group}"] = _block(part, thr)
    y = pred["label"].to_numpy(int)
    adult = (pred["age_group"] == "adult").to_numpy(float)
    out["confound: AUROC of 'adult' alone for pneumonia"] = auroc(y, adult)
    out["all test films"] = _block(pred, thr)
    return out


def _print(name: str, res: dict) -> None:
    print(f"{name} (threshold {res['threshold']:.3f})")
    print(
        f"{'set':<44}{'n':>5}{'N/P':>9}{'AUROC [95% CI]':>26}{'normals called P':>20}{'sens.':>7}"
    )
    for key, b in res.items():
        if not isinstance(b, dict):
            if key != "threshold":
                print(f"{key:<44}{b:>.3f}")
            continue
        au = (
            f"{b['auroc']:.3f} [{b['auroc_ci95'][0]:.3f}, {b['auroc_ci95'][1]:.3f}]"
            if "auroc" in b
            else "-"
        )
        k, n = b["normals_called_pneumonia"]
        sens = f"{b['sensitivity']:.3f}" if b["sensitivity"] is not None else "-"
        print(
            f"{key:<44}{b['n']:>5}{b['normal']:>4}/{b['pneumonia']:<4}{au:>26}{f'{k}/{n}':>20}{sens:>7}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("kind", choices=("reference", "joint"))
    ap.add_argument("--predictions", type=Path, required=True)
    args = ap.parse_args()
    pred = pd.read_csv(args.predictions)
    if "threshold" not in pred:
        metrics = json.loads((args.predictions.parent / "metrics.json").read_text())
        pred["threshold"] = metrics["threshold"]
    res = reference(pred) if args.kind == "reference" else joint(pred)
    _print(args.kind, res)
    (HERE / f"results_{args.kind}.json").write_text(json.dumps(res, indent=1, default=float))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
