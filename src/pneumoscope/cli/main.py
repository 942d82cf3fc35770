"""Entry point: every subcommand registered, user mistakes as one line (exit status 2)."""

from __future__ import annotations

import sys

import typer

from pneumoscope.cli import data, evaluate, monitor, pacs, population, predict, serve, train
from pneumoscope.cli.base import app
from pneumoscope.core.errors import UserError

# importing a module registers its commands
COMMAND_MODULES = (data, train, evaluate, predict, pacs, population, serve, monitor)
ORDER = (
    "train",
    "ensemble",
    "calibrate",
    "evaluate",
    "compare",
    "predict",
    "explain",
    "export",
    "serve",
    "monitor",
)
app.registered_commands.sort(key=lambda c: ORDER.index(c.name or c.callback.__name__))


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
