"""`pneumoscope train`: a preset or config, flags on top, into a run folder."""

from __future__ import annotations

from pathlib import Path

import typer

from pneumoscope.cli.base import app
from pneumoscope.core.errors import UserError
from pneumoscope.training.config import (
    RENAMED,
    TRAIN_EPILOG,
    TrainConfig,
    parse_augment,
    resolve_config,
    resume_config,
)

# each option's help is its config field's description
HELP = {name: TrainConfig.flag_help(name) for name in TrainConfig.model_fields}


@app.command(epilog=TRAIN_EPILOG)
def train(
    ctx: typer.Context,
    config: str = typer.Option(
        None,
        help="YAML config: a file, a preset name (seed1-cnn, seed2-efficientnet, fast-cpu) "
        "or a run folder (its config.yaml). Flags given override it.",
    ),
    data: Path = typer.Option(None, help=HELP["data"]),
    out: Path = typer.Option(None, help=HELP["out"]),
    resume: Path = typer.Option(
        None,
        help="Continue this run from its last checkpoint (RUN/checkpoints/last.ckpt) with its "
        "saved config; it ends where the uninterrupted run would have. Only --max-minutes "
        "and --threads may be given with it (--max-minutes counts the total time).",
    ),
    model: str = typer.Option(None, help=HELP["model"]),
    img_size: int = typer.Option(None, help=HELP["img_size"]),
    in_chans: int = typer.Option(None, help=HELP["in_chans"]),
    normalization: str = typer.Option(None, help=HELP["normalization"]),
    eval_crop: float = typer.Option(None, help=HELP["eval_crop"]),
    pretrained: bool = typer.Option(None, "--pretrained/--no-pretrained", help=HELP["pretrained"]),
    weights: Path = typer.Option(None, help=HELP["weights"]),
    freeze_epochs: int = typer.Option(None, help=HELP["freeze_epochs"]),
    epochs: int = typer.Option(None, help=HELP["epochs"]),
    batch_size: int = typer.Option(None, help=HELP["batch_size"]),
    optimizer: str = typer.Option(None, help=HELP["optimizer"]),
    lr: float = typer.Option(None, help=HELP["lr"]),
    weight_decay: float = typer.Option(None, help=HELP["weight_decay"]),
    scheduler: str = typer.Option(None, help=HELP["scheduler"]),
    warmup_epochs: float = typer.Option(None, help=HELP["warmup_epochs"]),
    imbalance: str = typer.Option(None, help=HELP["imbalance"]),
    balance_groups: str = typer.Option(None, help=HELP["balance_groups"]),
    patience: int = typer.Option(None, help=HELP["patience"]),
    max_minutes: float = typer.Option(None, help=HELP["max_minutes"]),
    seed: int = typer.Option(None, help=HELP["seed"]),
    threads: int = typer.Option(None, help=HELP["threads"]),
    augment: list[str] = typer.Option(None, help=HELP["augment"]),
    accelerator: str = typer.Option(None, help=HELP["accelerator"]),
    devices: int = typer.Option(None, help=HELP["devices"]),
    num_nodes: int = typer.Option(None, help=HELP["num_nodes"]),
    strategy: str = typer.Option(None, help=HELP["strategy"]),
    precision: str = typer.Option(None, help=HELP["precision"]),
    threshold_tta: int = typer.Option(None, help=HELP["threshold_tta"]),
    tta: int = typer.Option(None, help=HELP["tta"]),
    threshold_views: int = typer.Option(None, hidden=True),  # before the rename: threshold_tta
    test_views: int = typer.Option(None, hidden=True),  # before the rename: tta
    channels_last: bool = typer.Option(
        None, "--channels-last/--no-channels-last", help=HELP["channels_last"]
    ),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Train a one-logit classifier; the best epoch is chosen on validation AUROC and the
    decision threshold on validation (Youden), never on test."""
    from pneumoscope.model.weights import describe
    from pneumoscope.training.train import train as run_train

    given = {
        name: value
        for name, value in ctx.params.items()
        if name not in ("ctx", "config", "resume", "progress", "augment") and value is not None
    }
    for old, new in RENAMED.items():  # the flags' names before the rename still work
        if old in given:
            given.setdefault(new, given.pop(old))
    if given.get("max_minutes") == 0:
        given["max_minutes"] = None
    if given.get("threads") == 0:
        given["threads"] = None
    if augment:
        given["augment"] = parse_augment(augment)
    if resume is not None:
        if config is not None:
            raise UserError("--resume uses the run's own config.yaml; drop --config")
        cfg = resume_config(resume, given)
    else:
        cfg = resolve_config(config, given)
    card = run_train(
        cfg, progress=progress, resume=resume is not None, echo=lambda m: typer.echo(m, err=True)
    )
    if card is None:  # a DDP process other than global zero
        return
    c, t = card.calibration, card.training
    typer.echo(
        f"best epoch {card.best_epoch}: val AUROC {card.validation.auroc:.4f}; "
        f"temperature {c.temperature_:.3f}, threshold {c.threshold_:.3f} (youden on "
        f"validation{c.tta_note()}); {t.train_seconds:.0f} s; stopped by "
        f"{t.stopped_by.replace('_', ' ')}; run in {cfg.out}"
    )
    if t.initial_weights:
        typer.echo(f"initial weights: {describe(t.initial_weights)}")
    if c.temperature_warning_:
        typer.echo(f"warning: {c.temperature_warning_}", err=True)


@app.command()
def ensemble(
    runs: list[Path] = typer.Argument(..., help="Two or more trained run folders."),
    out: Path = typer.Option(..., help="New folder for the ensemble run."),
) -> None:
    """Merge trained runs into one run whose logit is the mean of theirs (one weights file,
    one card, one ONNX graph on export). The members must take the same input and have
    been trained on the same cache; calibrate the ensemble next."""
    from pneumoscope.training.ensemble import merge_runs

    card = merge_runs(runs, out)
    seconds = card.training.train_seconds
    spent = f"; training time of all members {seconds:.0f} s" if seconds is not None else ""
    typer.echo(f"{card.architecture} written to {out}{spent}")
    typer.echo(f"next: pneumoscope calibrate --run {out} --data CACHE (its members' cache)")
