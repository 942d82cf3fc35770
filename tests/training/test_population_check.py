"""`pneumoscope population retrain | show` on real films: about 40 pediatric films of the
Kermany set and 40 adult films of adult_public, prepared by `data prepare`, the check
retrained for a few steps, then loaded as the product loads it."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from pneumoscope.core.errors import UserError
from pneumoscope.data.preprocess import decode_gray
from pneumoscope.evaluation.metrics import wilson_interval as wilson
from pneumoscope.model.population_check import (
    CARD_NAME,
    ONNX_NAME,
    PopulationCheck,
    check_folder,
    shipped_folder,
)
from pneumoscope.training.population_check import retrain, rule_threshold
from tests.helpers import REPO, invoke_cli

pytestmark = pytest.mark.realdata
STEPS = "30"


@pytest.fixture(scope="module")
def pop_data(shared_data, tmp_path_factory) -> Path:
    """A prepared cache: 40 children (Kermany train and test films, linked) and 40 adults
    (adult_public, a CSV list; the check ignores labels, so COVID-19 and OTHER films are
    listed as PNEUMONIA, which `data prepare` accepts)."""
    base = tmp_path_factory.mktemp("population")
    kids = base / "chest_xray"
    for split, n in (("train", 15), ("test", 5)):
        for label in ("NORMAL", "PNEUMONIA"):
            d = kids / split / label
            d.mkdir(parents=True)
            for f in sorted((shared_data / "chest_xray_224" / split / label).iterdir())[::23][:n]:
                (d / f.name).symlink_to(f)
    adults_dir = shared_data / "adult_public"
    with open(adults_dir / "adults.csv", newline="") as fh:
        listed = list(csv.DictReader(fh))[::8][:40]
    with open(base / "adults.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "patient_id", "age"])
        for r in listed:
            label = "NORMAL" if r["label"] == "NORMAL" else "PNEUMONIA"
            w.writerow([adults_dir / r["path"], label, r["patient_id"], r["age"]])
    out = base / "prepared"
    r = invoke_cli(
        "data", "prepare", "--source", f"kids={kids}", "--source", f"adults={base / 'adults.csv'}",
        "--age-group", "kids=child", "--age-group", "adults=adult", "--img-size", "32",
        "--val-fraction", "0.2", "--workers", "1", "--out", str(out),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def population_retrained(pop_data, tmp_path_factory):
    """The check retrained by the CLI for a few steps, installed in a copy of a real run."""
    import torch

    base = tmp_path_factory.mktemp("population_check")
    run = base / "run"
    shutil.copytree(REPO / "tests" / "fixtures" / "run_v1", run)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        r = invoke_cli(
            "population", "retrain", "--data", str(pop_data), "--out", str(base / "check"),
            "--run", str(run), "--steps", STEPS, "--batch", "32",
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return SimpleNamespace(folder=base / "check", run=run, stdout=r.stdout, data=pop_data)


def _scores(check: PopulationCheck, paths) -> np.ndarray:
    return check.adult_probability(np.stack([check.prepare(decode_gray(p)) for p in paths]))


def test_the_retrained_check_loads_and_keeps_its_rule(population_retrained):
    got = population_retrained
    check = PopulationCheck(got.folder)  # checks the ONNX file against the card's SHA-256
    card = check.card
    shipped = json.loads((shipped_folder() / CARD_NAME).read_text())
    assert card.keys() == shipped.keys()
    assert card["input"].keys() == shipped["input"].keys()
    assert card["format"] == 1 and card["groups"] == shipped["groups"]
    assert card["input"]["img_size"] == 128 and card["input"]["clahe"] is True
    digest = hashlib.sha256((got.folder / ONNX_NAME).read_bytes()).hexdigest()
    assert card["files"] == {ONNX_NAME: digest}

    m = pd.read_csv(got.data / "manifest.csv")
    m = m[m["age_group"].isin(["child", "adult"])]
    p = _scores(check, m["path"])
    assert np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()
    m = m.assign(p=p)

    # the threshold is the rule's, on the validation children alone
    val_kids = m[(m["split"] == "val") & (m["age_group"] == "child")]
    n = len(val_kids)
    assert card["threshold"] == pytest.approx(rule_threshold(val_kids["p"].to_numpy()), abs=1e-6)
    assert int((val_kids["p"] > check.threshold + 1e-6).sum()) <= math.floor(0.005 * n)
    assert f"n = {n} child validation films" in card["threshold_rule"]

    # each figure is the count of its split and group above the threshold, with its interval
    names = {"val": "validation", "test": "test"}
    assert len(card["validation"]) == 4
    for (split, group), sub in m[m["split"] != "train"].groupby(["split", "age_group"]):
        key = f"{group} {names[split]}"
        if (split, group) == ("val", "child"):
            key += " (threshold set here)"
        fig = card["validation"][key]
        flagged = int((sub["p"] > check.threshold).sum())
        assert (fig["n"], fig["flagged"]) == (len(sub), flagged)
        assert fig["ci95"] == [round(x, 4) for x in wilson(flagged, len(sub))]

    training = card["training"]
    counts = m.groupby(["split", "age_group"]).size()
    for split in ("train", "val", "test"):
        for group in ("child", "adult"):
            assert training["counts"][split][group] == counts.get((split, group), 0)
    assert {s["name"] for s in training["sources"]} == {"kids", "adults"}
    assert training["steps_done"] == int(STEPS) and not training["cut_by_max_minutes"]
    assert training["onnx_check"]["max_abs_probability_difference"] <= 1e-4
    assert card["retrain"].startswith("pneumoscope population retrain --data ")
    assert f"--steps {STEPS}" in card["retrain"] and str(got.data) in card["retrain"]
    assert f"threshold: {check.threshold:.4f}" in got.stdout


def test_run_uses_its_own_check_and_show_prints_it(population_retrained):
    got = population_retrained
    own = check_folder(got.run)
    assert own == got.run / "population_check"
    for name in (CARD_NAME, ONNX_NAME):
        assert (own / name).read_bytes() == (got.folder / name).read_bytes()
    card = PopulationCheck(own).card
    r = invoke_cli("population", "show", "--run", str(got.run))
    assert r.returncode == 0, r.stderr
    assert card["name"] in r.stdout and f"threshold: {card['threshold']:.4f}" in r.stdout
    assert "child validation" in r.stdout and "--steps 30" in r.stdout
    r = invoke_cli("population", "show", "--check", str(got.folder))
    assert r.returncode == 0 and card["name"] in r.stdout


def test_show_without_a_run_shows_the_shipped_check(tmp_path):
    shipped = json.loads((shipped_folder() / CARD_NAME).read_text())
    r = invoke_cli("population", "show")
    assert r.returncode == 0, r.stderr
    assert shipped["name"] in r.stdout and "shipped" in r.stdout
    (tmp_path / "model.json").write_text("{}")  # a run without its own check
    assert shipped["name"] in invoke_cli("population", "show", "--run", str(tmp_path)).stdout


def _edited(data: Path, tmp_path: Path, edit) -> Path:
    """A copy of the prepared cache whose manifest ``edit`` changed."""
    out = tmp_path / "edited"
    out.mkdir()
    for name in ("cache.json", "images.npy"):
        shutil.copy(data / name, out / name)
    m = pd.read_csv(data / "manifest.csv", dtype=str, keep_default_na=False)
    edit(m)
    m.to_csv(out / "manifest.csv", index=False)
    return out


def _set(column, value, where):
    def edit(m):
        m.loc[where(m), column] = value

    return edit


def _is(col, value):
    return lambda m: m[col] == value


def _first(m):
    return m.index == 0


MISTAKES = {
    "no adults": (_set("age_group", "unknown", _is("age_group", "adult")), "has no adult films"),
    "no children": (_set("age_group", "", _is("age_group", "child")), "has no child films"),
    "no validation children": (
        _set("split", "train", lambda m: (m["split"] == "val") & (m["age_group"] == "child")),
        "has no child films in its val split",
    ),
    "a missing file": (_set("path", "/nowhere/film.png", _first), "1 of the"),
}


@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_a_user_mistake_is_one_line_before_any_training(pop_data, tmp_path, mistake):
    edit, words = MISTAKES[mistake]
    data = _edited(pop_data, tmp_path, edit)
    with pytest.raises(UserError) as err:
        retrain(data, tmp_path / "check", steps=1)
    assert words in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "check").exists()


def test_unreadable_films_and_bad_folders_are_one_line(pop_data, tmp_path):
    note = tmp_path / "note.png"
    note.write_text("not an image\n")
    data = _edited(pop_data, tmp_path, _set("path", str(note), _first))
    r = invoke_cli("population", "retrain", "--data", str(data), "--out", str(tmp_path / "c"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert r.stderr.startswith("error: ") and "can no longer be decoded" in r.stderr
    assert not (tmp_path / "c").exists()

    for args, words in (
        (["--data", str(tmp_path), "--out", str(tmp_path / "c")], "not a prepared dataset"),
        (["--data", str(pop_data), "--out", str(tmp_path / "c"), "--run", str(tmp_path)],
         "is not a run folder"),
        (["--data", str(pop_data), "--out", str(note)], "is not a folder"),
    ):  # fmt: skip
        r = invoke_cli("population", "retrain", *args)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and words in r.stderr, r.stderr
    r = invoke_cli("population", "show", "--run", str(tmp_path), "--check", str(tmp_path))
    assert r.returncode == 2 and "not both" in r.stderr
    r = invoke_cli("population", "show", "--check", str(tmp_path))
    assert r.returncode == 2 and "cannot read population_check.json" in r.stderr


def test_an_onnx_file_that_differs_from_torch_is_not_written(pop_data, tmp_path, monkeypatch):
    """The export is checked on the validation films before anything is written (here with
    an impossible tolerance and the untrained network, so nothing trains)."""
    from pneumoscope.training import population_check as pc
    from pneumoscope.training.popnet import PopNet

    monkeypatch.setattr(pc, "ONNX_TOLERANCE", -1.0)
    monkeypatch.setattr(pc, "_train", lambda *a: (PopNet().eval(), pc._Done(0, 0.0, False, 0)))
    with pytest.raises(UserError, match="nothing written"):
        retrain(pop_data, tmp_path / "check", steps=1)
    assert not list(tmp_path.rglob("population_check*"))


def test_the_rule_and_the_intervals_give_the_shipped_card_s_figures():
    """n = 721 validation children: t is the 4th highest score, 3 films above it; the
    shipped card's Wilson intervals come out of the same formula."""
    scores = np.linspace(0, 1, 721)
    t = rule_threshold(scores)
    assert t == scores[-4] and int((scores > t).sum()) == 3
    assert rule_threshold(np.array([0.2, 0.9, 0.5])) == 0.9  # n < 200: none above t
    shipped = json.loads((shipped_folder() / CARD_NAME).read_text())["validation"]
    for fig in shipped.values():
        if "ci95" in fig:
            assert [round(x, 4) for x in wilson(fig["flagged"], fig["n"])] == fig["ci95"]
