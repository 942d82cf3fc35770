"""Command line: `pneumoscope data prepare | train | evaluate | predict`.

A user mistake ends with one line on stderr (``error: what, where, what to do``) and
exit status 2; heavy libraries are imported inside the commands so --help is instant.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import typer

from pneumoscope.core.errors import UserError
from pneumoscope.training import config as tc

app = typer.Typer(
    name="pneumoscope",
    help="Pneumonia detection on chest X-rays: prepare a leak-free dataset, train, evaluate, "
    "predict.",
    epilog="Example, end to end on the Kaggle pediatric set:\n\n"
    "  pneumoscope data prepare --source chest_xray --out work/data\n\n"
    "  pneumoscope train --data work/data --out runs/r18\n\n"
    "  pneumoscope evaluate --run runs/r18 --data work/data --split test\n\n"
    "  pneumoscope predict --run runs/r18 chest_xray/test --out predictions.csv",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)
data_app = typer.Typer(
    help="Build datasets from X-ray folders.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(data_app, name="data")


def _echo_table(title: str, header: list[str], rows: list[list]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for h in header:
        table.add_column(h, justify="right" if h != header[0] else "left")
    for r in rows:
        table.add_row(*[str(c) for c in r])
    Console().print(table)


@data_app.command(
    "prepare",
    epilog="Examples:\n\n"
    "  pneumoscope data prepare --source ~/chest_xray --out work/data224\n\n"
    "  pneumoscope data prepare --source ~/chest_xray --out work/data128 --img-size 128 --no-clahe"
    "\n\n"
    "  pneumoscope data prepare --preset keras-combined-dedup --out work/combined128 "
    "--img-size 128\n\n"
    "  pneumoscope data prepare --source ped=~/chest_xray --source cov=~/covid19_pneumonia "
    "--dedupe drop --split regroup --fractions 0.8,0.1,0.1 --out work/mix\n\n"
    "Presets (configs/data): pediatric; keras-combined-naive (the Keras design's "
    "combination as published: leaks copies of test images into train, for comparison "
    "only); keras-combined-dedup (the same sources, de-duplicated). Writes images.npy, "
    "manifest.csv, rejected.csv, excluded.csv, dropped.csv, duplicates.csv, "
    "data_report.md/.json, prepare_config.yaml.",
)
def data_prepare(
    source: list[str] = typer.Option(
        None,
        help="PATH or NAME=PATH, repeatable: a folder with NORMAL/ and PNEUMONIA/ (optionally "
        "inside train|val|test/), the Covid-19 & Pneumonia layout, a CSV of path,label[,...] "
        "or an RSNA folder. NAME=PATH with a preset's source NAME moves that source; other "
        "values replace a preset's sources. When copies are dropped, the first-listed "
        "source's copy is kept.",
    ),
    out: Path = typer.Option(..., help="Output folder for the cache and the data report."),
    preset: str = typer.Option(
        None,
        help="Named settings in configs/data: pediatric | keras-combined-naive | "
        "keras-combined-dedup.",
    ),
    config: Path = typer.Option(
        None, help="YAML file of settings (e.g. an earlier OUT/prepare_config.yaml)."
    ),
    layout: list[str] = typer.Option(
        None,
        help="LAYOUT or NAME=LAYOUT where detection is ambiguous: class-folders | "
        "covid19-pneumonia | csv | rsna.",
    ),
    covid_as: str = typer.Option(
        None,
        help="COVID19 folder of the Covid-19 & Pneumonia layout: exclude [default] | pneumonia.",
    ),
    rsna_not_normal: str = typer.Option(
        None, help="RSNA 'No Lung Opacity / Not Normal': exclude [default] | normal."
    ),
    age_group: list[str] = typer.Option(
        None,
        help="child | adult, or NAME=child|adult: the age group of images whose age the "
        "source does not give (for per-group evaluation).",
    ),
    split: str = typer.Option(
        None,
        help="given [default]: keep the sources' splits, a group found in several moves "
        "whole; regroup: a fresh split of whole groups by --fractions and --seed.",
    ),
    val_fraction: float = typer.Option(
        None,
        help="given: validation share carved from train (grouped, stratified by label) when "
        "no usable val split is given [0.1].",
    ),
    fractions: str = typer.Option(
        None, help="regroup: train,val,test shares, stratified by label (and source) [0.8,0.1,0.1]."
    ),
    straddle: str = typer.Option(
        None,
        help="given: where a group that the sources put in several splits goes: test-side "
        "[default] | first-source (the first-listed source's split) | keep (naive: leaks, "
        "reported).",
    ),
    dedupe: str = typer.Option(
        None,
        help="group [default]: copies share one split, all kept | drop: one image per "
        "duplicate cluster | off: naive, copies not linked (leaks reported).",
    ),
    conflicts: str = typer.Option(
        None, help="Duplicates that carry both labels: drop [default] | keep (grouped)."
    ),
    near_threshold: int = typer.Option(
        None,
        help="Near duplicate: Hamming distance between 256-bit perceptual hashes [24]; "
        "-1 = exact duplicates only.",
    ),
    img_size: int = typer.Option(None, help="Square side in pixels after resizing [224]."),
    clahe: bool = typer.Option(
        None, "--clahe/--no-clahe", help="Contrast-limited adaptive histogram equalisation [on]."
    ),
    seed: int = typer.Option(None, help="Seed of the splits [0]."),
    workers: int = typer.Option(0, help="Decoding processes (0 = all cores)."),
) -> None:
    """Combine sources, find duplicates, split without leakage, and decode every image once
    into a memory-mapped cache, with a data report (data_report.md).

    Unreadable files are listed in rejected.csv with their reason; they never stop the run.
    """
    from pneumoscope.data.prepare import prepare_data, resolve_config
    from pneumoscope.data.report import terminal_tables

    dc = resolve_config(
        preset=preset,
        config=config,
        sources=source or None,
        layout=layout or None,
        covid_as=covid_as,
        rsna_not_normal=rsna_not_normal,
        age_group=age_group or None,
        split=split,
        val_fraction=val_fraction,
        fractions=fractions,
        straddle=straddle,
        dedupe=dedupe,
        conflicts=conflicts,
        near_threshold=near_threshold,
        img_size=img_size,
        clahe=clahe,
        seed=seed,
    )
    res = prepare_data(dc, out, workers=workers or None)
    for title, header, rows in terminal_tables(res.report):
        _echo_table(title, header, rows)
    typer.echo(f"splits: {res.split_note}")
    leak = res.report["leakage"]
    typer.echo(
        "leakage check: "
        + ("passed" if leak["passed"] else "FAILED")
        + f" ({leak['groups_straddling_splits']} groups and "
        f"{leak['duplicate_or_patient_groups_straddling_splits']} patient-or-copy groups in "
        f"several splits; {leak['test_images_with_a_copy_outside_test']} test images with a "
        "copy outside test)"
    )
    for w in res.report["warnings"]:
        if w.startswith("LEAKAGE"):
            typer.secho(f"WARNING: {w}", err=True, fg="red", bold=True)
        elif "could not be read" not in w:
            typer.echo(f"warning: {w}", err=True)
    if len(res.rejected):
        typer.echo(
            f"{len(res.rejected)} file(s) could not be read: see {out / 'rejected.csv'}", err=True
        )
        for _, r in res.rejected.head(5).iterrows():
            typer.echo(f"  {r['path']}: {r['reason']}", err=True)
    typer.echo(f"report: {out / 'data_report.md'} (and data_report.json)")


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


@app.command(
    epilog="Examples:\n\n"
    "  pneumoscope calibrate --run runs/r18 --data work/data128\n\n"
    "  pneumoscope calibrate --run runs/r18 --data work/data128 --policy sensitivity "
    "--target-sensitivity 0.95\n\n"
    "  pneumoscope calibrate --run runs/r18 --data work/data128 --policy cost --cost-fn 10",
)
def calibrate(
    run: Path = typer.Option(..., help="Run folder made by 'pneumoscope train'."),
    data: Path = typer.Option(..., help="Prepared data folder; its val split is used."),
    policy: str = typer.Option(
        "youden", help="Threshold policy: youden | f1 | cost | sensitivity."
    ),
    cost_fn: float = typer.Option(5.0, help="Cost of a missed pneumonia (policy cost)."),
    cost_fp: float = typer.Option(1.0, help="Cost of a false alarm (policy cost)."),
    target_sensitivity: float = typer.Option(
        0.95, help="Minimum sensitivity (policy sensitivity)."
    ),
    views: int = typer.Option(
        None,
        help="Also score this many copies of each validation image under the run's training "
        "augmentation (seeded) and choose the threshold on all of them, so it holds up when "
        "field of view, position or exposure vary. The temperature is still fitted on the "
        "plain images. Default: the run's training setting (threshold_views), else 0.",
    ),
) -> None:
    """Fit temperature scaling on validation logits, then choose the threshold on the
    calibrated validation probabilities; writes RUN/calibration.json, which predict and
    evaluate read. Training already ends with the default (youden) calibration."""
    from pneumoscope.evaluation.calibration import calibrate as run_cal

    c = run_cal(run, data, policy, cost_fn, cost_fp, target_sensitivity, views=views)
    b, a = c["validation"]["before"], c["validation"]["after"]
    _echo_table(
        f"validation (n={c['validation']['n']}), temperature {c['temperature']:.3f}",
        ["", "NLL", "ECE", "Brier", "AUROC"],
        [
            [name, f"{d['nll']:.4f}", f"{d['ece']:.4f}", f"{d['brier']:.4f}", f"{d['auroc']:.4f}"]
            for name, d in (("before", b), ("after", a))
        ],
    )
    at = c["validation"]["at_threshold"]
    tv = c.get("threshold_views")
    if tv:
        typer.echo(
            f"threshold chosen on {tv['n_scored']} scores: the validation images plus "
            f"{tv['views']} augmented views of each (views AUROC {tv['views_auroc']:.4f})"
        )
    typer.echo(
        f"threshold {c['threshold']:.4f} ({policy}): validation sensitivity "
        f"{at['sensitivity']:.3f}, specificity {at['specificity']:.3f}; "
        f"written to {run / 'calibration.json'}"
    )
    if c.get("temperature_warning"):
        typer.echo(f"warning: {c['temperature_warning']}", err=True)


@app.command(
    epilog="Examples:\n\n  pneumoscope evaluate --run runs/r18 --data work/data128 --split test"
    "\n\n  pneumoscope evaluate --run runs/r18 --data work/data128 --split val --out eval_val",
)
def evaluate(
    run: Path = typer.Option(..., help="Run folder made by 'pneumoscope train'."),
    data: Path = typer.Option(..., help="Prepared data folder (same --img-size and CLAHE)."),
    split: str = typer.Option("test", help="train | val | test."),
    out: Path = typer.Option(
        None, help="Where to write metrics.json, plots and report.html (default: RUN)."
    ),
    bootstrap: int = typer.Option(1000, help="Bootstrap replicates for 95% intervals (0 = none)."),
    seed: int = typer.Option(0, help="Seed of the bootstrap."),
) -> None:
    """Metrics with 95% bootstrap intervals (resampling patients), per source and age group
    where known, operating points of every threshold policy, every image's probability and
    outcome (predictions_SPLIT.csv), plots and report.html with the most confident errors."""
    from pneumoscope.evaluation.evaluate import evaluate as run_eval
    from pneumoscope.evaluation.metrics import METRIC_LABELS

    m = run_eval(run, data, split, out, n_boot=bootstrap, seed=seed)
    ci = m.get("ci", {})
    rows = [
        [label, f"{m[k]:.4f}", "" if k not in ci else f"{ci[k][0]:.4f} - {ci[k][1]:.4f}"]
        for k, label in METRIC_LABELS.items()
    ]
    _echo_table(
        f"{split} split, n={m['n']} ({m['n_normal']} NORMAL, {m['n_pneumonia']} "
        f"PNEUMONIA), threshold {m['threshold']:.3f}",
        ["metric", "value", "95% CI"],
        rows,
    )
    (tn, fp), (fn, tp) = m["confusion_matrix"]
    typer.echo(
        f"confusion matrix: TN {tn}  FP {fp}  FN {fn}  TP {tp}; "
        f"written to {(out or run) / 'metrics.json'} and report.html"
    )


@app.command(
    epilog="Example:\n\n  pneumoscope compare runs/seed_cnn runs/r18 --out compare.md",
)
def compare(
    runs: list[Path] = typer.Argument(..., help="Run folders, each evaluated already."),
    out: Path = typer.Option(Path("compare.md"), help="Markdown table to write."),
) -> None:
    """Runs' evaluation metrics side by side (value and 95% CI)."""
    from pneumoscope.evaluation.compare import compare as run_compare
    from pneumoscope.evaluation.compare import transpose

    header, body = transpose(run_compare(runs, out))
    _echo_table("runs compared: value (95% CI)", header, body)
    typer.echo(f"written to {out}")


