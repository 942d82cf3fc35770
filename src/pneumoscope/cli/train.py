"""`pneumoscope train`: a preset or config, flags on top, into a run folder."""

from __future__ import annotations

from pathlib import Path

import typer

from pneumoscope.cli.base import app
from pneumoscope.core.errors import UserError
from pneumoscope.training import config as tc


@app.command(epilog=tc.TRAIN_EPILOG)
def train(
    ctx: typer.Context,
    config: str = typer.Option(
        None,
        help="YAML config: a file, a preset name (seed1-cnn, seed2-efficientnet, fast-cpu) "
        "or a run folder (its config.yaml). Flags given override it.",
    ),
    data: Path = typer.Option(None, help="A folder made by 'pneumoscope data prepare'."),
    out: Path = typer.Option(None, help="Run folder to write (weights, model.json, history)."),
    resume: Path = typer.Option(
        None,
        help="Continue this run from its last checkpoint (RUN/checkpoints/last.ckpt) with its "
        "saved config; it ends where the uninterrupted run would have. Only --max-minutes "
        "and --threads may be given with it (--max-minutes counts the total time).",
    ),
    model: str = typer.Option(
        None,
        help="'seed_cnn' (the Keras design's 5-block CNN) or any timm model name (resnet18, "
        "efficientnet_b0, ...)." + tc.default_note("model"),
    ),
    img_size: int = typer.Option(
        None,
        help="Image size the config expects; must be the cache's (prepare a cache with "
        "'data prepare --img-size N'). Default: the cache's.",
    ),
    in_chans: int = typer.Option(
        None,
        help="Network input channels: 1, or 3 (gray repeated, as ImageNet models expect)."
        + tc.default_note("in_chans"),
    ),
    normalization: str = typer.Option(
        None,
        help="dataset (training images' mean/std) | imagenet (ImageNet mean/std) | none "
        "(pixel / 255)." + tc.default_note("normalization"),
    ),
    eval_crop: float = typer.Option(
        None,
        help="Evaluation and inference: resize by this factor, then centre-crop back (1.15 = "
        "the PyTorch design's resize 1.15x + center crop; 1 = none). Stored in model.json and "
        "applied by predict/evaluate/export." + tc.default_note("eval_crop"),
    ),
    pretrained: bool = typer.Option(
        None,
        "--pretrained/--no-pretrained",
        help="Start from timm's ImageNet weights (downloaded once into the Hugging Face "
        "cache; offline, use --weights). The 1000-class head is dropped, the stem adapted to "
        "--in-chans.",
    ),
    weights: Path = typer.Option(
        None,
        help="Start from a local file: a timm/Hugging Face checkpoint (.safetensors, or "
        ".pth/.pt/.bin of plain tensors) or a previous pneumoscope run folder (fine-tuning).",
    ),
    freeze_epochs: int = typer.Option(
        None,
        help="Train only the classifier for this many first epochs."
        + tc.default_note("freeze_epochs"),
    ),
    epochs: int = typer.Option(
        None, help="Maximum epochs (early stopping may end sooner)." + tc.default_note("epochs")
    ),
    batch_size: int = typer.Option(
        None, help="Images per step and process." + tc.default_note("batch_size")
    ),
    optimizer: str = typer.Option(
        None,
        help="adamw | rmsprop (Keras's: rho 0.9) | sgd (Nesterov momentum 0.9)."
        + tc.default_note("optimizer"),
    ),
    lr: float = typer.Option(None, help="Peak learning rate." + tc.default_note("lr")),
    weight_decay: float = typer.Option(
        None, help="Weight decay." + tc.default_note("weight_decay")
    ),
    scheduler: str = typer.Option(
        None,
        help="cosine (linear warm-up, then cosine to 1% of --lr, per step) | plateau (halve "
        "the rate when validation AUROC stalls for 2 epochs) | constant."
        + tc.default_note("scheduler"),
    ),
    warmup_epochs: float = typer.Option(
        None, help="Warm-up epochs of the cosine schedule." + tc.default_note("warmup_epochs")
    ),
    imbalance: str = typer.Option(
        None,
        help="Exactly one class-imbalance compensation, never two: pos-weight (BCE "
        "pos_weight = N_NORMAL / N_PNEUMONIA, so both classes weigh the same in the loss; "
        "below 1 when pneumonia is the majority) | sampler (draw both classes equally "
        "often) | none." + tc.default_note("imbalance"),
    ),
    patience: int = typer.Option(
        None,
        help="Early stopping patience on validation AUROC, epochs." + tc.default_note("patience"),
    ),
    max_minutes: float = typer.Option(
        None,
        help="Stop training after this many minutes (0 = no limit); the best epoch so far is "
        "kept and --resume can continue.",
    ),
    seed: int = typer.Option(
        None,
        help="Seed for weights, order and augmentation (a CPU run repeats bit for bit)."
        + tc.default_note("seed"),
    ),
    threads: int = typer.Option(None, help="CPU threads per process (0 = cores / processes)."),
    augment: list[str] = typer.Option(
        None,
        help="Augmentation setting KEY=VALUE, repeatable: rotation, zoom, shift, crop, aspect, "
        "hflip, vflip, brightness, contrast, gamma, fill (see README).",
    ),
    accelerator: str = typer.Option(
        None, help="auto | cpu | gpu | mps." + tc.default_note("accelerator")
    ),
    devices: int = typer.Option(
        None,
        help="Processes (GPUs, or CPU processes) per node; >1 runs DDP."
        + tc.default_note("devices"),
    ),
    num_nodes: int = typer.Option(None, help="Machines (DDP)." + tc.default_note("num_nodes")),
    strategy: str = typer.Option(
        None,
        help="auto | ddp | ddp_spawn (with --devices or --num-nodes > 1)."
        + tc.default_note("strategy"),
    ),
    precision: str = typer.Option(
        None,
        help="32 | bf16-mixed | 16-mixed (CUDA GPU only) | bf16-true."
        + tc.default_note("precision"),
    ),
    threshold_views: int = typer.Option(
        None,
        help="Choose the threshold on validation plus this many copies of each validation "
        "image under the training augmentation (0 = plain validation only; see calibrate "
        "--views)." + tc.default_note("threshold_views"),
    ),
    channels_last: bool = typer.Option(
        None,
        "--channels-last/--no-channels-last",
        help="Channels-last (NHWC) memory layout for the network: faster convolutions on CPU "
        "and GPU (equal up to float rounding; a seeded run still repeats bit for bit)."
        + tc.default_note("channels_last"),
    ),
    ema_decay: float = typer.Option(
        None,
        help="Keep an exponential moving average of the weights, updated after every "
        "optimiser step with this decay (e.g. 0.995; 0 = off); validation, checkpoint "
        "choice and the saved model use the average." + tc.default_note("ema_decay"),
    ),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Train a one-logit classifier; the best epoch is chosen on validation AUROC and the
    decision threshold on validation (Youden), never on test."""
    from pneumoscope.model.run import views_note
    from pneumoscope.model.weights import describe
    from pneumoscope.training.config import resolve_config, resume_config
    from pneumoscope.training.train import train as run_train

    given = {
        name: value
        for name, value in ctx.params.items()
        if name not in ("ctx", "config", "resume", "progress", "augment") and value is not None
    }
    for path_key in ("data", "out", "weights"):
        if path_key in given:
            given[path_key] = str(given[path_key])
    if given.get("max_minutes") == 0:
        given["max_minutes"] = None
    if given.get("threads") == 0:
        given["threads"] = None
    if augment:
        given["augment"] = tc.parse_augment(augment)
    if resume is not None:
        if config is not None:
            raise UserError("--resume uses the run's own config.yaml; drop --config")
        cfg = resume_config(resume, given)
    else:
        cfg = resolve_config(config, given)
    card = run_train(
        cfg, progress=progress, resume=resume is not None, echo=lambda m: typer.echo(m, err=True)
    )
    if not card:  # a DDP process other than global zero
        return
    v, c = card["val_metrics"], card["calibration"]
    typer.echo(
        f"best epoch {card['best_epoch']}: val AUROC {v['val_auroc']:.4f}; temperature "
        f"{c['temperature']:.3f}, threshold {c['threshold']:.3f} (youden on validation"
        f"{views_note(c)}); "
        f"{card['training']['train_seconds']:.0f} s; stopped by "
        f"{card['training']['stopped_by'].replace('_', ' ')}; run in {cfg.out}"
    )
    init = card["training"].get("initial_weights")
    if init:
        typer.echo(f"initial weights: {describe(init)}")
    if c.get("temperature_warning"):
        typer.echo(f"warning: {c['temperature_warning']}", err=True)
