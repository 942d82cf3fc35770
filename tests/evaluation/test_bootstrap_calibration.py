"""Bootstrap intervals and temperature scaling, on arrays with known properties."""

from __future__ import annotations

import numpy as np
import pytest

from pneumoscope.evaluation.bootstrap import bootstrap_ci
from pneumoscope.evaluation.metrics import METRIC_LABELS, binary_metrics
from pneumoscope.model.calibration import TemperatureScaler, nll, temperature_warning


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    return TemperatureScaler().fit(logits, y).temperature_


def _scores(n: int, seed: int):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.6).astype(int)
    p = 1 / (1 + np.exp(-(rng.normal(0, 1.2, n) + 2.5 * (y - 0.5))))
    return y, p


def test_intervals_contain_the_point_estimate():
    y, p = _scores(600, 0)
    groups = np.repeat(np.arange(300), 2)
    m = binary_metrics(y, p, 0.5)
    ci = bootstrap_ci(y, p, 0.5, groups, n_boot=500, seed=0)
    assert set(ci) == set(METRIC_LABELS)
    for k, (lo, hi) in ci.items():
        assert lo <= m[k] <= hi, (k, lo, m[k], hi)
        assert lo < hi, k


def test_intervals_narrow_with_more_data():
    widths = []
    for n in (150, 600, 2400):
        y, p = _scores(n, 1)
        ci = bootstrap_ci(y, p, 0.5, n_boot=400, seed=0)
        widths.append({k: hi - lo for k, (lo, hi) in ci.items()})
    for k in METRIC_LABELS:
        assert widths[0][k] > widths[1][k] > widths[2][k], (k, [w[k] for w in widths])


def test_patient_resampling_widens_intervals_for_correlated_images():
    """Four identical images per patient: resampling images would overstate the evidence."""
    y, p = _scores(200, 2)
    y4, p4 = np.repeat(y, 4), np.repeat(p, 4)
    per_image = bootstrap_ci(y4, p4, 0.5, None, n_boot=400, seed=0)["auroc"]
    per_patient = bootstrap_ci(y4, p4, 0.5, np.repeat(np.arange(200), 4), n_boot=400, seed=0)[
        "auroc"
    ]
    assert (per_patient[1] - per_patient[0]) > 1.5 * (per_image[1] - per_image[0])


def test_bootstrap_is_seeded():
    y, p = _scores(200, 3)
    assert bootstrap_ci(y, p, 0.5, n_boot=50, seed=7) == bootstrap_ci(y, p, 0.5, n_boot=50, seed=7)


@pytest.mark.parametrize("true_t", [0.5, 2.5])
def test_temperature_recovers_a_known_miscalibration(true_t):
    rng = np.random.default_rng(4)
    z_true = rng.normal(0, 2.5, 5000)
    y = (rng.random(5000) < 1 / (1 + np.exp(-z_true))).astype(int)
    logits = z_true * true_t  # over- (T>1) or under-confident (T<1) by a known factor
    t = fit_temperature(logits, y)
    assert t == pytest.approx(true_t, rel=0.1)
    assert nll(logits, y, t) < nll(logits, y, 1.0)
    before = binary_metrics(y, 1 / (1 + np.exp(-logits)), 0.5)["ece"]
    after = binary_metrics(y, 1 / (1 + np.exp(-logits / t)), 0.5)["ece"]
    assert after < before


def test_a_temperature_stuck_at_its_bound_is_flagged():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 400)
    logits = rng.normal(0, 20, 400)  # confident and unrelated to the labels
    t = fit_temperature(logits, y)
    assert t > 50 and "upper end" in temperature_warning(t)
    separated = rng.normal(0, 2, 400)
    t = fit_temperature(separated, (separated > 0).astype(int))
    assert t < 0.02 and "perfectly separated" in temperature_warning(t)
    z = rng.normal(0, 2.5, 2000)
    y = (rng.random(2000) < 1 / (1 + np.exp(-z))).astype(int)
    assert temperature_warning(fit_temperature(2 * z, y)) is None


def test_nll_is_stable_for_extreme_logits():
    assert np.isfinite(nll(np.array([800.0, -800.0]), np.array([0, 1])))


def test_per_group_metrics_for_each_source_and_age_group():
    import pandas as pd

    from pneumoscope.evaluation.evaluate import MIN_GROUP_SIZE, _per_group

    y, p = _scores(400, 5)
    rows = pd.DataFrame(
        {
            "source": np.where(np.arange(400) < 300, "pediatric", "adult"),
            "age_group": np.where(np.arange(400) % 2 == 0, "child", "adult"),
            "tiny": "x",
        }
    )
    rows.loc[: MIN_GROUP_SIZE - 2, "source"] = "few"  # a group too small for metrics
    out = _per_group(rows, y, p, 0.5, np.arange(400).astype(str), n_boot=100, seed=0)
    assert set(out) == {"source", "age_group"}  # columns with one value are not split
    assert out["source"]["few"] == {"n": MIN_GROUP_SIZE - 1}
    ped = out["source"]["pediatric"]
    mask = rows["source"].to_numpy() == "pediatric"
    assert ped["n"] == mask.sum()
    assert ped["auroc"] == pytest.approx(binary_metrics(y[mask], p[mask], 0.5)["auroc"])
    assert ped["ci"]["auroc"][0] <= ped["auroc"] <= ped["ci"]["auroc"][1]
