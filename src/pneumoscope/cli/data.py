"""`pneumoscope data prepare`: sources to a leak-free, memory-mapped cache."""

from __future__ import annotations

from pathlib import Path

import typer

from pneumoscope.cli.base import data_app, echo_table


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
