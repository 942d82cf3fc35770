"""`pneumoscope predict | explain | export`: a run applied to files, heatmaps, ONNX."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from pneumoscope.cli.base import app
from pneumoscope.core.errors import UserError

ALLOW_HELP = (
    "Relax an intended-use rule (repeatable): modality (other than CR/DX/chest captures), "
    "body-part (other than chest), view (lateral), multiframe (first frame) for DICOM "
    "inputs; age (outside the training population's: from the DICOM header, else "
    "estimated from the image by the population check)."
)


def report_scan(not_images: list[str], listed: Path | None, notes: list[str]) -> None:
    """On stderr: the files a folder scan left out, and what could not be checked."""
    if not_images:
        shown = ", ".join(Path(p).name for p in not_images[:5])
        more = f" and {len(not_images) - 5} more" if len(not_images) > 5 else ""
        where = f" (listed in {listed})" if listed else ""
        noun = "file that is not an image" if len(not_images) == 1 else "files that are not images"
        typer.echo(f"skipped {len(not_images)} {noun}: {shown}{more}{where}", err=True)
    for note in notes:
        typer.echo(f"note: {note}", err=True)


MOVED = (
    "predicting from a PACS is its own command now: pneumoscope pacs predict --run RUN "
    "--url URL --study UID (see 'pneumoscope pacs predict --help')"
)
ENGINE_HELP = (
    "local (this machine) | ray (a Ray Data job on a cluster: each worker decodes its files "
    "and runs the run's ONNX model, exported first when the run has none; the int8 model "
    "with --backend onnx-int8 or auto; same rows; pip install 'pneumoscope[ray]')."
)
RAY_ADDRESS_HELP = (
    "With --engine ray: the cluster (HOST:PORT of the head, ray://HOST:10001, or auto); "
    "default: RAY_ADDRESS, else a local cluster started for the job. The inputs must be "
    "at the same paths on every node."
)
SHARD_HELP = (
    "I/N: predict only the I-th of N parts of the inputs (counted from 1: 1/N ... N/N), "
    "for job arrays without Ray. The parts are consecutive blocks of the input list in "
    "the order an unsharded run writes it (folders sorted by path), so the N outputs "
    "together are the whole run, in its order; merge them with "
    "awk 'FNR > 1 || NR == 1' out.{1..N}.csv > predictions.csv."
)


@app.command(
    epilog="Examples:\n\n"
    "  pneumoscope predict --run runs/r18 scans/ --out predictions.csv\n\n"
    "  pneumoscope predict --run runs/r18 'scans/**/*.dcm' list.csv --backend onnx --out p.csv"
    "\n\n  pneumoscope predict --run runs/r18 one.png --gradcam heatmaps/"
    "\n\n  pneumoscope predict --run runs/r18 /media/cdrom/DICOMDIR --allow age --out p.csv"
    "\n\n  pneumoscope predict --run runs/r18 pacs_export/ --dicom-out results/"
    "\n\n  pneumoscope predict --run runs/r18 /data/films --engine ray --ray-address auto "
    "--out p.parquet"
    "\n\n  pneumoscope predict --run runs/r18 /data/films --shard $SLURM_ARRAY_TASK_ID/8 "
    "--out p.$SLURM_ARRAY_TASK_ID.csv",
)
def predict(
    inputs: list[str] = typer.Argument(
        None,
        help="Image files (JPEG, PNG, DICOM), folders (searched recursively, files "
        "recognised by content, so a PACS export without extensions works), a DICOMDIR "
        "(its files), quoted glob patterns, or a .csv listing paths (column 'path').",
    ),
    run: Path = typer.Option(..., help="Run folder made by 'pneumoscope train'."),
    out: Path = typer.Option(
        Path("predictions.csv"), help="CSV to write (a .parquet name writes Parquet)."
    ),
    batch_size: int = typer.Option(32, help="Images per inference batch."),
    workers: int = typer.Option(0, help="Decoding threads (0 = all cores; --engine local)."),
    backend: str = typer.Option(
        "torch",
        help="torch | torch-bf16 | onnx | onnx-int8 | openvino | auto (onnx*, openvino: "
        "after 'pneumoscope export'; auto: the fastest this CPU and run allow).",
    ),
    gradcam: Path = typer.Option(
        None, help="Also write a Grad-CAM heatmap PNG per input into this folder."
    ),
    progress: bool = typer.Option(True, help="Show a progress bar."),
    engine: str = typer.Option("local", help=ENGINE_HELP),
    ray_address: str = typer.Option(None, help=RAY_ADDRESS_HELP),
    shard: str = typer.Option(None, metavar="I/N", help=SHARD_HELP),
    allow: list[str] = typer.Option(None, "--allow", metavar="RULE", help=ALLOW_HELP),
    dicom_out: Path = typer.Option(
        None,
        help="For each DICOM film: a DICOM SR and a secondary capture (Grad-CAM, result burned "
        "in) joining its study, written as DIR/<StudyUID>/<SOPUID>.dcm.",
    ),
    dicomweb: str = typer.Option(None, hidden=True),  # moved to `pacs predict`: says so
) -> None:
    """One CSV row per input: path, probability (calibrated), label, threshold, model_id,
    ood, ood_score, status, error, note, estimated_age_group, adult_probability.

    Preprocessing is read from the run's model.json. ood is true when the image lies far
    from the training images (ood_score >= 1). status is ok, error (unreadable),
    skipped (a DICOM object that is no image: report, presentation state, DICOMDIR, ...)
    or out_of_scope (a film the model was not made for: a DICOM's modality, body part,
    view or frames, or the patient's age: the header's, else the age group the population
    check estimates from the image (estimated_age_group, adult_probability); error says
    which rule and how to relax it). Files a
    folder scan finds to be no image are listed in OUT.skipped.txt. Studies in a PACS:
    'pneumoscope pacs predict'. The exit status is 1 when any input failed."""
    from pneumoscope.core.ray_session import check_engine
    from pneumoscope.inference.shards import parse_shard
    from pneumoscope.model.run import load_run

    if dicomweb:
        raise UserError(MOVED)
    check_engine(engine, ray_address)
    shard = parse_shard(shard)
    if not inputs:
        raise UserError(
            "no inputs: give image files, folders, globs or a CSV list "
            "(studies in a PACS: pneumoscope pacs predict)"
        )
    options = (batch_size, workers, backend, gradcam, progress, engine, ray_address, shard)
    counts = _predict_files(load_run(run), inputs, out, options, allow, dicom_out)
    if counts.failed:
        raise typer.Exit(1)


def _predict_files(loaded, inputs, out, options, allow, dicom_out):
    from pneumoscope.inference.predict import predict_to_csv

    batch_size, workers, backend, gradcam, progress, engine, ray_address, shard = options
    kept = []
    counts = predict_to_csv(
        loaded,
        inputs,
        out,
        batch_size=batch_size,
        workers=workers or None,
        backend=backend,
        gradcam_dir=gradcam,
        progress=progress,
        allow=allow or (),
        on_row=kept.append if dicom_out else None,
        engine=engine,
        ray_address=ray_address,
        shard=shard,
    )
    echo_counts(counts, out)
    report_scan(counts.not_images, counts.skipped_list, counts.notes)
    if dicom_out:
        from pneumoscope.inference.predictor import Predictor
        from pneumoscope.pacs.results import write_dicom_outputs

        predictor = Predictor.from_run(loaded, backend, allow or ())
        echo_results(write_dicom_outputs(predictor, kept, dicom_out), dicom_out)
    return counts


def echo_counts(counts, out: Path) -> None:
    typer.echo(
        f"{counts.ok} predicted ({counts.flagged_ood} flagged out-of-distribution), "
        f"{counts.failed} failed, {counts.out_of_scope} out of scope, {counts.skipped} "
        f"skipped; written to {out}"
    )


def echo_results(results, where: Path | None) -> None:
    typer.echo(results.summary() + (f"; in {where}" if where else ""))
    for path, why in results.errors:
        typer.echo(f"no DICOM result for {path}: {why}", err=True)


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
    backend: str = typer.Option(
        "torch",
        help="torch (Grad-CAM) | onnx | onnx-int8 | auto: an exported run's class activation "
        "map, Grad-CAM's map for a global-pooling + linear head (no PyTorch needed).",
    ),
) -> None:
    """Heatmaps over each X-ray, for the PNEUMONIA logit: Grad-CAM (pytorch-grad-cam), or
    an exported run's class activation map. DICOM inputs meet the same intended-use rules
    as in 'predict'."""
    from pneumoscope.inference.explain import explain_files
    from pneumoscope.inference.inputs import scan_inputs, write_skipped_list
    from pneumoscope.inference.intended_use import IntendedUse
    from pneumoscope.model.population_check import check_folder
    from pneumoscope.model.run import load_run

    loaded = load_run(run)
    scope = IntendedUse.from_card(loaded.card, allow or (), check_folder(loaded.root))
    found = scan_inputs(inputs)
    rows = explain_files(loaded, found.paths, out, scope=scope, backend=backend)
    listed = write_skipped_list(found, Path(out) / "skipped.txt")
    failed = sum(r["status"] == "error" for r in rows)
    refused = sum(r["status"] in ("skipped", "out_of_scope") for r in rows)
    typer.echo(
        f"{len(rows) - failed - refused} heatmaps, {failed} failed, {refused} skipped or out "
        f"of scope; written to {out}"
    )
    report_scan(found.not_images, listed, found.notes + scope.notes_for_inputs())
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
        help="Prepared data whose validation images check (and calibrate) the "
        "export (default: the run's training data).",
    ),
    format: str = typer.Option("onnx", "--format", help="Export format (onnx)."),
    int8: bool = typer.Option(
        False,
        help="Also write a static int8 model (model.int8.onnx: QDQ, convolutions included, "
        "per-channel weights, calibrated on validation images) for --backend onnx-int8 "
        "and openvino; refused if it differs from float32 beyond tolerance.",
    ),
    calib_images: int = typer.Option(
        256, help="Validation images (a seeded sample) that calibrate the int8 model."
    ),
    max_auroc_change: float = typer.Option(0.002, help="int8 tolerance: validation AUROC."),
    max_prob_change: float = typer.Option(0.05, help="int8 tolerance: any probability."),
    max_flip_fraction: float = typer.Option(
        0.01, help="int8 tolerance: fraction of calls flipped at the run's threshold."
    ),
) -> None:
    """ONNX export with a dynamic batch size, checked against PyTorch (max |logit
    difference| <= 1e-4) on real images; 'predict --backend onnx' uses it. Each model is
    compared with float32 torch on the validation split (AUROC change, largest probability
    change, calls flipped at the run's threshold); an int8 model beyond AUROC +-0.002,
    probability +-0.05 or 1% of calls flipped is refused. The figures go to export.json."""
    from pneumoscope.data.cache import open_cache
    from pneumoscope.inference.export import MAX_FIDELITY, export_onnx
    from pneumoscope.inference.fidelity import Tolerance
    from pneumoscope.model.contract import read_card

    if format != "onnx":
        raise UserError(f"--format must be onnx, got '{format}'")
    if calib_images < 1:
        raise UserError("--calib-images must be at least 1")
    data = data or Path(read_card(run).training_data.cache)
    cache = open_cache(data)
    val = cache.split("val").iloc[:MAX_FIDELITY]
    info = export_onnx(
        run,
        quantize=int8,
        check_images=np.asarray(cache.images[val["index"].to_numpy()]),
        check_labels=val["label"].to_numpy(),
        calib_n=calib_images,
        tolerance=Tolerance(max_auroc_change, max_prob_change, max_flip_fraction),
    )
    typer.echo(
        f"exported {info['paths']['onnx']}: max |logit difference| vs PyTorch "
        f"{info['max_abs_diff_logit']:.1e} on {info['n_checked']} validation images"
    )
    if int8:
        typer.echo(f"int8 (static QDQ): {info['paths']['int8']}, {_figures(info['int8'])}")
        ov = info["int8"].get("openvino")
        if ov:
            typer.echo(f"  under OpenVINO: {ov.get('refused') or _figures(ov)}")


def _figures(q: dict) -> str:
    """One line of the int8 model's fidelity figures."""
    f = q.get("fidelity", q)
    auc = "n/a" if f["auroc_change"] is None else f"{f['auroc_change']:+.4f}"
    return (
        f"AUROC change {auc}, max |probability difference| {f['max_prob_diff']:.4f}, "
        f"{f['flips']} of {f['n_images']} calls flipped vs float32"
    )
