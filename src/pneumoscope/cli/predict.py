"""`pneumoscope predict | explain | export`: a run applied to files, heatmaps, ONNX."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from pneumoscope.cli.base import app
from pneumoscope.core.errors import UserError

ALLOW_HELP = (
    "Relax an intended-use rule for DICOM inputs (repeatable): modality (other than "
    "CR/DX/chest captures), body-part (other than chest), view (lateral), multiframe "
    "(first frame), age (outside the training population's)."
)


def _report_scan(not_images: list[str], listed: Path | None, notes: list[str]) -> None:
    """On stderr: the files a folder scan left out, and what could not be checked."""
    if not_images:
        shown = ", ".join(Path(p).name for p in not_images[:5])
        more = f" and {len(not_images) - 5} more" if len(not_images) > 5 else ""
        where = f" (listed in {listed})" if listed else ""
        noun = "file that is not an image" if len(not_images) == 1 else "files that are not images"
        typer.echo(f"skipped {len(not_images)} {noun}: {shown}{more}{where}", err=True)
    for note in notes:
        typer.echo(f"note: {note}", err=True)


@app.command(
    epilog="Examples:\n\n"
    "  pneumoscope predict --run runs/r18 scans/ --out predictions.csv\n\n"
    "  pneumoscope predict --run runs/r18 'scans/**/*.dcm' list.csv --backend onnx --out p.csv"
    "\n\n  pneumoscope predict --run runs/r18 one.png --gradcam heatmaps/"
    "\n\n  pneumoscope predict --run runs/r18 /media/cdrom/DICOMDIR --allow age --out p.csv",
)
def predict(
    inputs: list[str] = typer.Argument(
        ...,
        help="Image files (JPEG, PNG, DICOM), folders (searched recursively, files "
        "recognised by content, so a PACS export without extensions works), a DICOMDIR "
        "(its files), quoted glob patterns, or a .csv listing paths (column 'path').",
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
    allow: list[str] = typer.Option(None, "--allow", metavar="RULE", help=ALLOW_HELP),
) -> None:
    """One CSV row per input: path, probability (calibrated), label, threshold, model_id,
    ood, ood_score, status, error.

    Preprocessing is read from the run's model.json. ood is true when the image lies far
    from the training images (ood_score >= 1). status is ok, error (unreadable),
    skipped (a DICOM object that is no image: report, presentation state, DICOMDIR, ...)
    or out_of_scope (a DICOM the model was not made for: its modality, body part, view,
    frames or the patient's age; error says which rule and how to relax it). Files a
    folder scan finds to be no image are listed in OUT.skipped.txt. The exit status is 1
    when any input failed."""
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
        allow=allow or (),
    )
    typer.echo(
        f"{counts.ok} predicted ({counts.flagged_ood} flagged out-of-distribution), "
        f"{counts.failed} failed, {counts.out_of_scope} out of scope, {counts.skipped} "
        f"skipped; written to {out}"
    )
    _report_scan(counts.not_images, counts.skipped_list, counts.notes)
    if counts.failed:
        raise typer.Exit(1)


@app.command(
    epilog="Examples:\n\n  pneumoscope explain --run runs/r18 scans/ --out heatmaps/\n\n"
    "  pneumoscope explain --run runs/r18 'scans/*.png' --out heatmaps/",
)
def explain(
    inputs: list[str] = typer.Argument(
        ..., help="Image files, folders (by content), a DICOMDIR, globs or a .csv list."
    ),
    run: Path = typer.Option(..., help="Run folder made by 'pneumoscope train'."),
    out: Path = typer.Option(
        ..., help="Folder for one heatmap PNG per input and explanations.csv."
    ),
    allow: list[str] = typer.Option(None, "--allow", metavar="RULE", help=ALLOW_HELP),
) -> None:
    """Grad-CAM heatmaps (pytorch-grad-cam) over each X-ray, for the PNEUMONIA logit.
    DICOM inputs meet the same intended-use rules as in 'predict'."""
    from pneumoscope.inference.explain import explain_files
    from pneumoscope.inference.intended_use import IntendedUse
    from pneumoscope.inference.predict import scan_inputs, write_skipped_list
    from pneumoscope.model.run import load_run

    loaded = load_run(run)
    scope = IntendedUse.from_card(loaded.card, allow or ())
    found = scan_inputs(inputs)
    rows = explain_files(loaded, found.paths, out, scope=scope)
    listed = write_skipped_list(found, Path(out) / "skipped.txt")
    failed = sum(r["status"] == "error" for r in rows)
    refused = sum(r["status"] in ("skipped", "out_of_scope") for r in rows)
    typer.echo(
        f"{len(rows) - failed - refused} heatmaps, {failed} failed, {refused} skipped or out "
        f"of scope; written to {out}"
    )
    _report_scan(found.not_images, listed, found.notes + scope.notes_for_inputs())
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
