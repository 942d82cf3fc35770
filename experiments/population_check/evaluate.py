"""Evaluate trained population checks by the README's rule; write results JSON and sheets.

For each run (``--work``/runs/NAME): score every film through the package's preprocessing
(``pre128.npy`` rows, checked equal to ``load_image(path, PreprocessConfig(128))`` on a
sample of files), set the threshold by the rule on the pediatric validation films only
(``train.rule_threshold``: at most 0.5% of them flagged), then count flagged films with 95%
Wilson intervals on every set: pediatric validation, the official test split (A), the
pediatric copies of the Covid-19 & Pneumonia set, all and those never trained on (B),
adult validation and test films, per source (D), the adult copies, and for a
leave-one-source-out run the held-out source (C). Stress tests (mark styles absent from
training, padding, central crop, JPEG q25) on the official test split and on the adult
test films (or the held-out source). Writes ``results_NAME.json`` beside this file,
``scores.csv`` in the run folder and, with ``--sheets``, contact sheets of the films the
check gets wrong and of its near misses to ``--work``/sheets/NAME_*.png.

    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python experiments/population_check/evaluate.py \
        --runs main loso_figure1 loso_ieee8023 --sheets
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from augment import STRESS_KINDS, stress  # noqa: E402
from contact_sheet import write_sheet  # noqa: E402
from model import build  # noqa: E402
from train import Films, rule_threshold, score  # noqa: E402

from pneumoscope.data.preprocess import PreprocessConfig, load_image, preprocess_gray  # noqa: E402

HERE = Path(__file__).resolve().parent
HELD_OUT = {"loso_figure1": "figure1", "loso_ieee8023": "ieee8023"}


def wilson(k: int, n: int, conf: float = 0.95) -> tuple[float, float]:
    if n == 0:
        return (float("nan"), float("nan"))
    z = norm.ppf(0.5 + conf / 2)
    p = k / n
    den = 1 + z * z / n
    c = (p + z * z / (2 * n)) / den
    h = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (float(max(0.0, c - h)), float(min(1.0, c + h)))


def flagged(scores: np.ndarray, t: float) -> dict:
    k, n = int((scores > t).sum()), int(len(scores))
    lo, hi = wilson(k, n)
    return dict(n=n, flagged=k, rate=k / n if n else float("nan"), ci95=[lo, hi])


def check_same_path(f: Films, size: int, rng: np.random.Generator, n: int = 24) -> int:
    """The cached squares are exactly what ``load_image`` gives: checked on a sample."""
    idx = rng.choice(len(f.df), n, replace=False)
    cfg = PreprocessConfig(img_size=size)
    for i in idx:
        if not np.array_equal(load_image(f.df["path"].iat[i], cfg), f.pre[i]):
            raise SystemExit(f"cache differs from load_image for {f.df['path'].iat[i]}")
    return n


def stress_rates(model, f: Films, idx: np.ndarray, t: float, size: int) -> dict:
    out = {}
    cfg = PreprocessConfig(img_size=size)
    for kind in STRESS_KINDS:
        x = np.stack([preprocess_gray(stress(f.raw(i), kind, int(i)), cfg) for i in idx])
        s = score(model, x, np.arange(len(x)))
        out[kind] = flagged(s, t)
    return out


def evaluate(name: str, f: Films, args) -> dict:
    run = args.work / "runs" / name
    cfg = json.loads((run / "config.json").read_text())
    model = build("popnet")
    model.load_state_dict(load_file(str(run / "popnet.safetensors")))
    model.eval()
    df = f.df
    s = score(model, f.pre, np.arange(len(df)))
    df = df.assign(score=s)
    sel = {
        "ped_val": (df["set"] == "ped_train") & (df["split"] == "val"),
        "ped_train (trained on)": (df["set"] == "ped_train") & (df["split"] == "train"),
        "A ped_test (official)": df["set"] == "ped_test",
        "B copy_ped all": (df["set"] == "copy_ped") & (df["split_of_group"] != "excluded"),
        "B copy_ped never trained on": (df["set"] == "copy_ped")
        & df["split_of_group"].isin(["val", "ped_test"]),
    }
    held = HELD_OUT.get(name)
    adult = (df["set"] == "adult") & (df["split"] != "excluded")
    copy_adult = (df["set"] == "copy_adult") & (df["split_of_group"] != "excluded")
    if held:
        sel[f"C held-out source {held} (all)"] = adult & (df["source"] == held)
        sel[f"C held-out source {held}: Covid-19 set copies"] = copy_adult & (df["source"] == held)
        trained_adult = adult & df["source"].isin(cfg["adult_sources"])
        sel["adult films trained on"] = trained_adult
    else:
        for split in ("val", "test"):
            sel[f"{'D ' if split == 'test' else ''}adult_{split} (both sources)"] = adult & (
                df["split"] == split
            )
            for src in ("ieee8023", "figure1"):
                sel[f"adult_{split} {src}"] = adult & (df["split"] == split) & (df["source"] == src)
        sel["adult_test: Covid-19 set copies"] = copy_adult & (df["split_of_group"] == "test")
        sel["adult_val: Covid-19 set copies"] = copy_adult & (df["split_of_group"] == "val")
        sel["adult_train (trained on)"] = adult & (df["split"] == "train")
    t = rule_threshold(df.loc[sel["ped_val"], "score"].to_numpy())
    sets = {k: flagged(df.loc[m, "score"].to_numpy(), t) for k, m in sel.items()}
    adult_key = f"C held-out source {held} (all)" if held else "D adult_test (both sources)"
    ped_test = df.loc[sel["A ped_test (official)"], "score"].to_numpy()
    adult_scores = df.loc[sel[adult_key], "score"].to_numpy()
    auroc = float(
        roc_auc_score(
            np.r_[np.zeros(len(ped_test)), np.ones(len(adult_scores))],
            np.r_[ped_test, adult_scores],
        )
    )
    stress_out = {
        "A ped_test": stress_rates(
            model, f, np.where(sel["A ped_test (official)"])[0], t, cfg["size"]
        ),
        adult_key: stress_rates(model, f, np.where(sel[adult_key])[0], t, cfg["size"]),
    }
    res = dict(
        run=name,
        threshold=t,
        rule="flag if p(adult) > t; t = the (floor(0.005 n)+1)-th highest "
        "pediatric validation score",
        train=dict(
            n_child=cfg["n_child"],
            n_adult=cfg["n_adult"],
            adult_sources=cfg["adult_sources"],
            adult_splits=cfg["adult_splits"],
            steps=cfg["steps_done"],
            minutes=round(cfg["minutes"], 1),
            cut_by_cap=cfg["cut_by_cap"],
        ),
        sets=sets,
        auroc_ped_test_vs=dict(set=adult_key, auroc=auroc),
        stress=stress_out,
    )
    (run / "scores.csv").write_text(
        df[["path", "set", "source", "split", "split_of_group", "score"]].to_csv(index=False)
    )
    if args.sheets:
        sheets(name, df, sel, t, adult_key, args.work / "sheets")
    return res


def sheets(name: str, df, sel: dict, t: float, adult_key: str, out: Path) -> None:
    """The films the check gets wrong and its near misses: every flagged child (validation,
    test, copies, training), every missed adult (validation/test or the held-out source),
    the 12 highest-scored official test films, the 32 highest-scored children and the 32
    lowest-scored adults."""

    def cap(r):
        return f"{r.score:.3f} {r.set} {r.split_of_group} {Path(r.path).stem}"[:38]

    kids_all = df[
        sel["ped_val"]
        | sel["ped_train (trained on)"]
        | sel["A ped_test (official)"]
        | sel["B copy_ped all"]
    ]
    kids_all = kids_all.sort_values("score", ascending=False)
    adult_sets = [
        k
        for k in sel
        if k.startswith(
            ("adult_val (", "D adult_test", "C held-out", "adult_test: Covid", "adult_val: Covid")
        )
    ]
    adults = df[np.logical_or.reduce([sel[k] for k in adult_sets])].sort_values("score")
    groups = {
        "children_flagged": (kids_all[kids_all["score"] > t], 6, 220),
        "adults_missed": (adults[adults["score"] <= t], 6, 220),
        "test_highest": (
            df[sel["A ped_test (official)"]].sort_values("score", ascending=False).head(12),
            6,
            220,
        ),
        "children_highest": (kids_all.head(32), 8, 160),
        "adults_lowest": (adults.head(32), 8, 160),
    }
    for tag, (rows, cols, size) in groups.items():
        if len(rows):
            write_sheet(
                rows["path"].tolist(),
                [cap(r) for r in rows.itertuples()],
                out / f"{name}_{tag}.png",
                cols,
                size,
            )
    print(
        f"  t = {t:.4f}; children flagged: {len(groups['children_flagged'][0])}; "
        f"adults missed: {len(groups['adults_missed'][0])}"
    )


def main() -> None:
    import argparse as _a

    ap = _a.ArgumentParser(description=__doc__, formatter_class=_a.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="+", default=["main"])
    ap.add_argument("--work", type=Path, default=Path("/work/pop_work"))
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--sheets", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    f = Films(args.work, args.size)
    n_checked = check_same_path(f, args.size, np.random.default_rng(0))
    print(f"cache == load_image on {n_checked} sampled films")
    for name in args.runs:
        res = evaluate(name, f, args)
        res["cache_checked_against_load_image"] = n_checked
        (HERE / f"results_{name}.json").write_text(json.dumps(res, indent=1))
        print(f"\n== {name}: threshold {res['threshold']:.4f} (train: {res['train']})")
        print(f"{'set':52s} {'n':>6s} {'flagged':>8s} {'rate':>7s}  95% CI")
        for k, v in res["sets"].items():
            print(
                f"{k:52s} {v['n']:6d} {v['flagged']:8d} {100 * v['rate']:6.2f}%  "
                f"[{100 * v['ci95'][0]:.2f}, {100 * v['ci95'][1]:.2f}]"
            )
        print(
            f"AUROC official test vs {res['auroc_ped_test_vs']['set']}: "
            f"{res['auroc_ped_test_vs']['auroc']:.4f}"
        )
        for k, v in res["stress"].items():
            print(
                f"stress on {k}: "
                + "; ".join(
                    f"{kind} {100 * r['rate']:.1f}% ({r['flagged']}/{r['n']})"
                    for kind, r in v.items()
                )
            )


if __name__ == "__main__":
    main()
