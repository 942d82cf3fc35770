"""The service applies predict's intended-use rules: a DICOM that is no image or that the
model was not made for is answered 422 with the reason (one result of a batch), and
`serve --allow RULE` relaxes a rule as `predict --allow` does."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from pneumoscope.core.errors import UserError
from pneumoscope.serving.settings import ServeSettings
from tests.helpers import fake_xray, film_dataset, report_dataset, run_cli, write_dicom
from tests.serving.conftest import RUN_V1

IMG = fake_xray(np.random.default_rng(7), True, 64)


def _dicom(tmp_path, name: str, ds) -> bytes:
    return write_dicom(ds, tmp_path / name).read_bytes()


@pytest.fixture
def uploads(tmp_path) -> dict[str, bytes]:
    return {
        "frontal": _dicom(tmp_path, "pa", film_dataset(IMG, ViewPosition="PA")),
        "lateral": _dicom(tmp_path, "ll", film_dataset(IMG, ViewPosition="LL")),
        "ct": _dicom(tmp_path, "ct", film_dataset(IMG, "CT", BodyPartExamined="CHEST")),
        "report": _dicom(tmp_path, "sr", report_dataset()),
        "png": cv2.imencode(".png", IMG)[1].tobytes(),
    }


def _client(settings: ServeSettings, engine=None):
    from fastapi.testclient import TestClient

    from pneumoscope.serving.app import create_app
    from pneumoscope.serving.engine import Engine

    eng = engine or Engine.load(settings.run, settings.backend, settings.allow, **settings.batching)
    return TestClient(create_app(settings, eng), base_url="http://localhost")


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("lateral", "lateral view (ViewPosition LL)"),
        ("ct", "modality CT is not a projection radiograph"),
        ("report", "DICOM Structured Report (SOP class Basic Text SR Storage): not an image"),
    ],
)
def test_single_image_out_of_scope_or_no_image_is_422_with_the_reason(client, uploads, name, words):
    r = client.post("/v1/predict", content=uploads[name])
    assert r.status_code == 422, r.text
    body = r.json()
    assert words in body["error"] and body["status"] == "error"
    if name != "report":
        assert "--allow" in body["error"]
    assert client.post("/v1/predict", content=uploads["frontal"]).status_code == 200


def test_batch_gives_each_upload_its_outcome(client, uploads):
    names = ["frontal", "ct", "report", "png", "lateral"]
    files = [("files", (f"{n}.dcm", uploads[n])) for n in names]
    r = client.post("/v1/predict/batch", files=files)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    statuses = [x["status"] for x in results]
    assert statuses == ["ok", "out_of_scope", "skipped", "ok", "out_of_scope"]
    assert results[0]["probability"] is not None and results[1]["probability"] is None
    assert "rule modality" in results[1]["error"] and "not an image" in results[2]["error"]
    single = client.post("/v1/predict", content=uploads["frontal"]).json()
    assert results[0]["probability"] == pytest.approx(single["probability"], abs=1e-6)


def test_serve_allow_relaxes_a_rule_and_the_model_says_which(uploads, one_torch_thread):
    with _client(ServeSettings(run=RUN_V1, allow=("view", "modality"))) as c:
        assert c.post("/v1/predict", content=uploads["lateral"]).status_code == 200
        assert c.post("/v1/predict", content=uploads["ct"]).status_code == 200
        assert c.post("/v1/predict", content=uploads["report"]).status_code == 422
        rules = c.get("/v1/model").json()["intended_use_rules"]
    assert rules["allowed"] == ["modality", "view"]
    assert rules["rules"] == ["body-part", "multiframe", "age"]
    assert "age rule is not applied" in rules["notes"][0]  # run_v1's card has no population


def test_the_age_rule_uses_the_cards_population(tmp_path, uploads, one_torch_thread):
    run = tmp_path / "run"
    shutil.copytree(RUN_V1, run)
    card = json.loads((run / "model.json").read_text())
    card["population"] = {"age_groups": ["child"], "age_min": 1, "age_max": 5, "views": ["AP"]}
    (run / "model.json").write_text(json.dumps(card))
    adult = _dicom(tmp_path, "adult", film_dataset(IMG, PatientAge="045Y", PatientName="Doe^J"))
    with _client(ServeSettings(run=run)) as c:
        r = c.post("/v1/predict", content=adult)
        assert r.status_code == 422 and "patient aged 45 years" in r.json()["error"]
        assert "children aged 1-5 years" in r.json()["error"] and "Doe" not in r.text
        assert c.get("/v1/model").json()["intended_use_rules"]["ages"] == [1.0, 5.0]
    with _client(ServeSettings(run=run, allow=("age",))) as c:
        r = c.post("/v1/predict", content=adult)
        assert r.status_code == 200 and r.json()["status"] == "ok"
        note = r.json()["note"]  # the answer says the film is outside the population
        assert note.startswith("outside the intended use, analysed because of --allow age")
        assert "patient aged 45 years" in note and "children aged 1-5 years" in note
        child = _dicom(tmp_path, "child", film_dataset(IMG, PatientAge="003Y"))
        assert c.post("/v1/predict", content=child).json()["note"] == ""


def test_unknown_rules_are_refused_in_one_line(tmp_path):
    with pytest.raises(UserError, match="--allow 'colour'"):
        ServeSettings(run=RUN_V1, allow=("colour",))
    assert ServeSettings(run=RUN_V1, allow=("age", "view", "age")).allow == ("age", "view")
    r = run_cli("serve", "--run", str(RUN_V1), "--allow", "colour", "--port", "0")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        "error: --allow 'colour': choose among modality, body-part, view, multiframe, age"
    ]


def test_the_age_estimated_from_the_image_refuses_an_adult_jpeg(
    tmp_path, shared_data, one_torch_thread
):
    """Issue 30: a JPEG carries no age; the population check reads the film."""
    run = tmp_path / "run"
    shutil.copytree(RUN_V1, run)
    card = json.loads((run / "model.json").read_text())
    card["population"] = {"age_groups": ["child"], "age_min": 1, "age_max": 5, "views": ["AP"]}
    (run / "model.json").write_text(json.dumps(card))
    adult = (
        shared_data / "adult_public/images/ieee8023/covid-19-pneumonia-58-prior.jpg"
    ).read_bytes()
    child = (shared_data / "chest_xray_224/test/NORMAL/NORMAL2-IM-0110-0001.jpeg").read_bytes()
    with _client(ServeSettings(run=run)) as c:
        r = c.post("/v1/predict", content=adult)
        assert r.status_code == 422, r.text
        body = r.json()
        assert body["outcome"] == "out_of_scope" and body["estimated_age_group"] == "adult"
        assert body["adult_probability"] > 0.9
        assert "estimated from the image" in body["error"] and "--allow age" in body["error"]
        ok = c.post("/v1/predict", content=child).json()
        assert ok["status"] == "ok" and ok["estimated_age_group"] == "child"
        files = [("files", ("a.jpg", adult)), ("files", ("c.jpeg", child))]
        results = c.post("/v1/predict/batch", files=files).json()["results"]
        assert [x["status"] for x in results] == ["out_of_scope", "ok"]
        assert results[0]["adult_probability"] == pytest.approx(body["adult_probability"])
        check = c.get("/v1/model").json()["intended_use_rules"]["population_check"]
        assert check["threshold"] > 0 and "retrain" in check
    with _client(ServeSettings(run=run, allow=("age",))) as c:
        r = c.post("/v1/predict", content=adult)
        assert r.status_code == 200 and "estimated from the image" in r.json()["note"]
