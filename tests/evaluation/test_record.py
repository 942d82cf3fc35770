"""metrics.json read back typed: figures, intervals, no server paths, one-line errors."""

from __future__ import annotations

import json

import pytest

from pneumoscope.core.errors import UserError
from pneumoscope.evaluation.record import EvaluationRecord


def test_a_record_is_read_typed_without_server_paths(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({
        "run": "/srv/runs/r", "data": "/srv/data", "split": "test", "n": 624,
        "threshold": 0.41, "threshold_policy": "youden (on validation)", "auroc": 0.976,
        "accuracy": float("nan"), "ci": {"auroc": [0.965, 0.985]}, "per_image": {"i": [1]},
    }))  # fmt: skip
    record = EvaluationRecord.read(path)
    assert (record.split, record.n, record.threshold) == ("test", 624, 0.41)
    assert record.figure("auroc") == 0.976 and record.figure("accuracy") is None
    assert record.ci["auroc"] == (0.965, 0.985)
    public = record.public()
    assert "run" not in public and "data" not in public and "per_image" not in public
    assert public["ci"] == {"auroc": [0.965, 0.985]}


def test_missing_and_broken_records_are_one_line(tmp_path):
    with pytest.raises(UserError, match="pneumoscope evaluate"):
        EvaluationRecord.read(tmp_path / "metrics.json")
    (tmp_path / "metrics.json").write_text("{not json")
    with pytest.raises(UserError, match="not an evaluation record"):
        EvaluationRecord.read(tmp_path / "metrics.json")
    assert EvaluationRecord.read_if_any(tmp_path / "metrics.json") is None
