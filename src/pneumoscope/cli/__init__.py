"""The `pneumoscope` command line (Typer): one module per group of subcommands."""

from pneumoscope.cli.main import app, main

__all__ = ["app", "main"]
