"""The wheel is complete: installed non-editable into a fresh virtual environment, away from
the checkout, it finds its presets and templates, trains from a preset and predicts."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers import REPO, write_kaggle_layout


def _sh(*cmd, cwd: Path) -> subprocess.CompletedProcess:
    res = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=900
    )
    assert res.returncode == 0, f"{cmd[0]} {cmd[1]} failed:\n{res.stdout}\n{res.stderr}"
    return res


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory) -> Path:
    """A fresh venv holding only the wheel; the heavy dependencies (torch, ...) are borrowed
    from the test environment's site-packages through a .pth path entry, so nothing is
    downloaded and the checkout's source tree is never on the path."""
    base = tmp_path_factory.mktemp("wheel")
    tree = base / "tree"  # build from a copy: setuptools leaves build/ in the source folder
    shutil.copytree(
        REPO / "src", tree / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__")
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, tree / name)
    _sh(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        base / "dist",
        tree,
        cwd=base,
    )
    wheels = list((base / "dist").glob("pneumoscope-*.whl"))
    assert len(wheels) == 1
    env = base / "venv"
    venv.create(env, with_pip=False)
    site = next(env.glob("lib/python*/site-packages"))
    (site / "borrowed_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _sh(
        sys.executable,
        "-m",
        "pip",
        "--python",
        env / "bin" / "python",
        "install",
        "-q",
        "--no-deps",
        "--no-index",
        wheels[0],
        cwd=base,
    )
    return env


def test_wheel_installs_the_package_outside_the_checkout(wheel_env, tmp_path):
    res = _sh(
        wheel_env / "bin" / "python",
        "-c",
        "import pneumoscope, pathlib; print(pathlib.Path(pneumoscope.__file__).resolve())",
        cwd=tmp_path,
    )
    installed = Path(res.stdout.strip())
    assert wheel_env in installed.parents and REPO not in installed.parents
    data = _sh(
        wheel_env / "bin" / "python",
        "-c",
        "from importlib.resources import files as f; p = f('pneumoscope');"
        "print(sorted(x.name for x in (p / 'presets' / 'train').iterdir()),"
        " (p / 'serving' / 'static' / 'index.html').is_file(),"
        " (p / 'evaluation' / 'templates' / 'report.html.j2').is_file())",
        cwd=tmp_path,
    ).stdout
    assert "fast-cpu.yaml" in data and data.strip().endswith("True True")


def test_wheel_trains_from_a_preset_and_predicts(wheel_env, tmp_path):
    cli = wheel_env / "bin" / "pneumoscope"
    src = write_kaggle_layout(tmp_path / "xray", {"train": 24, "test": 6}, seed=3)
    _sh(
        cli,
        "data",
        "prepare",
        "--source",
        src,
        "--out",
        "data",
        "--img-size",
        "32",
        "--workers",
        "1",
        cwd=tmp_path,
    )
    assert (tmp_path / "data" / "data_report.md").read_text().startswith("#")
    _sh(
        cli,
        "train",
        "--config",
        "fast-cpu",
        "--data",
        "data",
        "--out",
        "run",
        "--img-size",
        "32",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--threads",
        "1",
        "--no-progress",
        cwd=tmp_path,
    )
    _sh(cli, "evaluate", "--run", "run", "--data", "data", "--split", "test", cwd=tmp_path)
    assert "<html" in (tmp_path / "run" / "report.html").read_text().lower()
    # synthetic films are nobody's: the population check would refuse them (--allow age)
    _sh(cli, "predict", "--run", "run", src / "test", "--out", "pred.csv", "--allow", "age",
        cwd=tmp_path)  # fmt: skip
    pred = pd.read_csv(tmp_path / "pred.csv")
    assert len(pred) == 12 and (pred["status"] == "ok").all()
