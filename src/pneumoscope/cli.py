"""Command line: `pneumoscope data prepare | train | evaluate | predict`.

A user mistake ends with one line on stderr (``error: what, where, what to do``) and
exit status 2; heavy libraries are imported inside the commands so --help is instant.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import typer

from .errors import UserError

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
    "  pneumoscope data prepare --source ~/chest_xray --out work/data128 --img-size 128 --no-clahe",
)
def data_prepare(
    source: Path = typer.Option(
        ...,
        help="Folder with NORMAL/ and PNEUMONIA/, or with "
        "train|val|test/ holding them (the Kaggle layout).",
    ),
    out: Path = typer.Option(
        ...,
        help="Output folder for the cache (images.npy, manifest.csv, rejected.csv, cache.json).",
    ),
    img_size: int = typer.Option(224, help="Square side in pixels after resizing."),
    clahe: bool = typer.Option(True, help="Contrast-limited adaptive histogram equalisation."),
    val_fraction: float = typer.Option(
        0.1,
        help="Validation share carved from train (grouped "
        "by patient, stratified by label) when no usable val "
        "split is given.",
    ),
    seed: int = typer.Option(0, help="Seed of the validation split."),
    workers: int = typer.Option(0, help="Decoding processes (0 = all cores)."),
) -> None:
    """Decode every image once into a memory-mapped cache with leak-free splits.

    Unreadable files are listed in rejected.csv with their reason; they never stop the run.
    """
    from .prepare import prepare
    from .preprocess import PreprocessConfig

    res = prepare(
        source,
        out,
        PreprocessConfig(img_size=img_size, clahe=clahe),
        val_fraction=val_fraction,
        seed=seed,
        workers=workers or None,
    )
    from .cache import counts_table

    counts = counts_table(res.manifest)
    _echo_table(
        f"dataset in {out}",
        ["split", "NORMAL", "PNEUMONIA", "total"],
        [[s, c["NORMAL"], c["PNEUMONIA"], c["total"]] for s, c in counts.items()],
    )
    typer.echo(f"splits: {res.split_note}")
    if len(res.rejected):
        typer.echo(
            f"{len(res.rejected)} file(s) could not be read: see {out / 'rejected.csv'}", err=True
        )
        for _, r in res.rejected.head(5).iterrows():
            typer.echo(f"  {r['path']}: {r['reason']}", err=True)


@app.command(
    epilog="Examples:\n\n"
    "  pneumoscope train --data work/data128 --out runs/r18 --model resnet18 --epochs 20\n\n"
    "  pneumoscope train --data work/data150 --out runs/cnn --model seed_cnn --imbalance sampler",
)
def train(
    data: Path = typer.Option(..., help="A folder made by 'pneumoscope data prepare'."),
    out: Path = typer.Option(..., help="Run folder to write (weights, model.json, history)."),
    model: str = typer.Option(
        "resnet18",
        help="'seed_cnn' (the Keras design's 5-block CNN) or "
        "any timm model name (resnet18, efficientnet_b0, ...).",
    ),
    epochs: int = typer.Option(25, help="Maximum epochs (early stopping may end sooner)."),
    batch_size: int = typer.Option(32, help="Images per step."),
    lr: float = typer.Option(1e-3, help="Peak AdamW learning rate (warm-up, then cosine)."),
    weight_decay: float = typer.Option(0.05, help="AdamW weight decay."),
    imbalance: str = typer.Option(
        "pos-weight", help="none | pos-weight | sampler (exactly one compensation, never two)."
    ),
    patience: int = typer.Option(6, help="Early stopping patience on validation AUROC, epochs."),
    max_minutes: float = typer.Option(
        0,
        help="Stop training after this many minutes (0 = no limit); the best epoch so far is kept.",
    ),
    seed: int = typer.Option(0, help="Seed for weights, order and augmentation."),
    threads: int = typer.Option(0, help="CPU threads (0 = all cores)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Train a one-logit classifier; the best epoch is chosen on validation AUROC and the
    decision threshold on validation (Youden), never on test."""
    from .train import TrainConfig
    from .train import train as run_train

    cfg = TrainConfig(
        data=str(data),
        out=str(out),
        model=model,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        imbalance=imbalance,
        patience=patience,
        max_minutes=max_minutes or None,
        seed=seed,
        threads=threads or None,
    )
    card = run_train(cfg, progress=progress)
    v, c = card["val_metrics"], card["calibration"]
    typer.echo(
        f"best epoch {card['best_epoch']}: val AUROC {v['val_auroc']:.4f}; temperature "
        f"{c['temperature']:.3f}, threshold {c['threshold']:.3f} (youden on validation); "
        f"{card['training']['train_seconds']:.0f} s; run in {out}"
    )


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
) -> None:
    """Fit temperature scaling on validation logits, then choose the threshold on the
    calibrated validation probabilities; writes RUN/calibration.json, which predict and
    evaluate read. Training already ends with the default (youden) calibration."""
    from .calibration import calibrate as run_cal

    c = run_cal(run, data, policy, cost_fn, cost_fp, target_sensitivity)
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
    typer.echo(
        f"threshold {c['threshold']:.4f} ({policy}): validation sensitivity "
        f"{at['sensitivity']:.3f}, specificity {at['specificity']:.3f}; "
        f"written to {run / 'calibration.json'}"
    )


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
    where known, operating points of every threshold policy, plots and report.html."""
    from .evaluate import evaluate as run_eval
    from .metrics import METRIC_LABELS

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
    from .compare import compare as run_compare
    from .compare import transpose

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
    from .predict import predict_to_csv

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
    from .explain import explain_files
    from .predict import expand_inputs

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
    from .cache import open_cache
    from .export import export_onnx
    from .runs import read_card

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
