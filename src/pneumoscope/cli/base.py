"""The Typer application and its `data` group; each subcommand lives in its own module.

A user mistake ends with one line on stderr (``error: what, where, what to do``) and
exit status 2; heavy libraries are imported inside the commands so --help is instant.
"""

from __future__ import annotations

import typer

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


def _print_version(value: bool) -> None:
    if value:
        from pneumoscope.core import __version__

        typer.echo(f"pneumoscope {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        help="Print the version and exit.",
        callback=_print_version,
        is_eager=True,
    ),
) -> None:
    """Pneumonia detection on chest X-rays: prepare a leak-free dataset, train, evaluate,
    predict."""


data_app = typer.Typer(
    help="Build datasets from X-ray folders.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(data_app, name="data")


def echo_table(title: str, header: list[str], rows: list[list]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for h in header:
        table.add_column(h, justify="right" if h != header[0] else "left")
    for r in rows:
        table.add_row(*[str(c) for c in r])
    Console().print(table)
