"""Temperature scaling and the OOD guard as estimators: fit, then write; load what was
written (today's calibration.json, ood.json, ood.safetensors) and get the same answers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from pneumoscope.core.errors import UserError
from pneumoscope.model.calibration import TemperatureScaler, ThresholdAugmentation, ValidationCheck
from pneumoscope.model.contract import RunFiles
from pneumoscope.model.ood import OodGuard

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "run_v1"


@pytest.fixture
def run(tmp_path) -> RunFiles:
    shutil.copytree(FIXTURE, tmp_path / "run")
    return RunFiles(tmp_path / "run")


def _fitted_scaler() -> TemperatureScaler:
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, 300)
    y = (rng.random(300) < 1 / (1 + np.exp(-z))).astype(int)
    scaler = TemperatureScaler().fit(3 * z, y)
    copies = ThresholdAugmentation(
        copies=2, seed=7, augment={"zoom": 0.1}, n_scored=900, copies_auroc=0.8
    )
    scaler.set_threshold("f1", {"youden": 0.4, "f1": 0.3}, {"cost_fn": 5.0}, copies)
    check = ValidationCheck(300, {"nll": 0.6}, {"nll": 0.5}, {"sensitivity": 0.9})
    return scaler.set_provenance(check, "/data", "abc")


def test_temperature_scaler_fits_and_returns_itself():
    scaler = TemperatureScaler()
    assert not hasattr(scaler, "temperature_")  # nothing fitted before fit
    rng = np.random.default_rng(1)
    z = rng.normal(0, 2.5, 4000)
    y = (rng.random(4000) < 1 / (1 + np.exp(-z))).astype(int)
    assert scaler.fit(2 * z, y) is scaler
    assert scaler.temperature_ == pytest.approx(2.0, rel=0.1)
    assert scaler.temperature_warning_ is None
    np.testing.assert_allclose(
        scaler.predict_proba(2 * z), 1 / (1 + np.exp(-2 * z / scaler.temperature_))
    )


def test_temperature_scaler_save_load_round_trip(run):
    scaler = _fitted_scaler()
    scaler.save(run)
    d = json.loads(run.calibration.read_text())
    assert list(d) == [
        "temperature",
        "temperature_warning",
        "policy",
        "policy_params",
        "threshold_tta",
        "threshold",
        "thresholds_by_policy",
        "validation",
        "validation_data_sha256",
        "weights_sha256",
        "data",
        "created",
    ]
    assert d["weights_sha256"] == run.weights_sha256() and d["threshold"] == 0.3
    back = TemperatureScaler.load(run)
    assert back.to_dict() == scaler.to_dict()
    assert back.temperature_ == scaler.temperature_ and back.threshold_tta_.copies == 2
    assert back.tta_note() == " + 2 augmented copies of each image"


def test_the_fixtures_calibration_loads_as_written(run):
    on_disk = json.loads(run.calibration.read_text())
    scaler = TemperatureScaler.load(run)
    # written before the rename: threshold_views is written back as threshold_tta, the
    # rest key for key and in order
    assert "threshold_views" in on_disk and "threshold_tta" not in on_disk
    renamed = {"threshold_tta" if k == "threshold_views" else k: v for k, v in on_disk.items()}
    assert list(scaler.to_dict().items()) == list(renamed.items())
    assert scaler.threshold_ == on_disk["threshold"] and scaler.threshold_tta_ is None


def test_a_calibration_of_other_weights_is_refused(run):
    _fitted_scaler().save(run)
    run.weights.write_bytes(run.weights.read_bytes() + b" ")
    with pytest.raises(UserError, match="fitted on other weights"):
        TemperatureScaler.load(run)


def _features(rng, n: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    labels = (np.arange(n) % 2).astype(int)
    f = rng.normal(0, 1, (n, 6)).astype(np.float32) + labels[:, None] * 2.0 + shift
    return f.astype(np.float32), labels


def test_ood_guard_fit_save_load_round_trip(run):
    rng = np.random.default_rng(0)
    feats, labels = _features(rng, 400)
    val, _ = _features(rng, 100)
    guard = OodGuard()
    assert guard.fit(feats, labels, val) is guard
    assert guard.means_.shape == (2, 6) and guard.precision_.shape == (6, 6)
    assert guard.n_fit_ == 400 and guard.n_val_ == 100 and guard.val_flag_rate_ <= 0.02
    guard.save(run)
    d = json.loads(run.ood_card.read_text())
    assert list(d) == [
        "method",
        "threshold",
        "threshold_rule",
        "feature_dim",
        "n_fit",
        "shrinkage",
        "n_val",
        "val_flag_rate",
        "weights_sha256",
        "created",
    ]
    assert set(load_file(str(run.ood_stats))) == {"means", "precision"}
    back = OodGuard.load(run)
    assert back.to_dict() == guard.to_dict()
    far, _ = _features(rng, 20, shift=25.0)
    probe = np.concatenate([val, far])
    np.testing.assert_array_equal(back.distance(probe), guard.distance(probe))
    scores, flagged = back.score(probe)
    assert flagged[100:].all() and np.all(scores[100:] > 1)


def test_the_fixtures_ood_guard_loads_as_written(run):
    guard = OodGuard.load(run)
    assert guard.to_dict() == json.loads(run.ood_card.read_text())
    assert guard.means_.shape == (2, 256)


def test_no_guard_is_none_and_a_stale_guard_is_refused(run, tmp_path):
    assert OodGuard.load(RunFiles(tmp_path)) is None
    run.weights.write_bytes(run.weights.read_bytes() + b" ")
    with pytest.raises(UserError, match="fitted on other weights"):
        OodGuard.load(run)
