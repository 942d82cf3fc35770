"""Train a classifier on a prepared cache and write a self-contained run directory.

RUN/
    model.safetensors  best weights (highest validation AUROC), written when they improve
    model.json         model card: architecture, preprocessing, input channels,
                       normalisation, evaluation crop, threshold, training data and
                       population (ages, views, sources), initial weights, validation
                       metrics, intended use
    history.csv        per epoch: train/val loss, accuracy at 0.5, AUROC, learning rate
    curves.png         the same, plotted
    config.yaml        the resolved training config; `train --config RUN/config.yaml`
                       repeats the run
    checkpoints/       last.ckpt (full training state, for --resume), best_val.npz,
                       summary.json; last.ckpt is removed once the run has finished for
                       good (early stopping or all epochs), kept after a --max-minutes stop

Every file is written atomically, by the global-zero process only.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping

from pneumoscope.core import CLASS_NAMES, __version__
from pneumoscope.core.errors import UserError
from pneumoscope.core.io import write_text_atomic
from pneumoscope.data.cache import Cache, counts_table, open_cache
from pneumoscope.data.loader import draw_weights, make_loader
from pneumoscope.evaluation.metrics import binary_metrics, youden_threshold
from pneumoscope.evaluation.plots import training_curves
from pneumoscope.model.architectures import check_model_name
from pneumoscope.model.contract import (
    InputSpec,
    ModelCard,
    Normalization,
    RunFiles,
    TrainingData,
    TrainingInfo,
)
from pneumoscope.model.statements import intended_use_text
from pneumoscope.training.callbacks import (
    AtomicCheckpointIO,
    FreezeBackbone,
    LastCheckpoint,
    RunRecorder,
)
from pneumoscope.training.config import IMBALANCE_CHOICES, TrainConfig  # noqa: F401  (re-exported)
from pneumoscope.training.module import Classifier, quiet_warnings
from pneumoscope.training.population import training_population
from pneumoscope.training.precision import PrecisionChoice, machine_precision

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

__all__ = ["TrainConfig", "train", "RunRecorder", "normalization_stats"]


def normalization_stats(cache: Cache, rows: np.ndarray, seed: int) -> tuple[float, float]:
    """Pixel mean and std of (a sample of) the training images, in [0, 1] units."""
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(rows, size=min(len(rows), 1000), replace=False))
    x = cache.images[pick].astype(np.float32) / 255.0
    return float(x.mean()), float(max(x.std(), 1e-3))


def normalization(
    cfg: TrainConfig, cache: Cache, train_rows: np.ndarray
) -> tuple[list[float], list[float]]:
    """Per-channel mean and std: the training images', ImageNet's or none (pixel / 255)."""
    c = cfg.in_chans
    if cfg.normalization == "imagenet":
        if c == 3:
            return list(IMAGENET_MEAN), list(IMAGENET_STD)
        return [float(np.mean(IMAGENET_MEAN))], [float(np.mean(IMAGENET_STD))]
    if cfg.normalization == "none":
        return [0.0] * c, [1.0] * c
    mean, std = normalization_stats(cache, train_rows, cfg.seed)
    return [mean] * c, [std] * c


def check_input(cfg: TrainConfig, cache: Cache) -> None:
    """The cache fixes image size and CLAHE; a config asking for others must not silently
    train on what the cache holds."""
    pp = cache.preprocess
    wrong = []
    if cfg.img_size is not None and int(cfg.img_size) != pp.img_size:
        wrong.append(f"{cfg.img_size} px (the cache has {pp.img_size} px)")
    if cfg.clahe is not None and bool(cfg.clahe) != pp.clahe:
        wrong.append(f"clahe {str(cfg.clahe).lower()} (the cache has {str(pp.clahe).lower()})")
    if wrong:
        size = cfg.img_size or pp.img_size
        clahe = pp.clahe if cfg.clahe is None else cfg.clahe
        flags = f"--img-size {size}" + ("" if clahe else " --no-clahe")
        saved = Path(cfg.data) / "prepare_config.yaml"  # the same sources and splits
        inputs = f"--config {saved}" if saved.is_file() else "--source SOURCE"
        raise UserError(
            f"the config asks for {' and '.join(wrong)} but {cfg.data} holds other images; "
            f"prepare a cache for it: pneumoscope data prepare {inputs} "
            f"--out {cfg.data}_{size} {flags}, then train with --data {cfg.data}_{size}"
        )


def _launch_rank(cfg: TrainConfig) -> int:
    """Global rank of this process as its launcher set it (0 when launched by hand)."""
    env = os.environ
    for var in ("RANK", "SLURM_PROCID"):
        if var in env and "LOCAL_RANK" in env:
            return int(env[var])
    local = int(env.get("LOCAL_RANK", 0))
    node = int(env.get("NODE_RANK", env.get("GROUP_RANK", 0)))
    return node * cfg.devices + local


def _uses_gpu(cfg: TrainConfig) -> bool:
    if cfg.accelerator in ("gpu", "cuda"):
        return True
    return cfg.accelerator == "auto" and torch.cuda.is_available()


def _device(cfg: TrainConfig) -> str:
    """'cuda', 'mps' or 'cpu': the device Lightning's accelerator setting ends up on."""
    if _uses_gpu(cfg):
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if cfg.accelerator == "mps" or (
        cfg.accelerator == "auto" and mps is not None and mps.is_available()
    ):
        return "mps"
    return "cpu"


