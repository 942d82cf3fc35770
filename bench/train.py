"""Benchmark training: the input pipeline (the pneumoscope cache vs decoding the JPEGs every
epoch) and the numeric precision of the training step (float32 vs bf16 mixed precision).

    python bench/train.py --data work/pediatric128 --config fast-cpu --threads 2 \\
        --steps 40 --out bench/results/train.json
    python bench/train.py --data work/pediatric160 --sections precisions --sizes 160,224 \\
        --precisions fp32,bf16 --steps 15 --out bench/results/train_precision.json

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
The input pipelines train in the precision ``pneumoscope train --precision`` (the config's,
default auto) resolves to on this machine. The precision section (--sections precisions)
trains the cache pipeline (the config's model, layout and batch size) in each of
--precisions (fp32 = Lightning's 32-true, bf16 = bf16-mixed: autocast, float32 weights) at
each of --sizes (a batch is resized bilinearly from the cache's size on arrival when the
size differs; the resize is timed as input), round-robin over sizes and precisions in each
repeat; x fp32 = images/s ratio to fp32 at the same size in the same run (x_fp32_median:
the ratio of median step times, less moved by other jobs' bursts). Peak memory:
the process's resident set size sampled every 5 ms while a run trains (peak_rss_mb),
and its rise over the RSS when that run started (peak_rss_rise_mb; freed memory is handed
back to the OS with malloc_trim first, where glibc offers it).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import math
import os
import platform
import sys
import threading
import time
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
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
from pneumoscope.model.hardware import cpu_signals
from pneumoscope.training.config import TrainConfig, resolve_config
from pneumoscope.training.module import Classifier, quiet_warnings
from pneumoscope.training.precision import cpu_bf16_unit, machine_precision
from pneumoscope.training.train import (
    _quiet_lightning,
    check_input,
    classifier_kwargs,
    make_train_loader,
    normalization,
)

CACHE = "pneumoscope cache"
CACHE_NCHW = "cache, NCHW layout"
PRECISIONS = {"fp32": "32-true", "bf16": "bf16-mixed"}
SECTIONS = ("pipelines", "precisions")


def naive_name(workers: int) -> str:
    return f"naive JPEG, {workers} worker{'s' if workers != 1 else ''}"


def precision_name(precision: str, size: int) -> str:
    return f"{precision}, {size} px"


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
    p.add_argument(
        "--sections",
        default="pipelines,precisions",
        help="what to run: pipelines (input pipelines), precisions (fp32 vs bf16 steps)",
    )
    p.add_argument("--precisions", default="fp32,bf16", help="precisions of the precision section")
    p.add_argument(
        "--sizes", default="", help="image sizes of the precision section (default: the cache's)"
    )
    p.add_argument("--out", type=Path, default=Path("bench/results/train.json"))
    args = p.parse_args(argv)
    args.naive_workers = [int(w) for w in str(args.naive_workers).split(",") if w.strip()]
    if not args.naive_workers or min(args.naive_workers) < 0:
        p.error("--naive-workers needs one or more counts >= 0, e.g. 0,2")
    args.sections = _names(args.sections)
    args.precisions = _names(args.precisions)
    if not args.sections or set(args.sections) - set(SECTIONS):
        p.error(f"--sections takes one or more of {', '.join(SECTIONS)}")
    if (
        not args.precisions
        or set(args.precisions) - set(PRECISIONS)
        or "fp32" not in args.precisions
    ):
        p.error(f"--precisions takes fp32 and others of {', '.join(PRECISIONS)}")
    try:
        args.sizes = [int(v) for v in _names(args.sizes)]
    except ValueError:
        p.error("--sizes takes image sizes in pixels, e.g. 160,224")
    if args.sizes and min(args.sizes) < 16:
        p.error("--sizes must be at least 16 px")
    if min(args.steps, args.repeats, args.threads, args.batch_size or 1) < 1 or args.warmup < 1:
        p.error("--batch-size, --steps, --warmup, --repeats and --threads must be >= 1")
    return args


def _names(text: str) -> list[str]:
    return [v.strip() for v in str(text).split(",") if v.strip()]


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


class ResizedClassifier(TimedClassifier):
    """The same module for the precision section at another image size: each uint8 batch
    (B, 1, S, S) is resized bilinearly to ``size`` px before the module's own hook."""

    size: int

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        t0 = time.perf_counter()
        x, y = batch
        if x.shape[-1] != self.size:
            big = F.interpolate(x.float(), size=(self.size, self.size), mode="bilinear")
            x = big.round_().clamp_(0, 255).to(torch.uint8)
        resize_s = time.perf_counter() - t0
        out = super().on_after_batch_transfer((x, y), dataloader_idx)
        self.hook_log[-1] += resize_s  # input time: the resize, then the module's hook
        return out