@app.command(
    epilog="Examples:\n\n"
    "  pneumoscope predict --run runs/r18 scans/ --out predictions.csv\n\n"
    "  pneumoscope predict --run runs/r18 'scans/**/*.dcm' list.csv --backend onnx --out p.csv"
    "\n\n  pneumoscope predict --run runs/r18 one.png --gradcam heatmaps/",
)
def predict(
    inputs: list[str] = typer.Argument(
        ...,
        help="Image files (JPEG, PNG, DICOM), folders "
        "(searched recursively), quoted glob patterns, or a "
        ".csv listing paths (column 'path').",
    ),
    run: Path = typer.Option(..., help="Run folder made by 'pneumoscope train'."),
    out: Path = typer.Option(Path("predictions.csv"), help="CSV to write."),
    batch_size: int = typer.Option(32, help="Images per inference batch."),
    workers: int = typer.Option(0, help="Decoding threads (0 = all cores)."),
    backend: str = typer.Option(
        "torch", help="torch | onnx | onnx-int8 (after 'pneumoscope export')."
    ),
    gradcam: Path = typer.Option(
        None, help="Also write a Grad-CAM heatmap PNG per input into this folder."
    ),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """One CSV row per input: path, probability (calibrated), label, threshold, model_id,
    ood, ood_score, status, error.

    Preprocessing is read from the run's model.json. ood is true when the image lies far
    from the training images (ood_score >= 1). Unreadable inputs get an error row and the
    exit status is 1 when any input failed."""
    from pneumoscope.inference.predict import predict_to_csv

    counts = predict_to_csv(
        run,
        inputs,
        out,
        batch_size=batch_size,
        workers=workers or None,
        backend=backend,
        gradcam_dir=gradcam,
        progress=progress,
    )
    typer.echo(
        f"{counts.ok} predicted ({counts.flagged_ood} flagged out-of-distribution), "
        f"{counts.failed} failed; written to {out}"
    )
    if counts.failed:
        raise typer.Exit(1)


@app.command(
    epilog="Examples:\n\n  pneumoscope explain --run runs/r18 scans/ --out heatmaps/\n\n"
    "  pneumoscope explain --run runs/r18 'scans/*.png' --out heatmaps/",
)
def explain(
    inputs: list[str] = typer.Argument(..., help="Image files, folders, globs or a .csv list."),
    run: Path = typer.Option(..., help="Run folder made by 'pneumoscope train'."),
    out: Path = typer.Option(
        ..., help="Folder for one heatmap PNG per input and explanations.csv."
    ),
) -> None:
    """Grad-CAM heatmaps (pytorch-grad-cam) over each X-ray, for the PNEUMONIA logit."""
    from pneumoscope.inference.explain import explain_files
    from pneumoscope.inference.predict import expand_inputs

    rows = explain_files(run, expand_inputs(inputs), out)
    failed = sum(r["status"] != "ok" for r in rows)
    typer.echo(f"{len(rows) - failed} heatmaps, {failed} failed; written to {out}")
    if failed:
        raise typer.Exit(1)


@app.command(
    epilog="Examples:\n\n  pneumoscope export --run runs/r18 --data work/data128\n\n"
    "  pneumoscope export --run runs/r18 --data work/data128 --int8",
)
def export(
    run: Path = typer.Option(..., help="Run folder made by 'pneumoscope train'."),
    data: Path = typer.Option(
        None,
        help="Prepared data whose validation images check the "
        "export (default: the run's training data).",
    ),
    format: str = typer.Option("onnx", "--format", help="Export format (onnx)."),
    int8: bool = typer.Option(False, help="Also write a dynamically quantised int8 model."),
) -> None:
    """ONNX export with a dynamic batch size, checked against PyTorch (max |logit
    difference| <= 1e-4) on real images; 'predict --backend onnx' uses it."""
    from pneumoscope.data.cache import open_cache
    from pneumoscope.inference.export import export_onnx
    from pneumoscope.model.run import read_card

    if format != "onnx":
        raise UserError(f"--format must be onnx, got '{format}'")
    data = data or Path(read_card(run)["training_data"]["cache"])
    cache = open_cache(data)
    rows = cache.split("val")["index"].to_numpy()[:64]
    info = export_onnx(run, quantize=int8, check_images=np.asarray(cache.images[rows]))
    typer.echo(
        f"exported {info['paths']['onnx']}: max |logit difference| vs PyTorch "
        f"{info['max_abs_diff_logit']:.1e} on {info['n_checked']} validation images"
    )
    if int8:
        q = info["int8"]
        typer.echo(
            f"int8 ({', '.join(q['ops'])} quantised): {info['paths']['int8']}, max "
            f"|logit difference| {q['max_abs_diff_logit']:.3f}"
        )


def main() -> None:
    try:
        app()
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
