"""The OOD guard's combined score (Mahalanobis and the residual outside the training
features' principal directions): fit, save, load, the same scores; old Mahalanobis files
still load and score as they did; the threshold flags about 1% of validation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from pneumoscope.core.errors import UserError
from pneumoscope.model.contract import RunFiles
from pneumoscope.model.ood import COMBINED, DEFAULT_METHOD, MAHALANOBIS, OodGuard

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "run_v1"
D, LATENT = 32, 6


@pytest.fixture
def run(tmp_path) -> RunFiles:
    shutil.copytree(FIXTURE, tmp_path / "run")
    return RunFiles(tmp_path / "run")


@pytest.fixture(scope="module")
def mixing() -> np.ndarray:
    return np.random.default_rng(1).normal(0, 1, (LATENT, D))


def _features(rng, mixing, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Positive features near a low-dimensional plane, two classes apart."""
    labels = (np.arange(n) % 2).astype(int)
    z = rng.normal(0, 1, (n, LATENT)) + labels[:, None] * 1.5
    f = z @ mixing + 10.0 + rng.normal(0, 0.05, (n, D))
    return f.astype(np.float32), labels


def _fitted(mixing, method: str = COMBINED, n_val: int = 1000) -> tuple[OodGuard, np.ndarray]:
    rng = np.random.default_rng(0)
    feats, labels = _features(rng, mixing, 600)
    val, _ = _features(rng, mixing, n_val)
    return OodGuard(method=method, dims=8).fit(feats, labels, val), val


def test_new_fits_use_the_combined_method_and_old_settings_stay_mahalanobis():
    assert DEFAULT_METHOD == MAHALANOBIS == OodGuard().method
    with pytest.raises(ValueError, match="method must be one of"):
        OodGuard(method="knn")


def test_combined_round_trip_scores_identically(run, mixing):
    guard, val = _fitted(mixing)
    assert guard.basis_.shape == (8, D) and guard.mean_.shape == (D,)
    guard.save(run)
    d = json.loads(run.ood_card.read_text())
    assert list(d)[:5] == ["method", "method_id", "residual_dims", "part_thresholds", "threshold"]
    assert d["method_id"] == COMBINED and d["residual_dims"] == 8
    assert d["threshold_rule"] == "99% quantile of validation scores"
    stats = load_file(str(run.ood_stats))
    assert set(stats) == {"means", "precision", "residual_mean", "residual_basis"}
    assert all(a.dtype == np.float32 for a in stats.values())
    back = OodGuard.load(run)
    assert back.method == COMBINED and back.to_dict() == guard.to_dict()
    probe = np.concatenate([val, np.random.default_rng(5).uniform(0, 30, (50, D))])
    np.testing.assert_array_equal(back.score(probe)[0], guard.score(probe)[0])
    np.testing.assert_array_equal(back.score(probe)[1], guard.score(probe)[1])


def test_threshold_flags_one_percent_of_validation(mixing):
    guard, val = _fitted(mixing, n_val=1000)
    scores, flagged = guard.score(val)
    assert 8 <= flagged.sum() <= 12  # the 99th percentile of these very scores
    assert guard.val_flag_rate_ == pytest.approx(flagged.mean())
    assert guard.n_val_ == 1000 and guard.n_fit_ == 600
    assert np.quantile(scores, 0.99) == pytest.approx(1.0)


def test_far_and_off_manifold_inputs_are_flagged_in_distribution_ones_not(mixing):
    guard, _ = _fitted(mixing)
    rng = np.random.default_rng(9)
    fresh, _ = _features(rng, mixing, 400)
    scores, flagged = guard.score(fresh)
    assert flagged.mean() <= 0.03 and np.median(scores) < 0.8
    center = guard.means_.mean(axis=0, keepdims=True)
    far = center * 20.0
    q, _ = np.linalg.qr(mixing.T)  # the plane's directions: leave them, keep the size
    away = rng.normal(0, 1.0, (20, D))
    off = center + 3.0 * (away - (away @ q) @ q.T)
    assert not guard.score(guard.means_)[1].any()
    assert guard.score(far)[1].all() and guard.score(far)[0][0] > 5
    assert guard.score(off)[1].all()
    assert (guard.residual(off) > guard.part_thresholds_[1]).all()


def test_an_old_ood_json_loads_as_mahalanobis_and_scores_as_before(run):
    d = json.loads(run.ood_card.read_text())
    assert "method_id" not in d and "Mahalanobis" in d["method"]
    guard = OodGuard.load(run)
    assert guard.method == MAHALANOBIS and guard.to_dict() == d
    stats = load_file(str(run.ood_stats))
    probe = np.random.default_rng(3).uniform(0, 2, (25, guard.feature_dim_))
    diffs = [probe - m.astype(np.float64) for m in stats["means"]]
    prec = stats["precision"].astype(np.float64)
    d2 = np.min([np.einsum("nd,de,ne->n", x, prec, x) for x in diffs], axis=0)
    expected = np.sqrt(np.maximum(d2, 0)) / d["threshold"]
    np.testing.assert_allclose(guard.score(probe)[0], expected, rtol=1e-12)


def test_a_mahalanobis_guard_is_written_as_before(run, mixing):
    guard, _ = _fitted(mixing, method=MAHALANOBIS)
    guard.save(run)
    d = json.loads(run.ood_card.read_text())
    assert "method_id" not in d and list(d)[:2] == ["method", "threshold"]
    assert set(load_file(str(run.ood_stats))) == {"means", "precision"}
    assert OodGuard.load(run).method == MAHALANOBIS


def test_unknown_method_or_missing_statistics_is_one_readable_error(run, mixing):
    guard, _ = _fitted(mixing)
    guard.save(run)
    stats = load_file(str(run.ood_stats))
    del stats["residual_basis"]
    save_file(stats, str(run.ood_stats))
    with pytest.raises(UserError, match="lacks residual_basis"):
        OodGuard.load(run)
    d = json.loads(run.ood_card.read_text()) | {"method_id": "knn-2030"}
    run.ood_card.write_text(json.dumps(d))
    with pytest.raises(UserError, match="unknown guard method 'knn-2030'"):
        OodGuard.load(run)
