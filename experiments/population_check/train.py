"""Train the population check (child vs adult, one logit "adult") by outlier exposure.

Pediatric training films (split ``train``) against adult films of the chosen sources,
each batch half and half (balanced sampling, unweighted BCE), every film augmented by
``pneumoscope.data.marks.augment`` (both classes alike), the package's preprocessing at
the end. The weights of the last step are kept (no selection). Validation scores are
logged every ``--log-every`` steps for the curves only. (``pneumoscope population
retrain`` is this recipe on a dataset made by ``data prepare``.) Writes to
``--work``/runs/NAME: popnet.safetensors, config.json, history.json.

    # main run: adults of both sources, train split
    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python experiments/population_check/train.py --name main
    # leave-one-source-out: every film of the other source
    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python experiments/population_check/train.py \
        --name loso_figure1 --adult-sources ieee8023 --adult-splits train val test
    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python experiments/population_check/train.py \
        --name loso_ieee8023 --adult-sources figure1 --adult-splits train val test
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file
from sklearn.metrics import roc_auc_score

from pneumoscope.data.marks import augment
from pneumoscope.training.population_check import lr_at, rule_threshold

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model import build, n_params, to_input  # noqa: E402


class Films:
    """The assembled data: manifest, raw decoded films, preprocessed squares."""

    def __init__(self, work: Path, size: int):
        self.df = pd.read_csv(work / "manifest.csv", low_memory=False)
        z = np.load(work / "raw.npz")
        self.pixels, self.shapes, self.offsets = z["pixels"], z["shapes"], z["offsets"]
        self.pre = np.load(work / f"pre{size}.npy", mmap_mode="r")

    def raw(self, i: int) -> np.ndarray:
        return self.pixels[self.offsets[i] : self.offsets[i + 1]].reshape(self.shapes[i])

    def rows(self, mask) -> np.ndarray:
        return np.where(np.asarray(mask))[0]


@torch.inference_mode()
def score(model: torch.nn.Module, pre: np.ndarray, idx: np.ndarray, batch: int = 256) -> np.ndarray:
    """Probability "adult" of preprocessed films ``pre[idx]``."""
    model.eval()
    out = []
    for s in range(0, len(idx), batch):
        x = to_input(torch.from_numpy(np.ascontiguousarray(pre[idx[s : s + batch]])))
        out.append(torch.sigmoid(model(x)).numpy())
    return np.concatenate(out) if out else np.zeros(0)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--name", required=True)
    ap.add_argument("--work", type=Path, default=Path("/work/pop_work"))
    ap.add_argument("--adult-sources", nargs="+", default=["ieee8023", "figure1"])
    ap.add_argument("--adult-splits", nargs="+", default=["train"])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=250)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--wd", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log-every", type=int, default=250)
    ap.add_argument("--max-minutes", type=float, default=15.0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    out = args.work / "runs" / args.name
    out.mkdir(parents=True, exist_ok=True)

    f = Films(args.work, args.size)
    df = f.df
    child = f.rows((df["set"] == "ped_train") & (df["split"] == "train"))
    adult = f.rows(
        (df["set"] == "adult")
        & df["source"].isin(args.adult_sources)
        & df["split"].isin(args.adult_splits)
    )
    ped_val = f.rows((df["set"] == "ped_train") & (df["split"] == "val"))
    adult_val = f.rows((df["set"] == "adult") & (df["split"] == "val") & ~df.index.isin(adult))
    print(
        f"[{args.name}] train: {len(child)} child films, {len(adult)} adult films "
        f"({df.loc[adult, 'source'].value_counts().to_dict()}); "
        f"logged: {len(ped_val)} ped val, {len(adult_val)} adult val"
    )

    model = build("popnet")
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.wd}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
    )
    loss_fn = torch.nn.BCEWithLogitsLoss()
    half = args.batch // 2
    y = torch.cat([torch.zeros(half), torch.ones(args.batch - half)])
    history, t0, losses, cut = [], time.time(), [], False
    for step in range(args.steps):
        model.train()
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.steps, args.warmup, args.lr)
        idx = np.concatenate([rng.choice(child, half), rng.choice(adult, args.batch - half)])
        x = np.stack([augment(f.raw(i), rng, args.size) for i in idx])
        logits = model(to_input(torch.from_numpy(x)))
        loss = loss_fn(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        last = step == args.steps - 1
        if (step + 1) % args.log_every == 0 or last:
            sv, sa = score(model, f.pre, ped_val), score(model, f.pre, adult_val)
            t = rule_threshold(sv)
            rec = dict(
                step=step + 1,
                minutes=(time.time() - t0) / 60,
                loss=float(np.mean(losses[-args.log_every :])),
                ped_val_auroc=float(
                    roc_auc_score(np.r_[np.zeros(len(sv)), np.ones(len(sa))], np.r_[sv, sa])
                )
                if len(sa)
                else None,
                threshold=t,
                adult_val_flagged=float((sa > t).mean()) if len(sa) else None,
            )
            history.append(rec)
            print(json.dumps(rec), flush=True)
        if (time.time() - t0) / 60 > args.max_minutes and not last:
            cut = True
            print(f"[{args.name}] cut by the {args.max_minutes} min cap at step {step + 1}")
            break
    model.eval()
    save_file(model.state_dict(), str(out / "popnet.safetensors"))
    cfg = dict(
        vars(args),
        work=str(args.work),
        n_child=len(child),
        n_adult=len(adult),
        params=n_params(model),
        minutes=(time.time() - t0) / 60,
        cut_by_cap=cut,
        steps_done=len(losses),
        preprocess=dict(img_size=args.size, clahe=True, clahe_clip_limit=2.0, clahe_tile_grid=8),
    )
    (out / "config.json").write_text(json.dumps(cfg, indent=1))
    (out / "history.json").write_text(json.dumps(history, indent=1))
    print(
        f"[{args.name}] done in {cfg['minutes']:.1f} min; weights {out / 'popnet.safetensors'} "
        f"({(out / 'popnet.safetensors').stat().st_size / 1e6:.2f} MB)"
    )


if __name__ == "__main__":
    main()