class PeakRSS:
    """The process's peak resident set size while the ``with`` block runs, sampled every
    5 ms by a thread (CPU memory: torch has no allocator statistics there); on a CUDA
    device, torch's own peak of allocated memory as well."""

    PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def __enter__(self) -> PeakRSS:
        _trim_heap()
        self.start = self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss_bytes())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())

    def report(self) -> dict:
        mb = 1024 * 1024
        return {"peak_rss_mb": self.peak / mb, "peak_rss_rise_mb": (self.peak - self.start) / mb}


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * PeakRSS.PAGE
    except OSError:  # no /proc: the lifetime peak the OS keeps
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _trim_heap() -> None:
    """Hand memory freed by earlier runs back to the OS (glibc), so RSS rises are fair."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


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
        # the input pipelines train as `pneumoscope train` would here (--precision auto)
        self.choice = machine_precision(str(cfg.precision), "cpu")
        self.train = self.cache.split("train")
        self.rows = self.train["index"].to_numpy()
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
        self.naive_dataset = None
        if "pipelines" in args.sections:
            self.naive_dataset = self._naive_dataset()

    def _naive_dataset(self) -> ManifestImageFolder:
        paths = self.train["path"].tolist()
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise UserError(
                f"{len(missing)} of the {len(paths)} source images of {self.args.data}'s "
                f"training split are missing (first: {missing[0]}); the naive pipeline "
                "decodes them (--sections precisions runs without them)"
            )
        return ManifestImageFolder(
            paths,
            self.train["label"].astype(int).tolist(),
            naive_transform(self.cache.preprocess, self.aug, self.mean, self.std),
        )

    def loader_and_module(self, pipeline: str, workers: int, size: int | None = None):
        cfg = self.cfg
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        if size is not None:  # the precision section: the cache pipeline at this size
            module = ResizedClassifier(**{**self.module_kwargs, "img_size": size})
            module.size = size
            return make_train_loader(self.cache, cfg), module
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

    def run(
        self, pipeline: str, workers: int, precision: str | None = None, size: int | None = None
    ) -> dict:
        """Train warm-up + timed steps in ``precision`` (Lightning's name; default: what
        --precision resolves to here); per timed step: step, wait and hook seconds; and
        the run's peak memory."""
        args = self.args
        loader, module = self.loader_and_module(pipeline, workers, size)
        wait: list[float] = []
        module.hook_log = []
        timed(loader, wait)
        steps = StepTimes()
        trainer = L.Trainer(
            accelerator="cpu",
            devices=1,
            precision=precision or self.choice.lightning,
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
        with warnings.catch_warnings(), PeakRSS() as mem:
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
            "memory": mem.report(),
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


def precision_table(results: dict, args: argparse.Namespace, cfg: TrainConfig) -> str:
    head = (
        f"{'precision, size':<18}{'img/s':>8}{'x fp32':>8}{'x med':>7}{'step ms':>9}"
        f"{'input ms':>10}{'peak MB':>9}{'rise MB':>9}{'epoch s':>9}"
    )
    lines = [
        f"training step: {cfg.model}, batch {cfg.batch_size}, "
        f"{'channels-last' if cfg.channels_last else 'NCHW'}, {args.threads} threads; "
        f"{args.repeats}x{args.steps} timed steps each, interleaved",
        "x fp32 = images/s ratio to fp32 at the same size, same run; x med = the same from "
        "median step times; peak = process RSS",
        head,
        "-" * len(head),
    ]
    for name, r in results.items():
        lines.append(
            f"{name:<18}{r['images_per_s']:>8.1f}{r['x_fp32']:>8.2f}{r['x_fp32_median']:>7.2f}"
            f"{r['step_ms_mean']:>9.0f}{r['input_ms_mean']:>10.1f}{r['peak_rss_mb']:>9.0f}{r['peak_rss_rise_mb']:>9.0f}"
            f"{r['epoch_s_estimate']:>9.0f}"
        )
    return "\n".join(lines)


def _empty_raw() -> dict:
    return {"step_s": [], "compute_s": [], "wait_s": [], "hook_s": [], "memory": []}


def _add(into: dict, run: dict) -> None:
    for key, values in run.items():
        into[key] += [values] if key == "memory" else values


def _memory(reports: list[dict]) -> dict:
    return {k: max(r[k] for r in reports) for k in reports[0]} if reports else {}


def run_pipelines(bench: Bench, epoch_steps: int) -> dict:
    """The input pipelines, round-robin; results keyed by pipeline name."""
    args, cfg = bench.args, bench.cfg
    pipelines = [(CACHE, 0)] + [(naive_name(w), w) for w in args.naive_workers]
    if cfg.channels_last:  # what the channels-last layout alone is worth
        pipelines.insert(1, (CACHE_NCHW, 0))
    raw = {name: _empty_raw() for name, _ in pipelines}
    for rep in range(args.repeats):
        for name, workers in pipelines:
            print(f"round {rep + 1}/{args.repeats}: {name} ...", flush=True)
            _add(raw[name], bench.run(name, workers))
    results = {name: summarize(r, cfg.batch_size, epoch_steps) for name, r in raw.items()}
    base = results[naive_name(args.naive_workers[0])]
    for name, workers in pipelines:
        r = results[name]
        r["workers"] = workers
        r["speedup_vs_naive"] = r["images_per_s"] / base["images_per_s"]
        r.update(_memory(raw[name]["memory"]))
        r["raw_ms"] = _raw_ms(raw[name])
    return results


def run_precisions(bench: Bench, epoch_steps: int) -> dict:
    """The cache pipeline in each precision at each size, interleaved: for every repeat,
    every size, every precision."""
    args, cfg = bench.args, bench.cfg
    sizes = args.sizes or [bench.cache.preprocess.img_size]
    runs = [(precision_name(p, s), p, s) for s in sizes for p in args.precisions]
    raw = {name: _empty_raw() for name, _, _ in runs}
    for rep in range(args.repeats):
        for name, prec, size in runs:
            print(f"round {rep + 1}/{args.repeats}: {name} ...", flush=True)
            _add(raw[name], bench.run(CACHE, 0, PRECISIONS[prec], size))
    results = {}
    for name, prec, size in runs:
        r = summarize(raw[name], cfg.batch_size, epoch_steps)
        r.update(precision=prec, lightning_precision=PRECISIONS[prec], img_size=size)
        r.update(_memory(raw[name]["memory"]))
        r["raw_ms"] = _raw_ms(raw[name])
        results[name] = r
    for name, _, size in runs:
        base = results[precision_name("fp32", size)]
        r = results[name]
        r["x_fp32"] = r["images_per_s"] / base["images_per_s"]
        # median step times: robust to other jobs' bursts on a shared machine
        r["x_fp32_median"] = base["step_ms_median"] / r["step_ms_median"]
    return results


def _raw_ms(raw: dict) -> dict:
    return {k: [round(1000 * v, 3) for v in vs] for k, vs in raw.items() if k != "memory"}


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
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    results = run_pipelines(bench, epoch_steps) if "pipelines" in args.sections else {}
    precisions = run_precisions(bench, epoch_steps) if "precisions" in args.sections else {}
    wall = time.perf_counter() - t0
    img_size = bench.cache.preprocess.img_size
    if results:
        print(table(results, args, cfg, epoch_steps, img_size))
    if precisions:
        print(precision_table(precisions, args, cfg))
    doc = report(args, bench, results, epoch_steps, load_before, wall)
    doc["precisions"] = precisions
    write_json_atomic(args.out, doc)
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
            "precision": bench.choice.lightning,  # the input pipelines'
            "precision_asked": str(cfg.precision),
            "precision_reason": bench.choice.reason,
            "sections": args.sections,
            "precisions": args.precisions,
            "sizes": args.sizes or [bench.cache.preprocess.img_size],
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
            "naive_transform": None
            if bench.naive_dataset is None
            else [repr(t) for t in bench.naive_dataset.transform.transforms],
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
            "cpu_model": _cpu_model(),
            "cpu_bf16_signals": cpu_signals(),
            "cpu_bf16_unit": cpu_bf16_unit(cpu_signals()),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
            "wall_s": wall,
        },
        "method": __doc__.split("\n\n", 2)[2].strip(),
        "naive_pixels_vs_cache": None
        if bench.naive_dataset is None
        else pixel_check(bench.cache, bench.rows),
        "pipelines": results,
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