def check_hardware(cfg: TrainConfig) -> PrecisionChoice:
    """Refuses hardware settings the machine cannot run; returns the precision chosen for
    it (``--precision auto``: bf16 mixed precision where the hardware runs it fast)."""
    if cfg.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserError(
            "--accelerator gpu but no CUDA GPU is visible; use --accelerator cpu or auto"
        )
    return machine_precision(str(cfg.precision), _device(cfg))


def _strategy(cfg: TrainConfig) -> str:
    world = cfg.devices * cfg.num_nodes
    if world == 1:
        return "auto"
    s = "ddp" if cfg.strategy == "auto" else cfg.strategy
    if cfg.freeze_epochs > 0:
        s += "_find_unused_parameters_true"  # frozen backbone: parameters without gradients
    return s


def _prepare_out(files: RunFiles, resume: bool) -> None:
    files.root.mkdir(parents=True, exist_ok=True)
    if resume:
        files.card.unlink(missing_ok=True)
        return
    # model.json is written last and marks a finished run: a reused folder loses its old
    # card first, so a retraining that fails is never mistaken for a finished run.
    files.card.unlink(missing_ok=True)
    for stale in files.fitted_files():
        stale.unlink(missing_ok=True)
    shutil.rmtree(files.checkpoints, ignore_errors=True)


def _check_resumable(out: Path) -> Path:
    files = RunFiles(out)
    ckpt, summary = files.last_ckpt, files.summary
    last = f"{RunFiles.CHECKPOINT_DIR}/{RunFiles.LAST_CKPT}"
    if not ckpt.is_file():
        if files.card.is_file():
            raise UserError(
                f"{out} finished already (no {last} left to resume from); "
                f"to train longer start a new run, e.g. with --weights {out}"
            )
        raise UserError(
            f"cannot resume {out}: {last} not found (it is written after "
            "the first epoch); start the run again without --resume"
        )
    if summary.is_file() and files.card.is_file():
        import json

        stopped = json.loads(summary.read_text()).get("stopped_by")
        if stopped in ("early_stopping", "max_epochs"):
            raise UserError(
                f"{out} finished already ({stopped.replace('_', ' ')}); nothing to resume"
            )
    return ckpt


def classifier_kwargs(cfg: TrainConfig, img_size: int, mean, std, pos_weight: float | None) -> dict:
    """The Classifier's arguments for ``cfg`` (random initial weights; ``initial_weights``
    loads any others afterwards). bench/train.py builds its model with the same call."""
    return {
        "architecture": cfg.model,
        "in_chans": cfg.in_chans,
        "img_size": img_size,
        "mean": mean,
        "std": std,
        "lr": cfg.lr,
        "weight_decay": cfg.weight_decay,
        "warmup_epochs": cfg.warmup_epochs,
        "pos_weight": pos_weight,
        "augment": cfg.augment,
        "seed": cfg.seed,
        "eval_crop": cfg.eval_crop,
        "optimizer": cfg.optimizer,
        "scheduler": cfg.scheduler,
        "plateau_factor": cfg.plateau_factor,
        "plateau_patience": cfg.plateau_patience,
        "channels_last": cfg.channels_last,
    }


def make_train_loader(cache: Cache, cfg: TrainConfig):
    """The training split's loader: seeded shuffle, or draws balanced by class
    (``imbalance: sampler``), by age group (``balance_groups``) or by both; full batches.
    bench/train.py times this same loader."""
    return make_loader(
        cache,
        "train",
        cfg.batch_size,
        shuffle=True,
        seed=cfg.seed,
        balance=cfg.imbalance == "sampler",
        drop_last=True,
        groups=balanced_groups(cfg, cache),
    )


