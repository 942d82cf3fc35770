"""One version: pyproject.toml's, the package's ``__version__`` and ``pneumoscope --version``."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from pneumoscope import __version__
from pneumoscope.cli import app
from tests.helpers import REPO, run_cli


def _pyproject_version() -> str:
    text = (REPO / "pyproject.toml").read_text()
    project = text.split("[project]", 1)[1].split("\n[", 1)[0]
    return re.search(r'^version = "([^"]+)"', project, re.M).group(1)


def test_the_package_version_is_the_pyproject_version():
    assert __version__ == _pyproject_version() == "0.2.0"


def test_version_flag_prints_the_version():
    r = CliRunner().invoke(app, ["--version"])
    assert r.exit_code == 0, r.output
    assert r.output == f"pneumoscope {__version__}\n"


def test_version_flag_from_the_console_entry_point():
    r = run_cli("--version")
    assert (r.returncode, r.stdout, r.stderr) == (0, "pneumoscope 0.2.0\n", "")


def test_the_changelog_has_this_version():
    assert f"## [{__version__}]" in (REPO / "CHANGELOG.md").read_text()
