"""`pneumoscope pacs predict`: studies fetched from a PACS over DICOMweb, predicted, and
their DICOM results stored back; `predict` itself takes files."""

from __future__ import annotations

from pathlib import Path

import typer

from pneumoscope.cli.base import app
from pneumoscope.cli.predict import ALLOW_HELP, echo_counts, echo_results, report_scan

pacs_app = typer.Typer(
    help="Hospital systems: predict studies from a PACS (DICOMweb) and store the results.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(pacs_app, name="pacs")


@pacs_app.command(
    "predict",
    epilog="Examples:\n\n"
    "  pneumoscope pacs predict --run runs/r18 --url http://pacs:8042/dicom-web "
    "--study 1.2.3.4 --store\n\n"
    "  pneumoscope pacs predict --run runs/r18 --url http://pacs:8042/dicom-web "
    "--date 20261201-20261203 --modality CR,DX --out p.csv\n\n"
    "  PNEUMOSCOPE_DICOMWEB_TOKEN=... pneumoscope pacs predict --run runs/r18 "
    "--url https://pacs.example/dicom-web --study 1.2.3.4 --dicom-out results/",
)
def pacs_predict(
    run: Path = typer.Option(..., help="Run folder made by 'pneumoscope train'."),
    url: str = typer.Option(..., help="DICOMweb root of the PACS, e.g. http://pacs:8042/dicom-web."),
    study: list[str] = typer.Option(None, help="A Study Instance UID (repeatable)."),
    date: str = typer.Option(None, help="Studies of a date or range (YYYYMMDD[-YYYYMMDD])."),
    modality: str = typer.Option(
        "CR,DX", help="Modalities to fetch and to query (others: skipped rows)."
    ),
    store: bool = typer.Option(False, help="Send each film's SR and capture back (STOW-RS)."),
    dicom_out: Path = typer.Option(
        None, help="Also keep each film's SR and capture here (DIR/<StudyUID>/<SOPUID>.dcm)."
    ),
    out: Path = typer.Option(Path("predictions.csv"), help="CSV to write, one row a film."),
    backend: str = typer.Option(
        "torch", help="torch | torch-bf16 | onnx | onnx-int8 | openvino | auto (as 'predict')."
    ),
    allow: list[str] = typer.Option(None, "--allow", metavar="RULE", help=ALLOW_HELP),
    token_file: Path = typer.Option(None, help="File with a bearer token for the PACS."),
    auth_file: Path = typer.Option(None, help="File with 'user:password' for the PACS."),
) -> None:
    """One CSV row per instance of the studies (--study, or found by --date), named
    StudyUID/SOPUID, from the same predictor as 'predict': the intended-use rules decide
    what is analysed, other objects get skipped rows. Credentials come from --token-file,
    --auth-file or PNEUMOSCOPE_DICOMWEB_TOKEN / _USER and _PASSWORD, never from the command
    line. The exit status is 1 when any film failed."""
    from pneumoscope.model.run import load_run
    from pneumoscope.pacs import dicomweb as dw
    from pneumoscope.pacs.studies import predict_studies, study_uids

    loaded = load_run(run)
    creds = dw.load_credentials(token_file=token_file, basic_auth_file=auth_file)
    with dw.connect(url, credentials=creds) as server:
        uids = study_uids(server, study or [], date, modality)
        done = predict_studies(
            loaded, server, uids, out, backend=backend, allow=allow or (),
            modalities=dw.parse_modalities(modality), store=store, dicom_out=dicom_out,
        )  # fmt: skip
    typer.echo(f"{done.studies} studies from {url}")
    echo_counts(done.counts, out)
    report_scan([], None, done.counts.notes)
    if store or dicom_out:
        echo_results(done.results, dicom_out)
    if store:
        typer.echo(f"stored {done.stored} DICOM results in their studies on {url}")
        for line in done.store_errors:
            typer.echo(f"not stored: {line}", err=True)
    if done.counts.failed:
        raise typer.Exit(1)
