"""`pneumoscope predict | explain | export`: a run applied to files, heatmaps, ONNX."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from pneumoscope.cli.base import app
from pneumoscope.core.errors import UserError


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
    from pneumoscope.model.contract import read_card

    if format != "onnx":
        raise UserError(f"--format must be onnx, got '{format}'")
    data = data or Path(read_card(run).training_data.cache)
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
