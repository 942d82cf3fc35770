"""`evaluate --split all`: every film of a prepared folder the run never trained on (issue 30:
adults measured, not guessed), and the warning when the folder is the run's own training
cache.

The run is tests/fixtures/run_v1 (32 px, CLAHE, trained on a slice of the pediatric set),
so no training is needed; the folder is real adult films of adult_public, prepared on their
own from a CSV list as a user would."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from pneumoscope.core.errors import UserError
from pneumoscope.data.cache import counts_table
from pneumoscope.evaluation.evaluate import evaluate
from tests.helpers import invoke_cli

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
PER_CLASS = 12

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def adults(shared_data, tmp_path_factory) -> Path:
    """12 NORMAL and 12 PNEUMONIA adult films prepared at the run's 32 px, on their own."""
    root = tmp_path_factory.mktemp("adults")
    listing = pd.read_csv(shared_data / "adult_public" / "adults.csv")
    picked = pd.concat(
        listing[listing["label"] == label].head(PER_CLASS) for label in ("NORMAL", "PNEUMONIA")
    )
    picked = picked.assign(path=[str(shared_data / "adult_public" / p) for p in picked["path"]])
    picked.to_csv(root / "adults.csv", index=False)
    r = invoke_cli("data", "prepare", "--source", f"adults={root / 'adults.csv'}",
                   "--age-group", "adults=adult", "--img-size", "32", "--workers", "1",
                   "--out", str(root / "data"))  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return root / "data"


@pytest.fixture
def run(tmp_path) -> Path:
    shutil.copytree(FIXTURES / "run_v1", tmp_path / "run")
    return tmp_path / "run"


def test_all_scores_every_film_of_the_folder(run, adults, tmp_path):
    manifest = pd.read_csv(adults / "manifest.csv")
    assert manifest["split"].nunique() > 1  # the folder has splits; all ignores them
    m = evaluate(run, adults, "all", out=tmp_path / "ev", n_boot=20)
    assert (m["split"], m["n"]) == ("all", 2 * PER_CLASS)
    assert (m["n_normal"], m["n_pneumonia"]) == (PER_CLASS, PER_CLASS)
    assert m["per_group"] == {}  # one source, one age group: nothing to split by
    assert m["warnings"] == []  # not the run's training cache
    images = pd.read_csv(tmp_path / "ev" / "predictions_all.csv")
    assert sorted(images["index"]) == sorted(manifest["index"])
    assert set(images["age_group"]) == {"adult"}
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert saved["split"] == "all" and saved["per_image"]["csv"] == "predictions_all.csv"
    assert "on every image of the data</h1>" in (tmp_path / "ev" / "report.html").read_text()


def test_all_on_the_runs_own_training_cache_warns_on_one_line(run, adults, tmp_path):
    card = json.loads((run / "model.json").read_text())
    card["training_data"]["cache"] = str(adults.resolve())  # as if trained on this folder
    (run / "model.json").write_text(json.dumps(card))
    r = invoke_cli("evaluate", "--run", str(run), "--data", str(adults), "--split", "all",
                   "--bootstrap", "0", "--out", str(tmp_path / "ev"))  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "all images, n=24" in r.stdout
    warnings = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(warnings) == 1 and warnings[0].startswith("warning: "), r.stderr
    assert "the run's own training cache" in warnings[0] and "--split all" in warnings[0]
    assert (tmp_path / "ev" / "predictions_all.csv").is_file()
    # another folder name: no longer the same folder, and run_v1's counts are not these
    card["training_data"]["cache"] = "/elsewhere/data"
    (run / "model.json").write_text(json.dumps(card))
    assert evaluate(run, adults, "all", out=tmp_path / "ev2", n_boot=0)["warnings"] == []
    # a copy of the training cache moved elsewhere: the same counts per split and class and
    # the same split note as the card records
    info = json.loads((adults / "cache.json").read_text())
    card["training_data"]["counts"] = counts_table(pd.read_csv(adults / "manifest.csv"))
    card["training_data"]["split_note"] = info["split_note"]
    (run / "model.json").write_text(json.dumps(card))
    (warning,) = evaluate(run, adults, "all", out=tmp_path / "ev3", n_boot=0)["warnings"]
    assert "counts per split and class" in warning
    # one split of the training cache is ordinary use: no warning
    assert evaluate(run, adults, "train", out=tmp_path / "ev4", n_boot=0)["warnings"] == []


def test_an_unknown_split_is_one_line(run, adults):
    with pytest.raises(UserError, match=r"--split must be one of train \| val \| test \| all"):
        evaluate(run, adults, "everything", n_boot=0)
