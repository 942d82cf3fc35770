"""The age rule for films without an age: the population check reads the film (issue 30).

Real films: adults from ../shared/data/adult_public, children from the official pediatric
test split. The runs are the committed v1 run (trained by 0.1.0: no training population)
and copies of it whose card says who they learnt from, as a 0.2 run's card does.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import REPO, invoke_cli, write_dicom, xray_dicom

RUN_V1 = REPO / "tests" / "fixtures" / "run_v1"
ADULTS = (
    "adult_public/images/ieee8023/pneumococcal-pneumonia-day35.jpg",  # 40 years
    "adult_public/images/ieee8023/covid-19-pneumonia-58-prior.jpg",  # NORMAL, 70 years
    "adult_public/images/figure1/COVID-00024.jpg",
)
CHILDREN = (
    "chest_xray_224/test/NORMAL/NORMAL2-IM-0110-0001.jpeg",
    "chest_xray_224/test/PNEUMONIA/person122_bacteria_582.jpeg",
    "chest_xray_224/test/PNEUMONIA/person24_virus_58.jpeg",
)


def _population(groups: list[str], ages: tuple[float, float]) -> dict:
    source = {
        "name": "chest_xray_224",
        "dataset": "Kermany pediatric",
        "images": 100,
        "age_groups": groups,
        "age_min": ages[0],
        "age_max": ages[1],
        "age_from": "the dataset's description",
        "views": ["AP"],
    }
    return {
        "sources": [source],
        "age_groups": groups,
        "age_min": ages[0],
        "age_max": ages[1],
        "views": ["AP"],
    }


def _run_with(tmp: Path, name: str, population: dict | None) -> Path:
    run = tmp / name
    shutil.copytree(RUN_V1, run)
    if population is not None:
        card = json.loads((run / "model.json").read_text())
        card["population"] = population
        (run / "model.json").write_text(json.dumps(card))
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("population_runs")
    return {
        "children": _run_with(tmp, "children", _population(["child"], (1.0, 5.0))),
        "both": _run_with(tmp, "both", _population(["adult", "child"], (1.0, 94.0))),
        "old": RUN_V1,
    }


@pytest.fixture(scope="module")
def films(shared_data) -> dict[str, list[str]]:
    return {
        "adults": [str(shared_data / p) for p in ADULTS],
        "children": [str(shared_data / p) for p in CHILDREN],
    }


def _predict(run: Path, inputs: list[str], out: Path, *extra: str) -> dict[str, dict]:
    r = invoke_cli("predict", "--run", str(run), *inputs, "--out", str(out), *extra)
    assert r.returncode == 0, r.stderr
    with open(out, newline="") as fh:
        return {Path(row["path"]).name: row for row in csv.DictReader(fh)}


def test_adult_films_are_out_of_scope_for_a_run_on_children(runs, films, tmp_path):
    rows = _predict(runs["children"], films["adults"] + films["children"], tmp_path / "p.csv")
    for path in films["adults"]:
        row = rows[Path(path).name]
        assert row["status"] == "out_of_scope"
        assert row["probability"] == ""  # not analysed: no answer to misread
        assert row["estimated_age_group"] == "adult"
        assert float(row["adult_probability"]) > 0.9
        assert "estimated from the image" in row["error"]
        assert "p(adult) = " in row["error"]
        assert "children aged 1-5 years" in row["error"]
        assert "--allow age" in row["error"]
    for path in films["children"]:
        row = rows[Path(path).name]
        assert row["status"] == "ok", row["error"]
        assert row["estimated_age_group"] == "child"
        assert float(row["adult_probability"]) < 0.5
        assert row["probability"] != ""


def test_allow_age_analyses_them_with_a_note(runs, films, tmp_path):
    rows = _predict(runs["children"], films["adults"], tmp_path / "p.csv", "--allow", "age")
    for row in rows.values():
        assert row["status"] == "ok"
        assert row["probability"] != ""
        assert "--allow age" in row["note"] and "estimated from the image" in row["note"]
        assert row["estimated_age_group"] == "adult"


def test_a_run_trained_on_both_populations_accepts_both(runs, films, tmp_path):
    rows = _predict(runs["both"], films["adults"] + films["children"], tmp_path / "p.csv")
    assert {r["status"] for r in rows.values()} == {"ok"}
    assert {r["note"] for r in rows.values()} == {""}
    groups = [rows[Path(p).name]["estimated_age_group"] for p in films["adults"]]
    assert groups == ["adult"] * 3  # the estimate is still reported


def test_an_old_run_without_a_population_reports_the_estimate_and_says_why(runs, films, tmp_path):
    rows = _predict(runs["old"], films["adults"], tmp_path / "p.csv")
    assert {r["status"] for r in rows.values()} == {"ok"}
    assert {r["estimated_age_group"] for r in rows.values()} == {"adult"}


def _dicom_of(path: str, out: Path, age: str | None) -> Path:
    import cv2

    gray = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
    ds = xray_dicom(gray.astype(np.uint8))
    if age is None:
        for key in ("PatientAge", "PatientBirthDate"):
            delattr(ds, key)
    else:
        ds.PatientAge = age
    return write_dicom(ds, out)


def test_the_header_age_wins_over_the_estimate(runs, films, tmp_path):
    adult_says_3 = _dicom_of(films["adults"][0], tmp_path / "adult_age3.dcm", "003Y")
    child_says_40 = _dicom_of(films["children"][0], tmp_path / "child_age40.dcm", "040Y")
    anonymised = _dicom_of(films["adults"][0], tmp_path / "adult_no_age.dcm", None)
    inputs = [str(adult_says_3), str(child_says_40), str(anonymised)]
    rows = _predict(runs["children"], inputs, tmp_path / "p.csv")
    assert rows["adult_age3.dcm"]["status"] == "ok"  # the header says 3 years
    assert rows["adult_age3.dcm"]["estimated_age_group"] == "adult"  # reported all the same
    refused = rows["child_age40.dcm"]
    assert refused["status"] == "out_of_scope"
    assert "patient aged 40 years (from PatientAge)" in refused["error"]
    assert "estimated from the image" not in refused["error"]
    assert rows["adult_no_age.dcm"]["status"] == "out_of_scope"
    assert "estimated from the image" in rows["adult_no_age.dcm"]["error"]


def test_explain_refuses_the_same_films(runs, films, tmp_path):
    out = tmp_path / "heat"
    r = invoke_cli("explain", "--run", str(runs["children"]), *films["adults"][:1],
                   *films["children"][:1], "--out", str(out))  # fmt: skip
    assert r.returncode == 0, r.stderr
    with open(out / "explanations.csv", newline="") as fh:
        rows = {Path(row["path"]).name: row for row in csv.DictReader(fh)}
    adult = rows[Path(films["adults"][0]).name]
    assert adult["status"] == "out_of_scope" and adult["estimated_age_group"] == "adult"
    child = rows[Path(films["children"][0]).name]
    assert child["status"] == "ok" and child["heatmap"]
    assert not list(out.glob(f"{Path(films['adults'][0]).stem}*.png"))


def _own_check(run: Path, threshold: float) -> Path:
    """The shipped check copied into the run as its own, with another threshold."""
    from pneumoscope.model.population_check import RUN_FOLDER, shipped_folder

    own = run / RUN_FOLDER
    shutil.copytree(shipped_folder(), own)
    card = json.loads((own / "population_check.json").read_text())
    card["threshold"] = threshold
    card["name"] = "own-check"
    (own / "population_check.json").write_text(json.dumps(card))
    return own


def test_a_run_uses_its_own_check_from_its_folder(films, tmp_path):
    run = _run_with(tmp_path, "own", _population(["child"], (1.0, 5.0)))
    _own_check(run, threshold=0.999999999)  # flags (almost) nothing
    rows = _predict(run, films["adults"][1:2], tmp_path / "p.csv")
    (row,) = rows.values()
    assert row["status"] == "ok"
    assert row["estimated_age_group"] == "child"  # by its own threshold, not the shipped one


def test_a_check_whose_weights_do_not_match_its_card_is_refused(films, tmp_path):
    run = _run_with(tmp_path, "tampered", _population(["child"], (1.0, 5.0)))
    own = _own_check(run, threshold=0.9)
    with open(own / "population_check.onnx", "ab") as fh:
        fh.write(b"\0")
    r = invoke_cli(
        "predict", "--run", str(run), films["adults"][0], "--out", str(tmp_path / "p.csv")
    )
    assert r.returncode == 2
    assert "does not match the SHA-256 its card records" in r.stderr
    assert "Traceback" not in r.stderr