def balanced_groups(cfg: TrainConfig, cache: Cache) -> np.ndarray | None:
    """The training rows' values of the column ``cfg.balance_groups`` names (None when it
    is "none"), refusing in one line a cache that cannot be balanced by it: a training
    image without a group, or fewer than two groups."""
    column = cfg.balance_groups
    if column == "none":
        return None
    rows = cache.split("train")
    flag = f"--balance-groups {column}"
    fix = "prepare it with --age-group NAME=child|adult for sources that give no ages"
    values = rows[column].fillna("").astype(str) if column in rows else pd.Series([""] * len(rows))
    missing = int((values == "").sum())
    if missing == len(rows):
        raise UserError(f"{flag}: {cfg.data} has no age groups; {fix}")
    if missing:
        raise UserError(
            f"{flag}: {missing} of {len(rows)} training images of {cfg.data} have no age "
            f"group; {fix}"
        )
    if values.nunique() < 2:
        raise UserError(
            f"{flag}: the training split of {cfg.data} holds one age group only "
            f"({values.iloc[0]}); there is nothing to balance"
        )
    return values.to_numpy()


def loss_pos_weight(
    cfg: TrainConfig, labels: np.ndarray, groups: np.ndarray | None
) -> float | None:
    """BCE pos_weight under ``imbalance: pos-weight`` (else None): N_NORMAL / N_PNEUMONIA of
    the images as the loader draws them, so each class weighs the same in the loss; with
    ``groups`` balanced, the expected counts of the group-balanced draws."""
    if cfg.imbalance != "pos-weight":
        return None
    n_pos = int(labels.sum())
    if groups is None:
        return (len(labels) - n_pos) / n_pos
    w = draw_weights(labels, groups)
    return float(w[labels == 0].sum() / w[labels == 1].sum())


def _check_splits(cfg: TrainConfig, cache: Cache) -> tuple[pd.DataFrame, int, int]:
    """(training rows, N_PNEUMONIA, N_NORMAL), refusing splits training cannot use."""
    train_rows = cache.split("train")
    y_train = train_rows["label"].to_numpy()
    n_pos, n_neg = int(y_train.sum()), int(len(y_train) - y_train.sum())
    if n_pos == 0 or n_neg == 0:
        raise UserError(
            f"the training split of {cfg.data} holds one class only "
            f"({n_neg} NORMAL, {n_pos} PNEUMONIA); both are needed"
        )
    if cache.split("val")["label"].nunique() < 2:
        raise UserError(
            f"the validation split of {cfg.data} holds one class only; "
            "prepare the data again with a larger --val-fraction"
        )
    world = cfg.devices * cfg.num_nodes
    if len(train_rows) // cfg.batch_size < world:
        raise UserError(
            f"{len(train_rows)} training images make fewer batches of {cfg.batch_size} than "
            f"the {world} processes; lower --batch-size or --devices"
        )
    return train_rows, n_pos, n_neg


def _trainer(
    cfg: TrainConfig,
    files: RunFiles,
    init: dict | None,
    progress: bool,
    callbacks: Sequence[Callback],
    precision: str,
) -> L.Trainer:
    """The Lightning Trainer with the run's callbacks (recorder, early stopping, last
    checkpoint, freezing, progress bar) and then ``callbacks``."""
    recorder = RunRecorder(files.root, init, precision)
    early = EarlyStopping(monitor="val_auroc", mode="max", patience=cfg.patience, verbose=False)
    cbs: list[Callback] = [recorder, early, LastCheckpoint(files.last_ckpt)]
    if cfg.freeze_epochs:
        cbs.append(FreezeBackbone(cfg.freeze_epochs))
    if progress:
        from lightning.pytorch.callbacks import TQDMProgressBar

        cbs.append(TQDMProgressBar(refresh_rate=10))
    cbs += list(callbacks)
    return L.Trainer(
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=_strategy(cfg),
        precision=precision,
        max_epochs=cfg.epochs,
        callbacks=cbs,
        plugins=[AtomicCheckpointIO()],
        logger=False,
        enable_checkpointing=True,
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,  # IndexBatchSampler shards by rank itself
        deterministic="warn" if _uses_gpu(cfg) else True,
        max_time={"minutes": cfg.max_minutes} if cfg.max_minutes else None,
    )


