"""The intended-use rules: each one refuses what it should, says which flag relaxes it, and
the flag does; the training population they compare ages with comes from the card."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pneumoscope.core.errors import UserError
from pneumoscope.data.cache import Cache, CacheInfo
from pneumoscope.data.dicom import DicomHeader
from pneumoscope.data.preprocess import PreprocessConfig
from pneumoscope.inference.explain import explain_files
from pneumoscope.inference.intended_use import RULES, IntendedUse, parse_allow
from pneumoscope.inference.predict import predict_to_csv
from pneumoscope.model.contract import ModelCard, read_card
from pneumoscope.training.population import KERMANY, training_population
from tests.helpers import CT_IMAGE, DX_IMAGE, SC_IMAGE, fake_xray, film_dataset, write_dicom

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "run_v1"
CHILDREN = IntendedUse(ages=(1.0, 5.0), population="children aged 1-5 years")
FILM = DicomHeader(sop_class_uid=DX_IMAGE, modality="DX", has_pixels=True, rows=64, columns=64)


def test_allow_names_the_rules_and_refuses_others():
    assert parse_allow(["age", "body_part", "View,multiframe"]) == {
        "age",
        "body-part",
        "view",
        "multiframe",
    }
    assert parse_allow(None) == frozenset()
    with pytest.raises(UserError, match="--allow 'colour'.*modality, body-part, view"):
        parse_allow(["colour"])


@pytest.mark.parametrize(
    ("changes", "rule", "words"),
    [
        ({}, None, None),
        ({"modality": "CR"}, None, None),
        ({"modality": "", "sop_class_uid": DX_IMAGE}, None, None),  # absent: not refused
        ({"modality": "CT", "sop_class_uid": CT_IMAGE}, "modality", "modality CT is not a"),
        ({"modality": "", "sop_class_uid": CT_IMAGE}, "modality", "modality CT"),  # by class
        ({"modality": "MR"}, "modality", "modality MR"),
        ({"modality": "US"}, "modality", "modality US"),
        ({"modality": "NM"}, "modality", "modality NM"),
        ({"modality": "PT"}, "modality", "modality PT"),
        ({"modality": "MG"}, "modality", "modality MG"),
        ({"modality": "RTIMAGE"}, "modality", "modality RTIMAGE"),
        ({"modality": "SC", "body_part": "CHEST"}, None, None),
        ({"modality": "SC", "conversion_type": "WSD"}, None, None),
        ({"modality": "OT", "conversion_type": "DF"}, None, None),
        ({"modality": "SC", "conversion_type": "SD"}, "modality", "conversion type SD"),
        ({"modality": "SC", "sop_class_uid": SC_IMAGE}, "modality", "secondary capture"),
        ({"body_part": "SKULL"}, "body-part", "body part SKULL is not the chest"),
        ({"body_part": "THORAX"}, None, None),
        ({"body_part": "CHEST_PA"}, None, None),
        ({"body_part": "LUNGS"}, None, None),
        ({"view_position": "LL"}, "view", "lateral view (ViewPosition LL)"),
        ({"view_position": "RL"}, "view", "ViewPosition RL"),
        ({"view_position": "LATERAL"}, "view", "ViewPosition LATERAL"),
        ({"patient_orientation": ("A", "F")}, "view", "PatientOrientation A\\F"),
        ({"patient_orientation": ("P", "H")}, "view", "PatientOrientation P\\H"),
        ({"patient_orientation": ("L", "F")}, None, None),
        ({"view_position": "PA", "patient_orientation": ("A", "F")}, None, None),
        ({"view_code": "left lateral"}, "view", "view code 'left lateral'"),
        ({"view_code": "left lateral decubitus"}, None, None),
        ({"frames": 12}, "multiframe", "a multi-frame object (12 frames)"),
        ({"age_years": 45.0, "age_from": "PatientAge"}, "age", "patient aged 45 years"),
        ({"age_years": 0.5, "age_from": "PatientAge"}, "age", "patient aged 6 months"),
        ({"age_years": 5.9, "age_from": "PatientAge"}, None, None),  # 5 completed years
        ({"age_years": 1.0, "age_from": "PatientAge"}, None, None),
    ],
)
def test_each_rule_and_the_flag_that_relaxes_it(changes, rule, words):
    header = replace(FILM, **changes)
    verdict = CHILDREN.check(header)
    if rule is None:
        assert verdict is None
        return
    assert verdict.status == "out_of_scope" and verdict.rules == (rule,)
    assert words in verdict.reason, verdict.reason
    assert f"[rule {rule}: --allow {rule} analyses it anyway]" in verdict.reason
    relaxed = replace(CHILDREN, allow=frozenset({rule})).check(header)
    assert relaxed.status == "ok" and relaxed.rules == (rule,)  # analysed, with a note
    assert relaxed.reason.startswith(
        f"outside the intended use, analysed because of --allow {rule}"
    )
    assert words in relaxed.reason and "[rule" not in relaxed.reason
    others = frozenset(RULES) - {rule}
    assert replace(CHILDREN, allow=others).check(header).rules == (rule,)


def test_every_broken_rule_is_named_in_one_reason():
    header = replace(FILM, modality="CT", body_part="HEAD", frames=40, age_years=60.0)
    header = replace(header, age_from="the study and birth dates")
    verdict = CHILDREN.check(header)
    assert verdict.rules == ("modality", "body-part", "multiframe", "age")
    assert verdict.reason.startswith("not analysed: modality CT")
    assert "(from the study and birth dates), outside the training population (children" in (
        verdict.reason
    )
    assert CHILDREN.check(replace(FILM, has_pixels=False)).status == "skipped"


def test_lateral_films_pass_when_the_model_learnt_from_them():
    both = replace(CHILDREN, frontal_only=False)
    assert both.check(replace(FILM, view_position="LL")) is None


def _card(population: dict | None) -> ModelCard:
    d = json.loads((FIXTURE / "model.json").read_text())
    if population is not None:
        d["population"] = population
    return ModelCard.from_dict(d)


POPULATION = {
    "sources": [{"name": "pediatric", "dataset": KERMANY, "age_groups": ["child"]}],
    "age_groups": ["child"],
    "age_min": 1.0,
    "age_max": 5.0,
    "views": ["AP"],
}


def test_scope_from_a_card_with_and_without_a_population():
    old = IntendedUse.from_card(_card(None))
    assert old.ages is None and len(old.notes) == 1
    assert "age rule is not applied" in old.notes[0] and "no training population" in old.notes[0]
    assert old.check(replace(FILM, age_years=70.0, age_from="PatientAge")) is None
    assert IntendedUse.from_card(_card(None), ["age"]).notes == ()
    new = IntendedUse.from_card(_card(POPULATION))
    assert new.ages == (1.0, 5.0) and new.notes == () and new.frontal_only
    assert new.population == "children aged 1-5 years"
    unknown = IntendedUse.from_card(_card({**POPULATION, "age_min": None, "age_max": None}))
    assert "ages are unknown" in unknown.notes[0]
    card = _card(POPULATION)
    assert ModelCard.from_dict(card.to_dict()).to_dict() == card.to_dict()
    assert card.to_dict()["population"]["age_max"] == 5.0


def _cache(rows: list[dict], sources: list[dict]) -> Cache:
    manifest = pd.DataFrame(rows).assign(split="train")
    for col, default in (("age_group", ""), ("age", np.nan), ("view", "")):
        if col not in manifest:
            manifest[col] = default
    info = CacheInfo(PreprocessConfig(img_size=2), data={"sources": sources})
    return Cache(Path("."), np.zeros((len(rows), 2, 2), np.uint8), manifest, info)


def test_training_population_from_the_manifest_and_the_known_sets():
    kermany = [
        {"path": f"x/PNEUMONIA/person{k}_bacteria_1.jpeg", "source": "ped"} for k in range(9)
    ]
    kermany.append({"path": "x/NORMAL/IM-0001-0001.jpeg", "source": "ped"})
    rsna = [
        {"path": f"r/{k}.dcm", "source": "rsna", "age": age, "view": view, "age_group": "adult"}
        for k, (age, view) in enumerate([(23, "PA"), (81, "AP ERECT"), (47, "PA")])
    ] + [{"path": "r/x.dcm", "source": "rsna", "age": 50, "age_group": "adult",
          "view": "FRONTAL, AP/PA NOT RECORDED (VISUAL CHECK)"}]  # fmt: skip
    layouts = [{"name": "ped", "layout": "class-folders"}, {"name": "rsna", "layout": "rsna"}]
    pop = training_population(_cache(kermany + rsna, layouts))
    ped, adults = pop.sources
    assert (ped.dataset, ped.age_min, ped.age_max, ped.views) == (KERMANY, 1.0, 5.0, ["AP"])
    assert ped.images == 10 and ped.age_from == "the dataset's description"
    assert (adults.age_min, adults.age_max) == (23.0, 81.0)
    assert adults.views == ["AP", "FRONTAL", "PA"]  # listed views read as the rules read them
    assert adults.age_from == "the images' headers or list"
    assert (pop.age_min, pop.age_max, pop.age_groups) == (1.0, 81.0, ["adult", "child"])
    assert pop.frontal_only and pop.ages_text() == "adults and children aged 1-81 years"
    other = [{"path": f"y/NORMAL/a{k}.png", "source": "own"} for k in range(3)]
    pop = training_population(_cache(kermany + other, layouts[:1]))
    by_name = {src.name: src for src in pop.sources}
    assert by_name["own"].dataset == "" and by_name["own"].age_min is None
    assert pop.age_min is None and pop.age_max is None  # unknown for one source: unknown
    covid = [
        {"path": f"c/NORMAL({k}).jpg", "source": "cov", "age_group": "child"} for k in range(3)
    ]
    pop = training_population(_cache(covid, [{"name": "cov", "layout": "covid19-pneumonia"}]))
    assert (pop.age_min, pop.age_max, pop.views) == (0.0, 17.0, ["FRONTAL"])  # children
    assert pop.sources[0].dataset.startswith("Chest X-Ray Covid-19")
    mnist = [{"path": f"m/train_{k}.png", "source": "mn", "age_group": "child"} for k in range(2)]
    pop = training_population(_cache(mnist, [{"name": "mn", "layout": "medmnist"}]))
    assert (pop.age_min, pop.age_max, pop.views) == (1.0, 5.0, ["AP"])


def test_train_writes_the_population_and_intended_use_into_the_card(run_dir):
    card = read_card(run_dir)  # synthetic films with the pediatric set's names
    pop = card.population
    assert (pop.age_min, pop.age_max, pop.views) == (1.0, 5.0, ["AP"])
    assert pop.sources[0].dataset == KERMANY and pop.sources[0].layout == "class-folders"
    assert "not a medical device" in card.intended_use
    assert "children aged 1-5 years; frontal (AP) films" in card.intended_use
    saved = json.loads((run_dir / "model.json").read_text())
    assert saved["population"]["age_max"] == 5.0


@pytest.fixture
def children_run(tmp_path) -> Path:
    """The committed run, its card given the pediatric population (weights unchanged)."""
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    d = json.loads((run / "model.json").read_text())
    (run / "model.json").write_text(json.dumps({**d, "population": POPULATION}))
    return run


def test_predict_refuses_an_adult_film_unless_age_is_allowed(children_run, tmp_path):
    img = fake_xray(np.random.default_rng(0), False, 64)
    child = write_dicom(film_dataset(img, PatientAge="003Y"), tmp_path / "child")
    adult = write_dicom(film_dataset(img, PatientAge="045Y"), tmp_path / "adult")
    counts = predict_to_csv(children_run, [str(child), str(adult)], tmp_path / "p.csv")
    df = pd.read_csv(tmp_path / "p.csv", keep_default_na=False)
    assert list(df["status"]) == ["ok", "out_of_scope"] and counts.out_of_scope == 1
    assert "patient aged 45 years (from PatientAge)" in df["error"][1]
    assert "children aged 1-5 years" in df["error"][1] and "--allow age" in df["error"][1]
    assert counts.notes == [] and counts.failed == 0
    counts = predict_to_csv(children_run, [str(adult)], tmp_path / "a.csv", allow=["age"])
    allowed = pd.read_csv(tmp_path / "a.csv", keep_default_na=False)
    assert allowed["status"][0] == "ok" and counts.ok == 1
    assert float(allowed["probability"][0]) == float(df["probability"][0])  # same pixels


def test_a_card_without_population_says_once_that_age_is_not_checked(tmp_path):
    img = fake_xray(np.random.default_rng(1), True, 64)
    paths = [
        str(write_dicom(film_dataset(img, PatientAge=f"0{k}5Y"), tmp_path / f"f{k}"))
        for k in range(3)
    ]
    counts = predict_to_csv(FIXTURE, paths, tmp_path / "p.csv")
    assert counts.ok == 3 and len(counts.notes) == 1 and "age rule" in counts.notes[0]


def test_explain_gives_refused_dicom_their_rows_and_the_rest_heatmaps(tmp_path, one_torch_thread):
    from pneumoscope.model.run import load_run

    img = fake_xray(np.random.default_rng(2), True, 64)
    frontal = write_dicom(film_dataset(img, ViewPosition="PA"), tmp_path / "pa")
    lateral = write_dicom(film_dataset(img, ViewPosition="LL"), tmp_path / "ll")
    ct = write_dicom(film_dataset(img, "CT"), tmp_path / "ct")
    loaded = load_run(FIXTURE)
    rows = explain_files(loaded, [str(frontal), str(lateral), str(ct)], tmp_path / "out")
    assert [r["status"] for r in rows] == ["ok", "out_of_scope", "out_of_scope"]
    assert Path(rows[0]["heatmap"]).is_file() and rows[1]["heatmap"] == ""
    assert "--allow view" in rows[1]["error"] and "modality CT" in rows[2]["error"]
    scope = IntendedUse.from_card(loaded.card, ["view"])
    rows = explain_files(loaded, [str(lateral)], tmp_path / "out2", scope=scope)
    assert rows[0]["status"] == "ok" and Path(rows[0]["heatmap"]).is_file()
    written = pd.read_csv(tmp_path / "out" / "explanations.csv", keep_default_na=False)
    assert list(written["status"]) == ["ok", "out_of_scope", "out_of_scope"]
