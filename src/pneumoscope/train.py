"""Train a classifier on a prepared cache and write a self-contained run directory.

RUN/
    model.safetensors  best weights (highest validation AUROC), written when they improve
    model.json         model card: architecture, preprocessing, normalisation, threshold,
                       training data, validation metrics
    history.csv        per epoch: train/val loss, accuracy at 0.5, AUROC
    curves.png         the same, plotted
    config.yaml        the resolved training config; rerunning it reproduces the run
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
import yaml
from lightning.pytorch.callbacks import Callback, EarlyStopping

from . import CLASS_NAMES, __version__
from .augment import AugmentConfig
from .cache import Cache, counts_table, open_cache
from .data import make_loader
from .errors import UserError
from .export import INT8_FILE, ONNX_FILE, RECORD_FILE
from .io_utils import atomic_write, write_json_atomic, write_text_atomic
from .lit_module import Classifier
from .metrics import binary_metrics, youden_threshold
from .ood import OOD_CARD, OOD_STATS
from .plots import training_curves
from .runs import CALIBRATION, CARD, WEIGHTS, save_weights

IMBALANCE_CHOICES = ("none", "pos-weight", "sampler")


@dataclass
class TrainConfig:
    data: str
    out: str
    model: str = "resnet18"
    epochs: int = 25
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    imbalance: str = "pos-weight"
    patience: int = 6
    max_minutes: float | None = None
    seed: int = 0
    threads: int | None = None
    augment: dict = field(default_factory=lambda: AugmentConfig().to_dict())

    def validate(self) -> None:
        if self.imbalance not in IMBALANCE_CHOICES:
            raise UserError(
                f"--imbalance must be one of {', '.join(IMBALANCE_CHOICES)}, got '{self.imbalance}'"
            )
        if self.epochs < 1 or self.batch_size < 1:
            raise UserError("--epochs and --batch-size must be at least 1")


def normalization_stats(cache: Cache, rows: np.ndarray, seed: int) -> tuple[float, float]:
    """Pixel mean and std of (a sample of) the training images, in [0, 1] units."""
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(rows, size=min(len(rows), 1000), replace=False))
    x = cache.images[pick].astype(np.float32) / 255.0
    return float(x.mean()), float(max(x.std(), 1e-3))


class RunRecorder(Callback):
    """After each epoch's validation: append to history.csv and, when validation AUROC
    improves, save the weights atomically, so a killed run still leaves its best model."""

    def __init__(self, out: Path):
        self.out = out
        self.rows: list[dict] = []
        self.best_auroc = -np.inf
        self.best: dict = {}
        self.best_probs: np.ndarray | None = None
        self.best_labels: np.ndarray | None = None
        self.t0 = time.perf_counter()

    def on_validation_end(self, trainer, pl_module: Classifier) -> None:
        if trainer.sanity_checking or not pl_module.last_val:
            return
        epoch = trainer.current_epoch
        self.rows.append(
            {
                "epoch": epoch,
                **pl_module.last_train,
                **pl_module.last_val,
                "lr": trainer.optimizers[0].param_groups[0]["lr"],
                "elapsed_s": round(time.perf_counter() - self.t0, 1),
            }
        )
        df = pd.DataFrame(self.rows)
        atomic_write(self.out / "history.csv", lambda tmp: df.to_csv(tmp, index=False))
        auroc = pl_module.last_val["val_auroc"]
        if np.isfinite(auroc) and auroc > self.best_auroc:
            self.best_auroc = auroc
            self.best = {"epoch": epoch, **pl_module.last_val}
            self.best_probs = pl_module.last_val_probs
            self.best_labels = pl_module.last_val_labels
            save_weights(pl_module.net, self.out / WEIGHTS)


def train(cfg: TrainConfig, progress: bool = True) -> dict:
    """Train, select the best epoch on validation AUROC, pick the threshold on validation."""
    cfg.validate()
    cache = open_cache(cfg.data)
    out = Path(cfg.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    # model.json is written last and marks a finished run: a reused folder loses its old
    # card first, so a retraining that fails is never mistaken for a finished run.
    (out / CARD).unlink(missing_ok=True)
    for stale in (CALIBRATION, OOD_CARD, OOD_STATS, ONNX_FILE, INT8_FILE, RECORD_FILE):
        (out / stale).unlink(missing_ok=True)
    pp = cache.preprocess
    train_rows = cache.split("train")
    val_rows = cache.split("val")
    y_train = train_rows["label"].to_numpy()
    n_pos, n_neg = int(y_train.sum()), int(len(y_train) - y_train.sum())
    if n_pos == 0 or n_neg == 0:
        raise UserError(
            f"the training split of {cfg.data} holds one class only "
            f"({n_neg} NORMAL, {n_pos} PNEUMONIA); both are needed"
        )
    if val_rows["label"].nunique() < 2:
        raise UserError(
            f"the validation split of {cfg.data} holds one class only; "
            "prepare the data again with a larger --val-fraction"
        )

    threads = cfg.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    torch.use_deterministic_algorithms(True, warn_only=True)
    _quiet_lightning()

    mean, std = normalization_stats(cache, train_rows["index"].to_numpy(), cfg.seed)
    # One imbalance method only. pos_weight = N_neg / N_pos makes the two classes weigh the
    # same in the loss (below 1 here, since pneumonia is the majority); the sampler instead
    # draws both classes equally often. Stacking both would compensate twice.
    pos_weight = n_neg / n_pos if cfg.imbalance == "pos-weight" else None
    module = Classifier(
        architecture=cfg.model,
        in_chans=1,
        img_size=pp.img_size,
        mean=[mean],
        std=[std],
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        warmup_epochs=cfg.warmup_epochs,
        pos_weight=pos_weight,
        augment=cfg.augment,
        seed=cfg.seed,
    )
    train_loader = make_loader(
        cache,
        "train",
        cfg.batch_size,
        shuffle=True,
        seed=cfg.seed,
        balance=cfg.imbalance == "sampler",
        drop_last=True,
    )
    val_loader = make_loader(cache, "val", max(64, cfg.batch_size))

    write_text_atomic(out / "config.yaml", yaml.safe_dump(asdict(cfg), sort_keys=False))
    recorder = RunRecorder(out)
    early = EarlyStopping(monitor="val_auroc", mode="max", patience=cfg.patience, verbose=False)
    callbacks = [recorder, early]
    if progress:
        from lightning.pytorch.callbacks import TQDMProgressBar

        callbacks.append(TQDMProgressBar(refresh_rate=10))
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=cfg.epochs,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
        max_time={"minutes": cfg.max_minutes} if cfg.max_minutes else None,
    )
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*deterministic.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning vs newer torch
        trainer.fit(module, train_loader, val_loader)
    train_seconds = time.perf_counter() - t0
    if recorder.best_probs is None:
        raise UserError("training stopped before the first validation; increase --max-minutes")

    threshold = youden_threshold(recorder.best_labels, recorder.best_probs)
    val_at_thr = binary_metrics(recorder.best_labels, recorder.best_probs, threshold)
    history = pd.DataFrame(recorder.rows)
    training_curves(history, out / "curves.png", best_epoch=recorder.best.get("epoch"))
    card = {
        "pneumoscope_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "architecture": cfg.model,
        "in_chans": 1,
        "img_size": pp.img_size,
        "preprocess": pp.to_dict(),
        "normalization": {"mean": [mean], "std": [std], "scale": "pixel / 255"},
        "class_names": list(CLASS_NAMES),
        "positive_class": CLASS_NAMES[1],
        "threshold": threshold,
        "threshold_policy": "youden (max sensitivity + specificity on validation)",
        "training_data": {
            "cache": str(Path(cfg.data).expanduser().resolve()),
            "sources": sorted(cache.manifest["source"].unique().tolist()),
            "counts": counts_table(cache.manifest),
            "split_note": cache.info.get("split_note", ""),
        },
        "training": {
            "imbalance": cfg.imbalance,
            "pos_weight": pos_weight,
            "epochs_run": int(len(history)),
            "train_seconds": round(train_seconds, 1),
            "stopped_by": _stop_reason(early, len(history), cfg),
            "seed": cfg.seed,
        },
        "best_epoch": int(recorder.best["epoch"]),
        "val_metrics": {
            **{k: v for k, v in recorder.best.items() if k != "epoch"},
            "at_threshold": val_at_thr,
        },
        "weights": WEIGHTS,
        "intended_use": "research and decision support; not a medical device",
    }
    write_json_atomic(out / CARD, card)
    # Temperature and threshold on validation, so the run is usable as it stands.
    from .calibration import calibrate

    card["calibration"] = calibrate(out, cfg.data, policy="youden")
    return card


def _stop_reason(early: EarlyStopping, epochs_run: int, cfg: TrainConfig) -> str:
    if early.stopped_epoch:
        return "early_stopping"
    return "max_epochs" if epochs_run >= cfg.epochs else "max_time"


def _quiet_lightning() -> None:
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
