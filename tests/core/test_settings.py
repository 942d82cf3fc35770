"""The settings layer: typed fields, one-line errors naming the key and the file, YAML in
and out, and presets found inside the package (as an installed wheel finds them)."""

from __future__ import annotations

import pickle
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path
from typing import Literal

import pytest
from pydantic import Field, field_validator

import pneumoscope
from pneumoscope.core.errors import UserError
from pneumoscope.core.settings import (
    InvalidSettings,
    Number,
    SettingError,
    Settings,
    Text,
    Whole,
    preset_file,
    preset_folder,
    preset_names,
    read_preset,
    read_yaml,
)
from tests.helpers import REPO


class Demo(Settings):
    """A small config with one field of each kind the real configs use."""

    default_in_help = True
    flag_names = {"sources": "source"}

    name: Text = Field(description="A name.")
    steps: Whole = Field(10, description="Steps.")
    rate: Number = Field(0.5, description="A rate.")
    mode: Literal["fast", "slow"] = Field("fast", description="fast | slow.")
    quiet: bool = Field(False, description="Say less.")
    sources: list[str] = Field(default_factory=list, description="Inputs.")

    @field_validator("steps")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"must be at least 1, got {v}")
        if v == 13:
            raise SettingError("13 steps is unlucky: give --steps 12 or 14", "steps")
        return v


def _error(fn) -> str:
    with pytest.raises(UserError) as e:
        fn()
    message = str(e.value)
    assert "\n" not in message
    return message


def test_values_are_typed_and_defaults_filled(tmp_path):
    d = Demo(name=tmp_path, steps=3.0, rate="1e-3")  # a path, a whole float, YAML's 1e-3
    assert (d.name, d.steps, d.rate, d.mode, d.quiet) == (str(tmp_path), 3, 0.001, "fast", False)
    assert list(d.to_dict()) == ["name", "steps", "rate", "mode", "quiet", "sources"]


def test_python_mistakes_name_the_flag():
    assert _error(lambda: Demo(name="n", mode="medium")) == (
        "--mode must be one of fast, slow, got 'medium'"
    )
    assert _error(lambda: Demo(name="n", steps=0)) == "--steps must be at least 1, got 0"
    assert _error(lambda: Demo(name="n", steps=True)) == "--steps must be a number, got True"
    assert _error(lambda: Demo(name="n", steps=2.5)) == "--steps must be a whole number, got 2.5"
    assert _error(lambda: Demo(name="n", quiet="maybe")).startswith("--quiet must be true or")
    assert _error(lambda: Demo(name="n", sources=3)).startswith("--source must be a list")
    assert _error(lambda: Demo()) == "--name missing: give it on the command line"
    assert _error(lambda: Demo(name="n", steps=13)) == "13 steps is unlucky: give --steps 12 or 14"
    assert "did you mean steps" in _error(lambda: Demo(name="n", step=3))
    with pytest.raises(InvalidSettings) as e:  # a UserError that survives a process boundary
        Demo(name="n", mode="medium")
    assert str(pickle.loads(pickle.dumps(e.value))) == str(e.value)


def test_file_mistakes_name_the_file_and_the_key(tmp_path):
    f = tmp_path / "demo.yaml"

    def load(text: str, **flags) -> Demo:
        f.write_text(text)
        return Demo.layered(read_yaml(f), flags, str(f))

    assert _error(lambda: load("name: n\nstepz: 3\n")) == (
        f"unknown setting 'stepz' in {f} (did you mean steps?)"
    )
    assert _error(lambda: load("name: n\nsteps: ten\n")) == (
        f"'steps' in {f} must be a number, got 'ten'"
    )
    assert _error(lambda: load("name: n\nmode: medium\n")) == (
        f"'mode' in {f} must be one of fast, slow, got 'medium'"
    )
    assert _error(lambda: load("name: n\nsteps: 13\n")).endswith(f"or 14 (in {f})")
    missing = _error(lambda: load("steps: 3\n"))
    assert missing == f"--name missing: give it on the command line or in {f}"
    # a flag given over a bad file value replaces it; a bad flag is named as a flag
    assert load("name: n\nmode: medium\n", mode="slow").mode == "slow"
    assert _error(lambda: load("name: n\n", mode="medium")).startswith("--mode must be one of")


