"""A run folder written by release 0.1.0 (card version 1) still loads and predicts the same.

tests/fixtures/run_v1 was trained by that release (test_efficientnet, 32 px, two epochs on a
slice of the real pediatric set) and run_v1_predictions.csv holds what its `predict` wrote
for eight real test films; today's code must give the same rows.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from pneumoscope.inference.predict import predict_to_csv

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.mark.realdata
def test_release_0_1_run_predicts_as_it_did(shared_data, tmp_path):
    run = tmp_path / "run_v1"
    shutil.copytree(FIXTURES / "run_v1", run)
    expected = pd.read_csv(FIXTURES / "run_v1_predictions.csv")
    files = [shared_data / p for p in expected["path"]]
    out = tmp_path / "predictions.csv"
    predict_to_csv(run, files, out, progress=False)
    got = pd.read_csv(out)
    got["path"] = [str(Path(p).relative_to(shared_data)) for p in got["path"]]
    assert got["path"].tolist() == expected["path"].tolist()
    assert got["probability"].tolist() == pytest.approx(expected["probability"].tolist(), abs=2e-6)
    for col in ("label", "model_id", "ood", "status"):
        assert got[col].tolist() == expected[col].tolist()
    assert got["threshold"].tolist() == pytest.approx(expected["threshold"].tolist(), abs=1e-6)
    assert got["ood_score"].tolist() == pytest.approx(expected["ood_score"].tolist(), abs=2e-4)
