"""Benchmark the training input pipeline: the pneumoscope cache vs decoding the JPEGs every epoch.

    python bench/train.py --data work/pediatric128 --config fast-cpu --threads 2 \\
        --steps 40 --out bench/results/train.json

Every pipeline trains the same model (architecture, initial weights, loss, optimiser and
learning-rate schedule of the training config --config, default the fast-cpu preset, with
pneumoscope's Classifier LightningModule in a Lightning Trainer set up as ``pneumoscope
train`` sets it up on a CPU) on the same images (the cache's training split), at the same
batch size and with torch.set_num_threads(--threads). Only the input pipeline differs:
  * pneumoscope cache: ``data.make_loader`` over the memory-mapped uint8 cache, then the
    module's ``on_after_batch_transfer`` (``augment_batch`` + ``normalize_float``), i.e.
    the code ``pneumoscope train`` runs;
  * cache, NCHW layout (when the config trains channels-last, as the presets do): the
    same, with the network and its input in the default NCHW memory layout, to show what
    the layout alone is worth;
  * naive JPEG (ImageFolder-style): a torchvision dataset over the same JPEG paths (from
    the cache manifest) that decodes each file with PIL at every access, converts it to
    grayscale, resizes and applies CLAHE with the cache's own ``preprocess_gray`` (so the
    pixels match the cache's), then per-image torchvision transforms of the same kinds and
    ranges as the config's augmentation (RandomResizedCrop, x/y scale, RandomAffine,
    flips, gamma, ColorJitter), ToTensor and Normalize, in a torch DataLoader with
    --naive-workers worker processes (0 = the baseline: no threads beyond --threads).
Each pipeline runs --warmup steps that are not timed, then --steps timed steps; the
pipelines are run round-robin --repeats times, so a change in the machine's load hits
them alike, and their timed steps are pooled. Per timed step, from Lightning callbacks:
  * step time: from the end of the previous step to the end of this one (everything);
  * input time: the time spent waiting for the DataLoader's next batch plus the module's
    batch hook (augmentation + normalisation); its share of the step time is reported;
  * images/s = batch size x timed steps / their total time; the epoch time is the mean
    step time x the number of steps of one epoch of the training split (drop_last),
    without validation.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torchvision
from lightning.pytorch.callbacks import Callback
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms as T
from torchvision.datasets import VisionDataset
from torchvision.transforms import functional as TF

from pneumoscope.core.errors import UserError
from pneumoscope.core.io import write_json_atomic
from pneumoscope.data.augment import AugmentConfig
from pneumoscope.data.cache import Cache, open_cache
from pneumoscope.data.preprocess import PreprocessConfig, preprocess_gray
from pneumoscope.training.config import TrainConfig, resolve_config
from pneumoscope.training.module import Classifier, quiet_warnings
from pneumoscope.training.train import (
    _quiet_lightning,
    check_input,
    classifier_kwargs,
    make_train_loader,
    normalization,
)

CACHE = "pneumoscope cache"
CACHE_NCHW = "cache, NCHW layout"


def naive_name(workers: int) -> str:
    return f"naive JPEG, {workers} worker{'s' if workers != 1 else ''}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, type=Path, help="prepared pneumoscope cache")
    p.add_argument(
        "--config",
        default="fast-cpu",
        help="training config: preset name, YAML file or run folder ('none': the defaults)",
    )
    p.add_argument("--model", help="overrides the config's model")
    p.add_argument("--batch-size", type=int, help="overrides the config's batch size")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads for all")
    p.add_argument("--steps", type=int, default=40, help="timed training steps per repeat")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first, per repeat")
    p.add_argument("--repeats", type=int, default=2, help="round-robin rounds over pipelines")
    p.add_argument(
        "--naive-workers",
        default="0,2",
        help="DataLoader workers of the naive pipelines; the first is the baseline",
    )
    p.add_argument("--out", type=Path, default=Path("bench/results/train.json"))
    args = p.parse_args(argv)
    args.naive_workers = [int(w) for w in str(args.naive_workers).split(",") if w.strip()]
    if not args.naive_workers or min(args.naive_workers) < 0:
        p.error("--naive-workers needs one or more counts >= 0, e.g. 0,2")
    if min(args.steps, args.repeats, args.threads, args.batch_size or 1) < 1 or args.warmup < 1:
        p.error("--batch-size, --steps, --warmup, --repeats and --threads must be >= 1")
    return args


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The config ``pneumoscope train --config CONFIG`` would run, with the flags given."""
    over: dict = {"data": str(args.data), "out": "unused", "threads": args.threads}
    if args.model:
        over["model"] = args.model
    if args.batch_size:
        over["batch_size"] = args.batch_size
    cfg = resolve_config(None if args.config == "none" else args.config, over)
    cfg.validate()
    return cfg


