"""`pneumoscope data prepare`: sources to a leak-free, memory-mapped cache."""

from __future__ import annotations

from pathlib import Path

import typer

from pneumoscope.cli.base import data_app, echo_table
from pneumoscope.data.config import DataConfig, resolve_config

# each option's help is its config field's description
HELP = {name: DataConfig.flag_help(name) for name in DataConfig.model_fields}


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
    "  pneumoscope data prepare --source /shared/chest_xray --out /shared/work/data224 "
    "--engine ray --ray-address auto\n\n"
    "Presets (shipped in the package, pneumoscope/presets/data): pediatric; "
    "keras-combined-naive (the Keras design's combination as published: leaks copies of "
    "test images into train, for comparison only); keras-combined-dedup (the same sources, "
    "de-duplicated). Writes images.npy, "
    "manifest.csv, rejected.csv, excluded.csv, dropped.csv, duplicates.csv, "
    "data_report.md/.json, prepare_config.yaml.",
)
def data_prepare(
    source: list[str] = typer.Option(None, help=HELP["sources"]),
    out: Path = typer.Option(..., help="Output folder for the cache and the data report."),
    preset: str = typer.Option(
        None,
        help="Named settings shipped in the package (pneumoscope/presets/data): pediatric | "
        "keras-combined-naive | keras-combined-dedup.",
    ),
    config: Path = typer.Option(
        None, help="YAML file of settings (e.g. an earlier OUT/prepare_config.yaml)."
    ),
    layout: list[str] = typer.Option(None, help=HELP["layout"]),
    covid_as: str = typer.Option(None, help=HELP["covid_as"]),
    rsna_not_normal: str = typer.Option(None, help=HELP["rsna_not_normal"]),
    age_group: list[str] = typer.Option(None, help=HELP["age_group"]),
    split: str = typer.Option(None, help=HELP["split"]),
    val_fraction: float = typer.Option(None, help=HELP["val_fraction"]),
    fractions: str = typer.Option(None, help=HELP["fractions"]),
    straddle: str = typer.Option(None, help=HELP["straddle"]),
    dedupe: str = typer.Option(None, help=HELP["dedupe"]),
    conflicts: str = typer.Option(None, help=HELP["conflicts"]),
    near_threshold: int = typer.Option(None, help=HELP["near_threshold"]),
    img_size: int = typer.Option(None, help=HELP["img_size"]),
    clahe: bool = typer.Option(None, "--clahe/--no-clahe", help=HELP["clahe"]),
    seed: int = typer.Option(None, help=HELP["seed"]),
    workers: int = typer.Option(0, help="Decoding processes (0 = all cores; --engine local)."),
    engine: str = typer.Option(
        "local",
        help="local (this machine's processes) | ray (decoding and hashing as a Ray Data job "
        "on a cluster, the same cache; pip install 'pneumoscope[ray]').",
    ),
    ray_address: str = typer.Option(
        None,
        help="With --engine ray: the cluster (HOST:PORT of the head, ray://HOST:10001, or "
        "auto); default: RAY_ADDRESS, else a local cluster started for the job. The sources "
        "must be at the same paths on every node.",
    ),
) -> None:
    """Combine sources, find duplicates, split without leakage, and decode every image once
    into a memory-mapped cache, with a data report (data_report.md).

    Unreadable files are listed in rejected.csv with their reason; they never stop the run.
    """
    from pneumoscope.core.ray_session import check_engine
    from pneumoscope.data.prepare import prepare_data
    from pneumoscope.data.report import terminal_tables

    check_engine(engine, ray_address)
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
    res = prepare_data(dc, out, workers=workers or None, engine=engine, ray_address=ray_address)
    for title, header, rows in terminal_tables(res.report):
        echo_table(title, header, rows)
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


@data_app.command(
    "download",
    epilog="Examples:\n\n"
    "  pneumoscope data download pediatric\n\n"
    "  pneumoscope data download pneumoniamnist --size 128 --out work/pmnist128\n\n"
    "  pneumoscope data download pediatric --from ~/Downloads/ChestXRay2017.zip\n\n"
    "  pneumoscope data download rsna   (prints the Kaggle steps)\n\n"
    "Sets: pediatric (Kermany et al. 2018, Mendeley Data doi:10.17632/rscbjbr9sj.2, CC BY "
    "4.0, about 1.2 GB); pneumoniamnist (MedMNIST, Zenodo record 10519652, CC BY 4.0, 28/64/"
    "128/224 px, checked against MedMNIST's MD5); rsna (Kaggle account needed). Downloads "
    "are cached in ~/.cache/pneumoscope (PNEUMOSCOPE_CACHE), resume after an interruption "
    "and are unpacked atomically; running the command again does nothing. Prints the "
    "folder to give to `data prepare --source` on stdout.",
)
def data_download(
    name: str = typer.Argument(..., help="pediatric | pneumoniamnist | rsna."),
    out: Path = typer.Option(
        None,
        help="Folder to leave the set in, as `data prepare --source` reads it (default: "
        "CACHE/datasets/NAME).",
    ),
    from_file: Path = typer.Option(
        None,
        "--from",
        help="The set's archive fetched elsewhere (ChestXRay2017.zip, pneumoniamnist_64.npz, "
        "the Kaggle zip): checked and unpacked, nothing downloaded.",
    ),
    size: int = typer.Option(
        None, help="pneumoniamnist only: image size, 28 | 64 | 128 | 224 (default 64)."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bars."),
) -> None:
    """Download a public chest X-ray set, check it, and unpack it into a folder that
    `pneumoscope data prepare --source` reads as it is; its licence and citation go into
    the folder (pneumoscope-dataset.json) and into the data report."""
    from pneumoscope.data.public.catalog import MARKER, get_set
    from pneumoscope.data.public.download import already_there, cached_file, download, kaggle_steps

    ps = get_set(name)
    ready = already_there(ps.name, out, size)
    if ready is None and ps.kind == "kaggle" and from_file is None and not cached_file(ps):
        typer.echo(kaggle_steps())
        return
    ready = ready or download(ps.name, out, from_file, size, progress=progress)
    state = "ready" if ready.fresh else "already there"
    typer.echo(
        f"{ps.name}: {state} in {ready.path} ({ps.licence}; licence and citation in "
        f"{MARKER} there)",
        err=True,
    )
    # a MedMNIST file is prepared at its own size (32 px at least, the smallest cache)
    at = f" --img-size {max(32, int(ready.variant))}" if ready.variant else ""
    typer.echo(
        f"next: pneumoscope data prepare --source {ready.path} --out work/{ready.path.name}{at}",
        err=True,
    )
    typer.echo(str(ready.path))
