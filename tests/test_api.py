"""The notebook API: three lines from a run folder to predictions, equal to `predict`'s."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

import pneumoscope
from pneumoscope.core.errors import UserError
from pneumoscope.inference.predict import predict_to_csv
from pneumoscope.inference.scoring import CSV_COLUMNS

FIXTURE_RUN = Path(__file__).parent / "fixtures" / "run_v1"


@pytest.fixture(scope="module")
def model():
    return pneumoscope.load(FIXTURE_RUN)


@pytest.fixture(scope="module")
def films(shared_data) -> list[Path]:
    expected = pd.read_csv(Path(__file__).parent / "fixtures" / "run_v1_predictions.csv")
    return [shared_data / p for p in expected["path"]]


@pytest.mark.realdata
def test_predict_gives_the_csv_rows_of_the_command(model, films, tmp_path):
    out = tmp_path / "pred.csv"
    predict_to_csv(FIXTURE_RUN, [str(f) for f in films], out)
    csv = pd.read_csv(out)
    table = model.predict(films)
    assert list(table.columns) == CSV_COLUMNS
    assert table["path"].tolist() == csv["path"].tolist()
    np.testing.assert_allclose(table["probability"], csv["probability"], atol=5e-7)
    assert table["label"].tolist() == csv["label"].tolist()
    assert table["ood"].tolist() == csv["ood"].tolist()


@pytest.mark.realdata
def test_a_bad_file_is_a_row_not_an_exception(model, films, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    table = model.predict([str(films[0]), bad])
    assert table["status"].tolist() == ["ok", "error"]
    assert "not a readable image" in table.loc[1, "error"]
    assert np.isnan(table.loc[1, "probability"])


@pytest.mark.realdata
def test_arrays_get_the_probability_of_their_file(model, films):
    gray = cv2.imread(str(films[0]), cv2.IMREAD_GRAYSCALE)
    color = cv2.imread(str(films[-1]), cv2.IMREAD_COLOR)
    proba = model.predict_proba([gray, color])
    files = model.predict([films[0], films[-1]])["probability"].to_numpy()
    np.testing.assert_allclose(proba, files, atol=1e-9)
    full = cv2.normalize(gray, None, 0, 255, cv2.NORM_MINMAX)  # 16-bit films are min-max scaled
    sixteen = full.astype(np.uint16) * 257  # so this one scales back to ``full`` exactly
    np.testing.assert_allclose(model.predict_proba(sixteen), model.predict_proba(full), atol=1e-12)
    assert model.predict_proba([]).shape == (0,)


def test_card_and_threshold_come_from_the_run(model):
    assert model.card.architecture == "test_efficientnet"
    assert model.threshold == pytest.approx(0.3590509, abs=1e-6)


def test_no_inputs_is_one_clear_error(model, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no image files"):
        model.predict(tmp_path / "empty")
    with pytest.raises(UserError, match="no inputs"):
        model.predict([])


def test_the_population_check_on_arrays_and_files(shared_data, tmp_path):
    """Issue 30: arrays get the estimate on request; files meet the age rule as in predict."""
    import json
    import shutil

    run = tmp_path / "children"
    shutil.copytree(Path(__file__).parent / "fixtures" / "run_v1", run)
    card = json.loads((run / "model.json").read_text())
    card["population"] = {"age_groups": ["child"], "age_min": 1, "age_max": 5, "views": ["AP"]}
    (run / "model.json").write_text(json.dumps(card))
    adult = shared_data / "adult_public/images/ieee8023/covid-19-pneumonia-58-prior.jpg"
    child = shared_data / "chest_xray_224/test/NORMAL/NORMAL2-IM-0110-0001.jpeg"
    model = pneumoscope.load(run)
    arrays = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in (adult, child)]
    est = model.estimate_population(arrays)
    assert est["estimated_age_group"].tolist() == ["adult", "child"]
    assert est["in_population"].tolist() == [False, True]
    table = model.predict([str(adult), str(child)])
    assert table["status"].tolist() == ["out_of_scope", "ok"]
    assert table["adult_probability"].tolist() == pytest.approx(est["adult_probability"].tolist())
