"""The command line as a user meets it: examples in --help, one-line errors, exit codes."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from tests.helpers import invoke_cli, run_cli, write_kaggle_layout

COMMANDS = [
    ["--help"],
    ["data", "prepare", "--help"],
    ["train", "--help"],
    ["evaluate", "--help"],
    ["predict", "--help"],
    ["calibrate", "--help"],
    ["explain", "--help"],
    ["export", "--help"],
    ["compare", "--help"],
    ["population", "retrain", "--help"],
    ["population", "show", "--help"],
]


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a))
def test_every_command_has_help_with_an_example(args):
    # in process; the console entry point itself: the first (a subprocess) and test_version
    r = run_cli(*args) if args == ["--help"] else invoke_cli(*args)
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
    r = invoke_cli(
        "data", "prepare", "--source", str(tmp_path / "nope"), "--out", str(tmp_path / "o")
    )
    _one_line_error(r, "not found", str(tmp_path / "nope"))


def test_prepare_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    r = invoke_cli(
        "data", "prepare", "--source", str(tmp_path / "empty"), "--out", str(tmp_path / "o")
    )
    _one_line_error(r, "no known layout", "empty folder", "NORMAL/")


def test_prepare_folder_without_class_folders(tmp_path):
    (tmp_path / "pics" / "xrays").mkdir(parents=True)
    (tmp_path / "pics" / "other").mkdir(parents=True)
    r = invoke_cli(
        "data", "prepare", "--source", str(tmp_path / "pics"), "--out", str(tmp_path / "o")
    )
    _one_line_error(r, "expected NORMAL/ and PNEUMONIA/")


def test_train_and_evaluate_on_a_folder_that_was_not_prepared(tmp_path):
    _one_line_error(
        invoke_cli("train", "--data", str(tmp_path), "--out", str(tmp_path / "r")),
        "not a prepared dataset",
    )
    _one_line_error(
        invoke_cli("evaluate", "--run", str(tmp_path / "r"), "--data", str(tmp_path)),
        "run folder not found",
    )
    _one_line_error(
        invoke_cli("predict", "--run", str(tmp_path), str(tmp_path)), "not a finished run"
    )


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
        "--allow",
        "age",  # synthetic films are nobody's: the population check would refuse them
    )
    assert r.returncode == 1  # one input failed: the exit status says so
    # how many a 1-epoch model flags as out-of-distribution depends on its exact weights
    assert re.search(r"12 predicted \(\d+ flagged out-of-distribution\), 1 failed", r.stdout)
    df = pd.read_csv(tmp_path / "p.csv")
    assert len(df) == 13 and (df["status"] == "error").sum() == 1


def test_cli_export_onnx_backend_gradcam_and_explain(run_dir, data_dir, synthetic_source, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    r = run_cli(
        "predict",
        "--run",
        str(run),
        "--allow",
        "age",
        str(synthetic_source / "test"),
        "--backend",
        "onnx",
        "--out",
        str(tmp_path / "x.csv"),
    )
    _one_line_error(r, "pneumoscope export")  # no export yet: one line saying what to do
    # 24 validation images: one swapped pair moves AUROC by 1/144, so loosen the tolerance
    r = run_cli(
        "export", "--run", str(run), "--data", str(data_dir), "--int8",
        "--max-auroc-change", "0.05", "--max-flip-fraction", "0.2",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "max |logit difference|" in r.stdout and (run / "model.onnx").is_file()
    csvs = {}
    for backend in ("torch", "onnx", "onnx-int8"):
        out = tmp_path / f"{backend}.csv"
        r = run_cli(
            "predict",
            "--run",
            str(run),
            "--allow",
            "age",
            str(synthetic_source / "test"),
            "--backend",
            backend,
            "--out",
            str(out),
            "--no-progress",
        )
        assert r.returncode == 0, r.stderr
        csvs[backend] = pd.read_csv(out)
    assert (csvs["onnx"]["probability"] - csvs["torch"]["probability"]).abs().max() < 1e-4
    assert (csvs["onnx"]["ood_score"] - csvs["torch"]["ood_score"]).abs().max() < 1e-3
    assert (csvs["onnx-int8"]["probability"] - csvs["torch"]["probability"]).abs().max() < 0.05
    r = run_cli(
        "predict",
        "--run",
        str(run),
        "--allow",
        "age",
        str(synthetic_source / "test" / "NORMAL"),
        "--gradcam",
        str(tmp_path / "cams"),
        "--out",
        str(tmp_path / "g.csv"),
    )
    assert r.returncode == 0, r.stderr
    g = pd.read_csv(tmp_path / "g.csv")
    assert g["heatmap"].map(lambda p: (tmp_path / "cams" / p.split("/")[-1]).is_file()).all()
    r = run_cli(
        "explain",
        "--run",
        str(run),
        "--allow",
        "age",
        str(synthetic_source / "test" / "PNEUMONIA"),
        "--out",
        str(tmp_path / "explained"),
    )
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "explained").glob("*.png"))) == 20