def test_yaml_in_and_out(tmp_path):
    f = tmp_path / "demo.yaml"
    f.write_text("name: n\nsteps: 4\nquiet: yes\n")
    d = Demo.layered(read_yaml(f), {"rate": 0.25}, str(f))
    assert (d.steps, d.rate, d.quiet) == (4, 0.25, True)
    again = tmp_path / "again.yaml"
    again.write_text(d.to_yaml())
    assert Demo.build(read_yaml(again)) == d  # the written file loads back the same
    f.write_text("name: n\nsteps: [4\n")
    assert _error(lambda: read_yaml(f)).startswith(f"{f} is not valid YAML (")
    f.write_text("- a\n- b\n")
    assert _error(lambda: read_yaml(f)) == (
        f"{f} must hold a mapping of settings (key: value), not list"
    )
    f.write_text("")
    assert read_yaml(f) == {}
    f.write_text("batch-size: 3\n")
    assert read_yaml(f) == {"batch_size": 3}  # dashes as on the command line
    assert _error(lambda: read_yaml(tmp_path / "none.yaml")).startswith("cannot read")


def test_validate_checks_again_after_assignment():
    d = Demo(name="n")
    d.steps = 0
    with pytest.raises(UserError, match="--steps must be at least 1"):
        d.validate()
    d.steps, d.rate = 5, 2  # normalised on the way: the rate becomes a float
    d.validate()
    assert isinstance(d.rate, float)


def test_help_is_the_description_with_the_default():
    assert Demo.flag_help("steps") == "Steps. Default: 10."
    assert Demo.flag_help("mode") == "fast | slow. Default: fast."
    assert Demo.flag_help("quiet") == "Say less."  # False and None defaults go unsaid
    assert Demo.flag_help("name") == "A name."  # required
    assert Demo.flag_help("sources") == "Inputs."  # a factory
    assert Demo.flag("sources") == "--source" and Demo.flag("rate") == "--rate"


def test_presets_ship_inside_the_package():
    package = Path(pneumoscope.__file__).parent
    assert Path(str(preset_folder("train"))) == package / "presets" / "train"
    assert {"fast-cpu", "seed1-cnn", "seed2-efficientnet"} <= set(preset_names("train"))
    assert {"pediatric", "keras-combined-naive", "keras-combined-dedup"} <= set(
        preset_names("data")
    )
    assert not (REPO / "configs").exists()  # one copy, the package's
    assert read_preset("train", "fast-cpu")["img_size"] == 192  # what quickstart.sh reads
    assert preset_file("train", "nope") is None and preset_file("train", "../train/x") is None
    assert preset_names("nothing") == []
    assert "did you mean fast-cpu" in _error(lambda: read_preset("train", "fast-cpus"))


def test_the_wheel_declares_every_preset_file():
    """package-data in pyproject.toml puts every shipped preset into the wheel."""
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"]["package-data"]["pneumoscope"]
    assert any(dep.startswith("pydantic") for dep in config["project"]["dependencies"])
    package = Path(pneumoscope.__file__).parent
    shipped = [p.relative_to(package).as_posix() for p in (package / "presets").rglob("*")]
    files = [p for p in shipped if not (package / p).is_dir()]
    assert files and all(any(fnmatch(p, g) for g in globs) for p in files), files


def test_settings_import_no_heavy_libraries():
    """--help imports the settings: no torch, numpy or OpenCV on the way."""
    code = (
        "import sys; import pneumoscope.training.config, pneumoscope.data.config; "
        "print(sorted({'torch', 'numpy', 'cv2'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