# ---------------------------------------------------------------- the naive pipeline


class ManifestImageFolder(VisionDataset):
    """torchvision's ImageFolder, with its (path, class) samples taken from the cache
    manifest's training split instead of a folder walk, so both pipelines see the same
    images (validation was carved out of the source's train folders). Like ImageFolder,
    it decodes the file with PIL at every access."""

    def __init__(self, paths: list[str], labels: list[int], transform):
        super().__init__(root=os.path.commonpath(paths), transform=transform)
        self.samples = list(zip(paths, labels, strict=True))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        path, label = self.samples[i]
        with open(path, "rb") as fh:
            img = Image.open(fh).convert("L")
        return self.transform(img), torch.tensor(float(label))


class CachePreprocess:
    """PIL grayscale -> resize + CLAHE with the cache's own function -> PIL grayscale."""

    def __init__(self, cfg: PreprocessConfig):
        self.cfg = cfg

    def __repr__(self) -> str:
        return f"CachePreprocess({self.cfg})"

    def __call__(self, img: Image.Image) -> Image.Image:
        return Image.fromarray(preprocess_gray(np.asarray(img), self.cfg))


class RandomXYScale:
    """Independent x and y scale in [1 - a, 1 + a], back to the same size (crop or pad)."""

    def __init__(self, a: float):
        self.a = a

    def __repr__(self) -> str:
        return f"RandomXYScale(a={self.a})"

    def __call__(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        sx, sy = (1.0 + self.a * (2.0 * torch.rand(2) - 1.0)).tolist()
        img = img.resize((max(1, round(w * sx)), max(1, round(h * sy))), Image.BILINEAR)
        return TF.center_crop(img, [h, w])


class RandomGamma:
    """x ** g with g log-uniform in [1 - gamma, 1 / (1 - gamma)], as ``augment_batch``."""

    def __init__(self, gamma: float):
        self.gamma = gamma
        self.lg = -math.log(1.0 - gamma)

    def __repr__(self) -> str:
        return f"RandomGamma(gamma={self.gamma})"

    def __call__(self, img: Image.Image) -> Image.Image:
        g = math.exp(float((2.0 * torch.rand(1) - 1.0) * self.lg))
        return TF.adjust_gamma(img, g)


class Channels:
    def __init__(self, n: int):
        self.n = n

    def __repr__(self) -> str:
        return f"Channels(n={self.n})"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.shape[0] == self.n else x.expand(self.n, -1, -1)


def naive_transform(
    pp: PreprocessConfig, aug: AugmentConfig, mean: list[float], std: list[float]
) -> T.Compose:
    """Per-image torchvision transforms of the kinds and ranges of ``augment_batch``'s.

    Differences that do not change the cost: ColorJitter's brightness is multiplicative
    (``augment_batch``'s is additive), and PIL fills outside the image with black only
    (no 'border' fill)."""
    s = pp.img_size
    bilinear = T.InterpolationMode.BILINEAR
    steps: list = [CachePreprocess(pp)]
    if aug.crop > 0:
        steps.append(
            T.RandomResizedCrop(
                s, scale=(1.0 - aug.crop, 1.0), ratio=(3 / 4, 4 / 3), interpolation=bilinear
            )
        )
    if aug.aspect > 0:
        steps.append(RandomXYScale(aug.aspect))
    steps.append(
        T.RandomAffine(
            degrees=aug.rotation,
            translate=(aug.shift, aug.shift),
            scale=(1.0 - aug.zoom, 1.0 + aug.zoom),
            interpolation=bilinear,
        )
    )
    if aug.hflip > 0:
        steps.append(T.RandomHorizontalFlip(aug.hflip))
    if aug.vflip > 0:
        steps.append(T.RandomVerticalFlip(aug.vflip))
    if aug.gamma > 0:
        steps.append(RandomGamma(aug.gamma))
    if aug.brightness > 0 or aug.contrast > 0:
        steps.append(T.ColorJitter(brightness=aug.brightness, contrast=aug.contrast))
    steps += [T.ToTensor(), Channels(len(mean)), T.Normalize(mean, std)]
    return T.Compose(steps)


def pixel_check(cache: Cache, rows: np.ndarray, n: int = 16) -> dict:
    """How far PIL decoding + ``preprocess_gray`` lands from the cache's pixels."""
    diffs = []
    for r in rows[:n]:
        with open(cache.manifest["path"].iloc[r], "rb") as fh:
            gray = np.asarray(Image.open(fh).convert("L"))
        mine = preprocess_gray(gray, cache.preprocess).astype(np.int16)
        diffs.append(np.abs(mine - cache.images[r].astype(np.int16)))
    d = np.stack(diffs)
    return {"n_images": len(diffs), "mean_abs_diff": float(d.mean()), "max_abs_diff": int(d.max())}


# ---------------------------------------------------------------- timing hooks


class TimedLoader(DataLoader):
    """A DataLoader that records how long each ``next()`` kept the training loop waiting.

    Set as the ``__class__`` of an existing loader, so that loader itself is what runs."""

    wait_log: list[float]

    def __iter__(self):
        return _TimedIterator(super().__iter__(), self.wait_log)


class _TimedIterator:
    def __init__(self, it, log: list[float]):
        self.it, self.log = it, log

    def __iter__(self):
        return self

    def __next__(self):
        t0 = time.perf_counter()
        batch = next(self.it)
        self.log.append(time.perf_counter() - t0)
        return batch

    def __len__(self) -> int:
        return len(self.it)

    def __getattr__(self, name: str):
        return getattr(self.it, name)


def timed(loader: DataLoader, log: list[float]) -> DataLoader:
    loader.__class__ = type("Timed" + type(loader).__name__, (TimedLoader, type(loader)), {})
    loader.wait_log = log
    return loader


class TimedClassifier(Classifier):
    """pneumoscope's training module, unchanged, timing its batch hook (augmentation and
    normalisation, which run in the training process between two steps)."""

    hook_log: list[float]

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        t0 = time.perf_counter()
        out = super().on_after_batch_transfer(batch, dataloader_idx)
        self.hook_log.append(time.perf_counter() - t0)
        return out


class NaiveClassifier(TimedClassifier):
    """The same module for the naive pipeline: its batches arrive augmented and normalised."""

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        t0 = time.perf_counter()
        self.hook_log.append(time.perf_counter() - t0)
        return batch


class StepTimes(Callback):
    def __init__(self):
        self.starts: list[float] = []
        self.ends: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.starts.append(time.perf_counter())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.ends.append(time.perf_counter())


# ---------------------------------------------------------------- running a pipeline


class Bench:
    """What every pipeline shares: the config, the cache's training split, the module."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.cfg = cfg = train_config(args)
        self.cache = open_cache(args.data)
        check_input(cfg, self.cache)
        self.train = self.cache.split("train")
        self.rows = self.train["index"].to_numpy()
        paths = self.train["path"].tolist()
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise UserError(
                f"{len(missing)} of the {len(paths)} source images of {args.data}'s training "
                f"split are missing (first: {missing[0]}); the naive pipeline decodes them"
            )
        y = self.train["label"].to_numpy()
        n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
        self.mean, self.std = normalization(cfg, self.cache, self.rows)
        self.aug = AugmentConfig.from_dict(cfg.augment)
        self.module_kwargs = classifier_kwargs(
            cfg,
            self.cache.preprocess.img_size,
            self.mean,
            self.std,
            n_neg / n_pos if cfg.imbalance == "pos-weight" and n_pos else None,
        )
        self.naive_dataset = ManifestImageFolder(
            paths,
            self.train["label"].astype(int).tolist(),
            naive_transform(self.cache.preprocess, self.aug, self.mean, self.std),
        )

    def loader_and_module(self, pipeline: str, workers: int):
        cfg = self.cfg
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        if pipeline in (CACHE, CACHE_NCHW):
            loader = make_train_loader(self.cache, cfg)
            kwargs = dict(self.module_kwargs)
            if pipeline == CACHE_NCHW:  # the same pipeline, the network in NCHW layout
                kwargs["channels_last"] = False
            module = TimedClassifier(**kwargs)
        else:
            loader = DataLoader(
                self.naive_dataset,
                batch_size=cfg.batch_size,
                shuffle=True,
                drop_last=True,
                num_workers=workers,
                generator=torch.Generator().manual_seed(cfg.seed),
            )
            module = NaiveClassifier(**self.module_kwargs)
        return loader, module

    def run(self, pipeline: str, workers: int) -> dict:
        """Train warm-up + timed steps; per timed step: step, wait and hook seconds."""
        args = self.args
        loader, module = self.loader_and_module(pipeline, workers)
        wait: list[float] = []
        module.hook_log = []
        timed(loader, wait)
        steps = StepTimes()
        trainer = L.Trainer(
            accelerator="cpu",
            devices=1,
            precision=self.cfg.precision,
            max_steps=args.warmup + args.steps,
            limit_val_batches=0,
            callbacks=[steps],
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            use_distributed_sampler=False,
            deterministic=True,
            log_every_n_steps=1,
        )
        with warnings.catch_warnings():
            quiet_warnings()
            warnings.filterwarnings("ignore", message=".*val_dataloader.*")
            trainer.fit(module, loader)
        n = args.warmup + args.steps
        if len(steps.ends) != n or len(wait) < n or len(module.hook_log) != n:
            raise RuntimeError(f"{pipeline}: expected {n} steps, timed {len(steps.ends)}")
        timed_steps = range(args.warmup, n)
        return {
            "step_s": [steps.ends[i] - steps.ends[i - 1] for i in timed_steps],
            "compute_s": [steps.ends[i] - steps.starts[i] for i in timed_steps],
            "wait_s": [wait[i] for i in timed_steps],
            "hook_s": [module.hook_log[i] for i in timed_steps],
        }


def summarize(raw: dict[str, list[float]], batch_size: int, epoch_steps: int) -> dict:
    step, wait, hook = (float(np.sum(raw[k])) for k in ("step_s", "wait_s", "hook_s"))
    n = len(raw["step_s"])
    return {
        "timed_steps": n,
        "images_per_s": batch_size * n / step,
        "step_ms_mean": 1000 * step / n,
        "step_ms_median": 1000 * float(np.median(raw["step_s"])),
        "model_ms_mean": 1000 * float(np.mean(raw["compute_s"])),
        "loader_wait_ms_mean": 1000 * wait / n,
        "augment_normalize_ms_mean": 1000 * hook / n,
        "input_ms_mean": 1000 * (wait + hook) / n,
        "input_share_pct": 100 * (wait + hook) / step,
        "other_ms_mean": 1000 * (step - wait - hook - float(np.sum(raw["compute_s"]))) / n,
        "epoch_s_estimate": epoch_steps * step / n,
    }


# ---------------------------------------------------------------- report


def table(
    results: dict, args: argparse.Namespace, cfg: TrainConfig, epoch_steps: int, img_size: int
) -> str:
    base = naive_name(args.naive_workers[0])
    head = (
        f"{'pipeline':<22}{'img/s':>8}{'x naive':>9}{'step ms':>9}{'input ms':>10}"
        f"{'input %':>9}{'epoch s':>9}"
    )
    lines = [
        f"{cfg.model} at {img_size} px, batch {cfg.batch_size}, {args.threads} threads, "
        f"config {args.config}; {args.repeats}x{args.steps} timed steps per pipeline",
        f"x naive = images/s ratio to '{base}'; input = waiting for the batch + augmentation"
        f" + normalisation; epoch = {epoch_steps} steps, without validation",
        head,
        "-" * len(head),
    ]
    for name, r in results.items():
        lines.append(
            f"{name:<22}{r['images_per_s']:>8.1f}{r['speedup_vs_naive']:>9.2f}"
            f"{r['step_ms_mean']:>9.0f}{r['input_ms_mean']:>10.1f}"
            f"{r['input_share_pct']:>9.1f}{r['epoch_s_estimate']:>9.0f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        bench = Bench(args)
    except UserError as exc:
        sys.exit(f"error: {exc}")
    cfg = bench.cfg
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)  # as pneumoscope train does
    _quiet_lightning()
    epoch_steps = len(bench.rows) // cfg.batch_size
    pipelines = [(CACHE, 0)] + [(naive_name(w), w) for w in args.naive_workers]
    if cfg.channels_last:  # what the channels-last layout alone is worth
        pipelines.insert(1, (CACHE_NCHW, 0))
    raw: dict[str, dict[str, list[float]]] = {
        name: {"step_s": [], "compute_s": [], "wait_s": [], "hook_s": []} for name, _ in pipelines
    }
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    for rep in range(args.repeats):
        for name, workers in pipelines:
            print(f"round {rep + 1}/{args.repeats}: {name} ...", flush=True)
            for key, values in bench.run(name, workers).items():
                raw[name][key] += values
    wall = time.perf_counter() - t0
    results = {name: summarize(r, cfg.batch_size, epoch_steps) for name, r in raw.items()}
    base = results[naive_name(args.naive_workers[0])]
    for name, workers in pipelines:
        r = results[name]
        r["workers"] = workers
        r["speedup_vs_naive"] = r["images_per_s"] / base["images_per_s"]
        r["raw_ms"] = {k: [round(1000 * v, 3) for v in vs] for k, vs in raw[name].items()}
    img_size = bench.cache.preprocess.img_size
    print(table(results, args, cfg, epoch_steps, img_size))
    write_json_atomic(args.out, report(args, bench, results, epoch_steps, load_before, wall))
    print(f"wrote {args.out}")


def report(args, bench: Bench, results: dict, epoch_steps: int, load_before, wall) -> dict:
    import lightning
    import timm

    cfg = bench.cfg
    return {
        "config": {
            "data": str(args.data),
            "train_config": args.config,
            "model": cfg.model,
            "img_size": bench.cache.preprocess.img_size,
            "in_chans": cfg.in_chans,
            "batch_size": cfg.batch_size,
            "optimizer": cfg.optimizer,
            "precision": str(cfg.precision),
            "channels_last": cfg.channels_last,
            "threads": args.threads,
            "steps": args.steps,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "naive_workers": args.naive_workers,
            "baseline": naive_name(args.naive_workers[0]),
            "seed": cfg.seed,
            "train_images": int(len(bench.rows)),
            "epoch_steps": epoch_steps,
            "preprocess": bench.cache.preprocess.to_dict(),
            "augment": bench.aug.to_dict(),
            "naive_transform": [repr(t) for t in bench.naive_dataset.transform.transforms],
        },
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "lightning": lightning.__version__,
            "timm": timm.__version__,
            "torch_threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
            "wall_s": wall,
        },
        "method": __doc__.split("\n\n", 2)[2].strip(),
        "naive_pixels_vs_cache": pixel_check(bench.cache, bench.rows),
        "pipelines": results,
    }


if __name__ == "__main__":
    main()
