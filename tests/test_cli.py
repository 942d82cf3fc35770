"""The command line as a user meets it: examples in --help, one-line errors, exit codes."""

from __future__ import annotations

import pandas as pd
import pytest

from .conftest import run_cli, write_kaggle_layout

COMMANDS = [
    ["--help"],
    ["data", "prepare", "--help"],
    ["train", "--help"],
    ["evaluate", "--help"],
    ["predict", "--help"],
]


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a))
def test_every_command_has_help_with_an_example(args):
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    assert "Example" in r.stdout and "pneumoscope " in r.stdout


def _one_line_error(r, *fragments: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])


def test_prepare_wrong_path(tmp_path):
    r = run_cli("data", "prepare", "--source", str(tmp_path / "nope"), "--out", str(tmp_path / "o"))
    _one_line_error(r, "not found", str(tmp_path / "nope"))


def test_prepare_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    r = run_cli(
        "data", "prepare", "--source", str(tmp_path / "empty"), "--out", str(tmp_path / "o")
    )
    _one_line_error(r, "no class folders", "NORMAL/")


def test_prepare_folder_without_class_folders(tmp_path):
    (tmp_path / "pics" / "xrays").mkdir(parents=True)
    (tmp_path / "pics" / "other").mkdir(parents=True)
    r = run_cli("data", "prepare", "--source", str(tmp_path / "pics"), "--out", str(tmp_path / "o"))
    _one_line_error(r, "expected NORMAL/ and PNEUMONIA/")


def test_train_and_evaluate_on_a_folder_that_was_not_prepared(tmp_path):
    _one_line_error(
        run_cli("train", "--data", str(tmp_path), "--out", str(tmp_path / "r")),
        "not a prepared dataset",
    )
    _one_line_error(
        run_cli("evaluate", "--run", str(tmp_path / "r"), "--data", str(tmp_path)),
        "run folder not found",
    )
    _one_line_error(run_cli("predict", "--run", str(tmp_path), str(tmp_path)), "not a finished run")


def test_cli_end_to_end_with_a_bad_file(tmp_path):
    src = write_kaggle_layout(tmp_path / "src", {"train": 24, "test": 6}, size=40)
    (src / "test" / "NORMAL" / "broken.jpeg").write_bytes(b"\xff\xd8 nope")
    r = run_cli(
        "data",
        "prepare",
        "--source",
        str(src),
        "--out",
        str(tmp_path / "d"),
        "--img-size",
        "32",
        "--val-fraction",
        "0.25",
    )
    assert r.returncode == 0, r.stderr
    assert "train" in r.stdout and "test" in r.stdout
    assert "1 file(s) could not be read" in r.stderr and "broken.jpeg" in r.stderr
    r = run_cli(
        "train",
        "--data",
        str(tmp_path / "d"),
        "--out",
        str(tmp_path / "run"),
        "--model",
        "seed_cnn",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--no-progress",
    )
    assert r.returncode == 0, r.stderr
    assert "threshold" in r.stdout
    r = run_cli("evaluate", "--run", str(tmp_path / "run"), "--data", str(tmp_path / "d"))
    assert r.returncode == 0, r.stderr
    assert "AUROC" in r.stdout and "95% CI" in r.stdout and "TN" in r.stdout
    r = run_cli(
        "predict",
        "--run",
        str(tmp_path / "run"),
        str(src / "test"),
        "--out",
        str(tmp_path / "p.csv"),
    )
    assert r.returncode == 1  # one input failed: the exit status says so
    assert "12 predicted, 1 failed" in r.stdout
    df = pd.read_csv(tmp_path / "p.csv")
    assert len(df) == 13 and (df["status"] == "error").sum() == 1
