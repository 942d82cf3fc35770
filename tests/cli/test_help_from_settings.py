"""Help text lives in one place: each config-backed option's --help is its field's
description (TrainConfig, DataConfig)."""

from __future__ import annotations

import pytest
import typer

from pneumoscope.cli import app
from pneumoscope.data.config import DataConfig
from pneumoscope.training.config import TrainConfig


def _options(*path: str) -> dict[str, str]:
    """{parameter name: help} of the command at ``path``."""
    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    return {p.name: p.help for p in command.params}


@pytest.mark.parametrize(
    "path, settings, renamed",
    [
        (("train",), TrainConfig, {}),
        # --preset picks a preset; the field of that name records which one, for the report
        (("data", "prepare"), DataConfig, {"sources": "source", "preset": None}),
    ],
)
def test_option_help_is_the_field_description(path, settings, renamed):
    options = _options(*path)
    backed = [f for f in settings.model_fields if renamed.get(f, f) in options]
    assert len(backed) >= 15
    for field in backed:
        assert options[renamed.get(field, field)] == settings.flag_help(field), field
    assert TrainConfig.flag_help("epochs").endswith(" Default: 25.")
