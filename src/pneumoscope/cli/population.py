"""`pneumoscope population retrain | show`: the population check (a young child's film or an
adult's?), trained again on a prepared dataset, and what a check's card says."""

from __future__ import annotations

from pathlib import Path

import typer

from pneumoscope.cli.base import app, echo_table
from pneumoscope.core.errors import UserError

population_app = typer.Typer(
    help="The population check: is a film a young child's (like the training children) or "
    "an adult's? Retrain it on your data, show what a check says.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(population_app, name="population")


@population_app.command(
    "retrain",
    epilog="Examples:\n\n"
    "  pneumoscope data prepare --source ped=~/chest_xray --source adults=~/adults.csv "
    "--age-group ped=child --age-group adults=adult --val-fraction 0.15 --out work/pop\n\n"
    "  pneumoscope population retrain --data work/pop --out work/pop_check --run runs/r18\n\n"
    "Writes population_check.onnx and population_check.json (threshold, the rule that chose "
    "it, validation and test figures per age group with 95% intervals, sources, the command). "
    "About 12 minutes on one CPU thread for 2,000 steps.",
)
def population_retrain(
    data: Path = typer.Option(
        ...,
        help="Folder made by 'pneumoscope data prepare' with films of age group child and "
        "adult (ages from the source, or --age-group NAME=child|adult); its splits are used "
        "as they are, its original files are decoded again.",
    ),
    out: Path = typer.Option(..., help="Folder to write the check into."),
    run: Path = typer.Option(
        None,
        help="Also install the check in this run (RUN/population_check/), which then uses it "
        "instead of the shipped one.",
    ),
    steps: int = typer.Option(2000, help="Training steps."),
    batch: int = typer.Option(64, help="Films per step, half children, half adults."),
    seed: int = typer.Option(0, help="Seed of the weights, the batches and the augmentations."),
    max_minutes: float = typer.Option(
        60.0, help="Stop training after this many minutes (the card says the run was cut)."
    ),
) -> None:
    """Train the population check on a prepared dataset: the train split's children and
    adults, half and half per batch, source marks (letters, arrows, borders, crops, JPEG)
    drawn on both alike; the threshold flags at most 0.5% of the validation children; the
    ONNX file is checked against torch before anything is written."""
    from pneumoscope.training.population_check import retrain

    folder = retrain(
        data, out, steps=steps, seed=seed, batch=batch, max_minutes=max_minutes, run=run,
        progress=True, log=typer.echo,
    )  # fmt: skip
    _show(folder)


@population_app.command(
    "show",
    epilog="Examples:\n\n"
    "  pneumoscope population show\n\n"
    "  pneumoscope population show --run runs/r18\n\n"
    "  pneumoscope population show --check work/pop_check",
)
def population_show(
    run: Path = typer.Option(
        None, help="The check this run uses: its own (RUN/population_check/), else the shipped one."
    ),
    check: Path = typer.Option(None, help="A check folder (population_check.json and .onnx)."),
) -> None:
    """What a population check's card says: name, threshold and the rule that chose it,
    validation figures. Without --run or --check: the check shipped in the package."""
    from pneumoscope.model.population_check import check_folder

    if run is not None and check is not None:
        raise UserError("give --run or --check, not both")
    if run is not None and not run.is_dir():
        raise UserError(f"--run {run} is not a folder")
    _show(check if check is not None else check_folder(run))


def _show(folder: Path) -> None:
    from pneumoscope.model.population_check import PopulationCheck, shipped_folder

    loaded = PopulationCheck(folder)  # reads the card and checks the ONNX file's SHA-256
    card = loaded.card
    shipped = folder.resolve() == shipped_folder().resolve()
    typer.echo(f"check: {card.get('name', folder.name)} ({folder}{', shipped' if shipped else ''})")
    typer.echo(f"threshold: {loaded.threshold:.4f} (flagged as adult when p(adult) is above it)")
    typer.echo(f"rule: {card.get('threshold_rule', '')}")
    rows = []
    for name, v in card.get("validation", {}).items():
        ci = v.get("ci95")
        interval = f"{100 * ci[0]:.1f}-{100 * ci[1]:.1f}%" if ci else ""
        rows.append([name, v["n"], v["flagged"], f"{100 * v['rate']:.1f}%", interval])
    echo_table("validation", ["films", "n", "flagged", "rate", "95% interval"], rows)
    if card.get("retrain"):
        typer.echo(f"retrain: {card['retrain']}")
