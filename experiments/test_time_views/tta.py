"""Test-time views: does averaging a run's logit over K augmented views of each film help?
Applies the rule in README.md beside it ("Test-time views: the rule").

    python experiments/test_time_views/tta.py \\
        --run runs/c192_s0 --run runs/c192_s1 --run runs/c192_s2 \\
        --data work/pediatric192 --views 4,8 --out experiments/test_time_views/results/tta.json

Measures a property of trained runs, not speed. Per run, on the validation split: the
plain logits (the run's own inference path) and ``max(views)`` augmented views of each
film (``calibration.augmented_logits``: the run's training augmentation, seeded);
the averaged logit for K views is the mean of the plain logit and the first K views'.
The rule takes the smaller K whose validation AUROC gain, averaged over the runs, is at
least 0.002 and which raises every run's AUROC. Only when a K is adopted are the test
films scored the same way, once: AUROC, and accuracy at the Youden threshold chosen on
the averaged validation scores (and, beside it, the plain logits at their own Youden
threshold on validation, for comparison).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from pneumoscope.core.io import write_json_atomic
from pneumoscope.data.cache import open_cache
from pneumoscope.evaluation.calibration import augmented_logits
from pneumoscope.model.run import load_run

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # experiments/record.py
from record import machine, method  # noqa: E402

MIN_GAIN = 0.002


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", action="append", type=Path, required=True, help="repeatable")
    p.add_argument("--data", type=Path, required=True, help="the runs' prepared cache")
    p.add_argument("--views", default="4,8", help="K values, comma list")
    p.add_argument("--seed", type=int, default=0, help="views seed")
    p.add_argument("--out", type=Path, default=HERE / "results" / "tta.json")
    args = p.parse_args(argv)
    args.ks = sorted(int(k) for k in args.views.split(","))
    return args


def split_logits(run: Path, cache, split: str, views: int, seed: int) -> dict:
    """Labels, plain logits and (views, N) augmented logits of one split."""
    loaded = load_run(run, use_calibration=False)
    part = cache.split(split)
    rows = part["index"].to_numpy()
    plain = loaded.predict_logits(cache.images, rows=rows).astype(np.float64)
    augment = loaded.card.training.augment or {}
    aug = augmented_logits(loaded, augment, cache.images, rows, views, seed)
    return {"y": part["label"].to_numpy(), "plain": plain, "views": aug}


def averaged(d: dict, k: int) -> np.ndarray:
    return np.vstack([d["plain"][None], d["views"][:k]]).mean(axis=0) if k else d["plain"]


def youden(y: np.ndarray, z: np.ndarray) -> float:
    fpr, tpr, thr = roc_curve(y, z)
    return float(thr[np.argmax(tpr - fpr)])


def decide(val: dict[str, dict], ks: list[int]) -> dict:
    """The rule: the smaller K with mean gain >= MIN_GAIN that raises every run."""
    table = {}
    for k in ks:
        gains = [
            roc_auc_score(d["y"], averaged(d, k)) - roc_auc_score(d["y"], d["plain"])
            for d in val.values()
        ]
        table[k] = {"gains": gains, "mean_gain": float(np.mean(gains))}
    ok = [k for k in ks if table[k]["mean_gain"] >= MIN_GAIN and min(table[k]["gains"]) > 0]
    return {"by_k": table, "adopted": ok[0] if ok else None}


def test_once(val: dict, test: dict, k: int) -> dict:
    """Per run: test AUROC and accuracy, averaged (threshold from averaged validation) and
    plain (threshold from plain validation)."""
    out = {}
    for name in val:
        v, t = val[name], test[name]
        row = {}
        for label, kk in (("plain", 0), (f"views_{k}", k)):
            thr = youden(v["y"], averaged(v, kk))
            z = averaged(t, kk)
            row[label] = {
                "auroc": float(roc_auc_score(t["y"], z)),
                "accuracy": float(np.mean((z >= thr) == t["y"])),
            }
        out[name] = row
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    load_before = os.getloadavg()
    cache = open_cache(args.data)
    k_max = max(args.ks)
    val = {r.name: split_logits(r, cache, "val", k_max, args.seed) for r in args.run}
    decision = decide(val, args.ks)
    print(f"{'run':<12}{'plain AUROC':>13}" + "".join(f"{'K=' + str(k):>10}" for k in args.ks))
    for name, d in val.items():
        cells = "".join(f"{roc_auc_score(d['y'], averaged(d, k)):>10.4f}" for k in args.ks)
        print(f"{name:<12}{roc_auc_score(d['y'], d['plain']):>13.4f}{cells}")
    for k, r in decision["by_k"].items():
        gains = ", ".join(f"{g:+.4f}" for g in r["gains"])
        print(f"K={k}: gains {gains}, mean {r['mean_gain']:+.4f}")
    print(f"decision: {'K=' + str(decision['adopted']) if decision['adopted'] else 'none adopted'}")
    record = {"machine": machine(load_before), "method": method(__doc__), "decision": decision}
    record["runs"] = [str(r) for r in args.run]
    if decision["adopted"]:
        k = decision["adopted"]
        test = {r.name: split_logits(r, cache, "test", k, args.seed) for r in args.run}
        record["test"] = test_once(val, test, k)
        for name, row in record["test"].items():
            print(name, {m: {x: round(v, 4) for x, v in s.items()} for m, s in row.items()})
    write_json_atomic(args.out, record)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
