"""The layers contract (pyproject.toml, checked by import-linter) holds, and it would catch a
lower layer importing a higher one, or a cycle between sibling modules."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

LINT = Path(sys.executable).with_name("lint-imports")


def _lint(src: Path) -> subprocess.CompletedProcess:
    """lint-imports with the repository's contracts, on the package found under ``src``."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run(
        [str(LINT), "--config", str(REPO / "pyproject.toml"), "--no-cache"],
        cwd=src,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def package_copy(tmp_path) -> Path:
    shutil.copytree(REPO / "src" / "pneumoscope", tmp_path / "pneumoscope")
    return tmp_path


def test_the_package_keeps_its_layers():
    res = _lint(REPO / "src")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "BROKEN" not in res.stdout and "KEPT" in res.stdout


def test_a_lower_layer_importing_a_higher_one_breaks_the_contract(package_copy):
    (package_copy / "pneumoscope" / "data" / "planted.py").write_text(
        "from pneumoscope.training.train import train  # noqa\n"
    )
    res = _lint(package_copy)
    assert res.returncode != 0
    assert "pneumoscope.data.planted -> pneumoscope.training.train" in res.stdout


def test_training_and_inference_stay_independent(package_copy):
    (package_copy / "pneumoscope" / "inference" / "planted.py").write_text(
        "import pneumoscope.training.config  # noqa\n"
    )
    res = _lint(package_copy)
    assert res.returncode != 0 and "pneumoscope.inference.planted" in res.stdout


def test_a_cycle_between_siblings_breaks_the_contract(package_copy):
    evaluation = package_copy / "pneumoscope" / "evaluation"
    (evaluation / "planted_a.py").write_text("from pneumoscope.evaluation import planted_b\n")
    (evaluation / "planted_b.py").write_text("from pneumoscope.evaluation import planted_a\n")
    res = _lint(package_copy)
    assert res.returncode != 0 and "planted_a" in res.stdout