def train(
    cfg: TrainConfig,
    progress: bool = True,
    resume: bool = False,
    echo: Callable[[str], None] | None = None,
    callbacks: Sequence[Callback] = (),
) -> ModelCard | None:
    """Train, select the best epoch on validation AUROC, pick the threshold on validation,
    then calibrate and fit the OOD guard, one after the other.

    ``resume`` continues RUN (= cfg.out) from its last checkpoint. Returns the model card
    with the calibration it ended with (None on processes other than global zero).
    ``echo`` gets one-line notes; ``callbacks`` are added to the Trainer's (tests use them
    to interrupt a run).
    """
    cfg.validate()
    check_model_name(cfg.model)
    choice = check_hardware(cfg)
    cache = open_cache(cfg.data)
    check_input(cfg, cache)
    out = Path(cfg.out).expanduser()
    rank0 = _launch_rank(cfg) == 0
    say = echo if (echo and rank0) else (lambda _msg: None)
    if cfg.retired_note():
        say(cfg.retired_note())
    ckpt = _check_resumable(out) if resume else None

    pp = cache.preprocess
    train_rows, _, _ = _check_splits(cfg, cache)
    groups = balanced_groups(cfg, cache)
    local_procs = cfg.devices if not _uses_gpu(cfg) else 1
    threads = cfg.threads or max(1, (os.cpu_count() or 1) // local_procs)
    torch.set_num_threads(threads)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    torch.use_deterministic_algorithms(True, warn_only=True)
    _quiet_lightning()

    mean, std = normalization(cfg, cache, train_rows["index"].to_numpy())
    # One imbalance method only. pos_weight = N_neg / N_pos makes the two classes weigh the
    # same in the loss (below 1 here, since pneumonia is the majority); the sampler instead
    # draws both classes equally often. Stacking both would compensate twice. Drawing the
    # age groups equally often changes the class mix drawn: pos_weight follows it.
    pos_weight = loss_pos_weight(cfg, train_rows["label"].to_numpy(), groups)
    if groups is not None:
        counts = pd.Series(groups).value_counts().sort_index()
        sizes = ", ".join(f"{g} {n}" for g, n in counts.items())
        what = cfg.balance_groups.replace("_", " ")
        say(f"each {what} drawn equally often (training images: {sizes})")
    module = Classifier(**classifier_kwargs(cfg, pp.img_size, mean, std, pos_weight))
    init = None
    if ckpt is None:  # a resumed run takes every weight from its checkpoint
        from pneumoscope.model.weights import describe, initial_weights

        init = initial_weights(
            module.net, cfg.model, cfg.in_chans, pp.img_size, cfg.pretrained, cfg.weights
        )
        say(f"initial weights: {describe(init)}")
    else:
        say(f"resuming {out} from {ckpt}")
    say(f"precision: {choice.lightning} ({choice.reason})")  # after what can still refuse
    if choice.warning:
        say(f"warning: {choice.warning}")
    train_loader = make_train_loader(cache, cfg)
    val_loader = make_loader(cache, "val", max(64, cfg.batch_size))

    files = RunFiles(out)
    if rank0:  # only now, when everything was checked and read (--weights may lie in out)
        _prepare_out(files, resume)
        write_text_atomic(files.config, cfg.to_yaml())
    trainer = _trainer(cfg, files, init, progress, callbacks, choice.lightning)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        quiet_warnings()
        trainer.fit(
            module,
            train_loader,
            val_loader,
            ckpt_path=None if ckpt is None else str(ckpt),
            weights_only=True,
        )
    if not trainer.is_global_zero:
        return None
    fit_s = time.perf_counter() - t0
    return _finish(cfg, cache, out, fit_s, (mean, std), pos_weight, choice)


def _finish(
    cfg: TrainConfig,
    cache: Cache,
    out: Path,
    fit_seconds: float,
    mean_std: tuple[list[float], list[float]],
    pos_weight: float | None,
    choice: PrecisionChoice,
) -> ModelCard:
    """Card, curves, calibration and OOD guard from what the global-zero process wrote to
    disk (the same whether training ran in this process or in spawned ones)."""
    import json

    mean, std = mean_std
    files = RunFiles(out)
    if not files.best_val.is_file() or not files.history.is_file():
        raise UserError("training stopped before the first validation; increase --max-minutes")
    with np.load(files.best_val, allow_pickle=False) as z:
        best_probs, best_labels = z["probs"], z["labels"]
    summary = json.loads(files.summary.read_text()) if files.summary.is_file() else {}
    history = pd.read_csv(files.history)
    best_row = history.loc[history["val_auroc"].idxmax()]
    best_epoch = int(best_row["epoch"])
    best = {k: float(best_row[k]) for k in ("val_loss", "val_accuracy", "val_auroc")}
    threshold = youden_threshold(best_labels, best_probs)
    val_at_thr = binary_metrics(best_labels, best_probs, threshold)
    training_curves(history, files.curves, best_epoch=best_epoch)
    info = _training_info(cfg, pos_weight, summary, len(history), fit_seconds, choice)
    population = training_population(cache)
    card = ModelCard(
        pneumoscope_version=__version__,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        architecture=cfg.model,
        input=InputSpec(
            preprocess=cache.preprocess,
            in_chans=cfg.in_chans,
            normalization=Normalization(tuple(mean), tuple(std), kind=cfg.normalization),
            eval_crop=cfg.eval_crop,
        ),
        input_note=_input_note(cfg, cache.preprocess.img_size),
        class_names=list(CLASS_NAMES),
        positive_class=CLASS_NAMES[1],
        threshold=threshold,
        threshold_policy="youden (max sensitivity + specificity on validation)",
        training_data=_training_data(cfg, cache),
        population=population,
        training=info,
        best_epoch=best_epoch,
        val_metrics={**best, "at_threshold": val_at_thr},
        intended_use=intended_use_text(population),
    )
    if info.stopped_by in ("early_stopping", "max_epochs"):  # finished: nothing to resume
        files.last_ckpt.unlink(missing_ok=True)
    card.save(files)
    # Temperature and threshold on validation, then the OOD guard: the run is usable as
    # it stands. Each step writes its own files.
    from pneumoscope.evaluation.calibration import calibrate
    from pneumoscope.model.ood import fit_ood_guard

    card.calibration = calibrate(out, cfg.data, policy="youden")  # the card's threshold_tta, tta
    fit_ood_guard(out, cfg.data)
    return card


def _training_data(cfg: TrainConfig, cache: Cache) -> TrainingData:
    return TrainingData(
        cache=str(Path(cfg.data).expanduser().resolve()),
        sources=sorted(cache.manifest["source"].unique().tolist()),
        counts=counts_table(cache.manifest),
        split_note=cache.info.split_note,
    )


def _training_info(
    cfg: TrainConfig,
    pos_weight: float | None,
    summary: dict,
    epochs_run: int,
    seconds: float,
    choice: PrecisionChoice,
) -> TrainingInfo:
    """How the run was trained; ``summary`` is what the recorder wrote when the fit ended."""
    return TrainingInfo(
        imbalance=cfg.imbalance,
        pos_weight=pos_weight,
        pos_weight_note=_pos_weight_note(cfg, pos_weight),
        balance_groups="" if cfg.balance_groups == "none" else cfg.balance_groups,
        optimizer=cfg.optimizer,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        scheduler=cfg.scheduler,
        freeze_epochs=cfg.freeze_epochs,
        augment=cfg.augment,
        threshold_tta=cfg.threshold_tta,
        tta=cfg.tta,
        batch_size_per_process=cfg.batch_size,
        processes=cfg.devices * cfg.num_nodes,
        precision=choice.lightning,
        precision_reason=choice.reason,
        initial_weights=summary.get("init"),
        epochs_run=int(epochs_run),
        train_seconds=round(float(summary.get("train_seconds", seconds)), 1),
        stopped_by=summary.get("stopped_by", "max_time"),
        seed=cfg.seed,
    )


def _pos_weight_note(cfg: TrainConfig, pos_weight: float | None) -> str:
    if pos_weight is None:
        return ""
    if cfg.balance_groups != "none":
        return (
            f"BCE pos_weight = N_NORMAL / N_PNEUMONIA expected in draws balanced by "
            f"{cfg.balance_groups}: each class weighs the same in the loss"
        )
    return "BCE pos_weight = N_NORMAL / N_PNEUMONIA: each class weighs the same in the loss"


def _input_note(cfg: TrainConfig, size: int) -> str:
    parts = [f"cached {size} px gray uint8 / 255"]
    if cfg.eval_crop != 1.0:
        parts.append(f"resize to {int(size * cfg.eval_crop)} px, centre crop {size} px")
    if cfg.in_chans != 1:
        parts.append(f"gray repeated to {cfg.in_chans} channels")
    parts.append(f"normalised ({cfg.normalization})")
    return ", then ".join(parts)


def _quiet_lightning() -> None:
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
