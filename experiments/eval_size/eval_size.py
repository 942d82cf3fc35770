"""A larger evaluation size: does a run trained at one size score better on films prepared
larger, with its batch-norm statistics refitted at that size? Applies the rule written in
README.md beside it ("A larger evaluation size: the rule").

    python experiments/eval_size/eval_size.py --run runs/fc2_s0 --data work/ped160 \\
        --at work/ped192 --at work/ped224 --out experiments/eval_size/results/eval_size.json

Measures a property of trained runs, not speed. For each run and each larger cache (the
same films and splits, prepared at another --img-size with the run's other preprocessing
settings): a copy of the network whose batch-norm running statistics are recomputed on
``--n-train`` training films of that cache (a seeded sample, plain films, cumulative
average, no gradient), then the validation AUROC of single plain views, against the run
at its own size. The rule takes the smaller size whose AUROC gain, averaged over the
runs, is at least 0.002 and which raises every run's AUROC. Only when a size is adopted
are the test films scored, once, at that size and at the run's own.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from pneumoscope.core.errors import UserError
from pneumoscope.core.io import write_json_atomic
from pneumoscope.data.cache import Cache, open_cache
from pneumoscope.model.run import LoadedRun, load_run, row_batches

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # experiments/record.py
from record import machine, method  # noqa: E402

MIN_GAIN = 0.002


@torch.no_grad()
def refit_norms(loaded: LoadedRun, net: torch.nn.Module, images, rows, batch_size=64) -> int:
    """Recompute ``net``'s batch-norm running statistics on ``images[rows]`` (uint8, as
    the cache holds them, through the run's own input path; cumulative average, no
    gradient); returns how many batch norms there are."""
    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over every batch
        m.train()
    for _, chunk in row_batches(images, rows, batch_size):
        net(loaded.model_input(torch.from_numpy(chunk).unsqueeze(1)))
    net.eval()
    return len(norms)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", action="append", type=Path, required=True, help="repeatable")
    p.add_argument("--data", type=Path, required=True, help="the runs' own prepared cache")
    p.add_argument("--at", action="append", type=Path, required=True, help="larger caches")
    p.add_argument("--n-train", type=int, default=1024, help="training films for the refit")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", type=Path, default=HERE / "results" / "eval_size.json")
    return p.parse_args(argv)


def rows_like(base: Cache, other: Cache, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(rows of ``other``, labels) holding ``base``'s films of ``split`` in base's order."""
    want = base.split(split)
    have = other.split(split).set_index("path")
    missing = set(want["path"]) - set(have.index)
    if missing:
        raise UserError(f"{len(missing)} {split} films of the base cache are not in the other")
    return have.loc[want["path"], "index"].to_numpy(), want["label"].to_numpy()


def refit_bn(loaded: LoadedRun, images: np.ndarray, batch_size: int) -> torch.nn.Module:
    """A copy of the run's network with batch-norm statistics recomputed on ``images``
    (``refit_norms`` above; pneumoscope 0.1's ``calibrate --refit-size`` did the same)."""
    net = copy.deepcopy(loaded.model)
    refit_norms(loaded, net, images, None, batch_size)
    return net


def _input(loaded: LoadedRun, x_uint8: torch.Tensor) -> torch.Tensor:
    return loaded.model_input(x_uint8.unsqueeze(1))


@torch.no_grad()
def logits(loaded: LoadedRun, net, images: np.ndarray, rows: np.ndarray, bs: int) -> np.ndarray:
    out = []
    for start in range(0, len(rows), bs):
        x = torch.from_numpy(np.ascontiguousarray(images[rows[start : start + bs]]))
        out.append(net(_input(loaded, x)).squeeze(1).float().numpy())
    return np.concatenate(out).astype(np.float64)


def score(args, loaded: LoadedRun, base: Cache, caches: dict, split: str) -> dict[str, float]:
    """AUROC of ``split`` at the run's own size and at each larger cache's."""
    rows, y = rows_like(base, base, split)
    own = logits(loaded, loaded.model.eval(), base.images, rows, args.batch_size)
    result = {str(base.preprocess.img_size): float(roc_auc_score(y, own))}
    for size, (cache, net) in caches.items():
        r, y2 = rows_like(base, cache, split)
        z = logits(loaded, net, cache.images, r, args.batch_size)
        result[str(size)] = float(roc_auc_score(y2, z))
    return result


def refitted(args, loaded: LoadedRun, base: Cache, others: list[Cache]) -> dict:
    """{size: (cache, network refitted at that size)} for one run."""
    train_rows, _ = rows_like(base, base, "train")
    pick = np.random.default_rng(args.seed).permutation(len(train_rows))[: args.n_train]
    out = {}
    for cache in others:
        r, _ = rows_like(base, cache, "train")
        sample = cache.images[np.sort(r[pick])]
        out[cache.preprocess.img_size] = (cache, refit_bn(loaded, sample, args.batch_size))
    return out


def decide(val: dict[str, dict[str, float]], own: str, sizes: list[str]) -> dict:
    """The rule: the smaller size with mean gain >= MIN_GAIN that raises every run."""
    table = {}
    for s in sizes:
        gains = [v[s] - v[own] for v in val.values()]
        table[s] = {"gains": gains, "mean_gain": float(np.mean(gains))}
    ok = [s for s in sizes if table[s]["mean_gain"] >= MIN_GAIN and min(table[s]["gains"]) > 0]
    return {"by_size": table, "adopted": ok[0] if ok else None}


def check_caches(base: Cache, others: list[Cache]) -> None:
    for c in others:
        if c.preprocess.clahe != base.preprocess.clahe:
            raise UserError("the larger caches must share the run's CLAHE setting")
        if c.preprocess.img_size <= base.preprocess.img_size:
            raise UserError("--at caches must be larger than the run's own")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    load_before = os.getloadavg()
    base = open_cache(args.data)
    others = sorted((open_cache(p) for p in args.at), key=lambda c: c.preprocess.img_size)
    check_caches(base, others)
    own, sizes = str(base.preprocess.img_size), [str(c.preprocess.img_size) for c in others]
    runs = {r.name: load_run(r, use_calibration=False) for r in args.run}
    nets = {name: refitted(args, lr, base, others) for name, lr in runs.items()}
    val = {n: score(args, runs[n], base, nets[n], "val") for n in runs}
    decision = decide(val, own, sizes)
    print(f"{'run':<12}" + "".join(f"{s + ' px':>10}" for s in [own, *sizes]))
    for name, v in val.items():
        print(f"{name:<12}" + "".join(f"{v[s]:>10.4f}" for s in [own, *sizes]))
    for s, r in decision["by_size"].items():
        gains = ", ".join(f"{g:+.4f}" for g in r["gains"])
        print(f"{s} px: gains {gains}, mean {r['mean_gain']:+.4f}")
    print(f"decision: {decision['adopted'] + ' px' if decision['adopted'] else 'none adopted'}")
    record = {"machine": machine(load_before), "method": method(__doc__), "decision": decision}
    record.update(runs=[str(r) for r in args.run], val=val, n_train=args.n_train)
    if decision["adopted"]:
        keep = {int(decision["adopted"])}
        record["test"] = {
            n: score(args, runs[n], base, {k: v for k, v in nets[n].items() if k in keep}, "test")
            for n in runs
        }
        for name, t in record["test"].items():
            print(name, "test AUROC", {k: round(v, 4) for k, v in t.items()})
    write_json_atomic(args.out, record)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    try:
        main()
    except UserError as exc:
        raise SystemExit(f"error: {exc}") from None
