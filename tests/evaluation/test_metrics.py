"""Every metric agrees with scikit-learn; every threshold policy does what it promises."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_score,
    recall_score,
    roc_auc_score,
)

from pneumoscope.evaluation.metrics import (
    binary_metrics,
    choose_threshold,
    expected_calibration_error,
)


def _data(seed: int, n: int = 300, ties: bool = False):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.6).astype(int)
    p = 1 / (1 + np.exp(-(rng.normal(0, 1.5, n) + 2.0 * (y - 0.5))))
    if ties:
        p = np.round(p, 1)  # many tied scores
    return y, p


@pytest.mark.parametrize(
    "seed, ties, thr", [(0, False, 0.5), (1, True, 0.5), (2, False, 0.3), (3, True, 0.71)]
)
def test_metrics_agree_with_sklearn(seed, ties, thr):
    y, p = _data(seed, ties=ties)
    m = binary_metrics(y, p, thr)
    pred = (p >= thr).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, pred).ravel()
    assert m["auroc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert m["auprc"] == pytest.approx(average_precision_score(y, p), abs=1e-12)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["sensitivity"] == pytest.approx(recall_score(y, pred))
    assert m["specificity"] == pytest.approx(recall_score(1 - y, 1 - pred))
    assert m["ppv"] == pytest.approx(precision_score(y, pred))
    assert m["npv"] == pytest.approx(precision_score(1 - y, 1 - pred))
    assert m["f1"] == pytest.approx(f1_score(y, pred))
    assert m["brier"] == pytest.approx(brier_score_loss(y, p))
    assert m["log_loss"] == pytest.approx(log_loss(y, p), rel=1e-6)
    assert m["confusion_matrix"] == [[tn, fp], [fn, tp]]


def test_ece_by_hand():
    y = np.array([0, 1, 1, 1])
    p = np.array([0.1, 0.9, 0.9, 0.6])  # bins: {0.1}, {0.9, 0.9}, {0.6}
    # |0 - 0.1| * 1 + |1 - 0.9| * 2 + |1 - 0.6| * 1, over 4
    assert expected_calibration_error(y, p) == pytest.approx((0.1 + 0.2 + 0.4) / 4)
    assert expected_calibration_error(np.array([0, 1]), np.array([0.0, 1.0])) == 0.0


def test_one_class_gives_nan_auroc_not_a_crash():
    m = binary_metrics(np.ones(5, int), np.linspace(0.1, 0.9, 5), 0.5)
    assert np.isnan(m["auroc"]) and np.isnan(m["specificity"])


def test_youden_and_f1_thresholds_are_optimal_on_the_data():
    y, p = _data(4)
    grid = np.unique(p)
    for policy, key in (("youden", None), ("f1", "f1")):
        t = choose_threshold(y, p, policy)
        m = binary_metrics(y, p, t)
        val = m["sensitivity"] + m["specificity"] if key is None else m[key]
        for g in grid:
            mg = binary_metrics(y, p, g)
            other = mg["sensitivity"] + mg["specificity"] if key is None else mg[key]
            assert val >= other - 1e-12


def test_cost_policy_moves_with_the_cost_of_a_missed_pneumonia():
    y, p = _data(5)
    t_cheap = choose_threshold(y, p, "cost", cost_fn=1, cost_fp=1)
    t_dear = choose_threshold(y, p, "cost", cost_fn=20, cost_fp=1)
    assert t_dear < t_cheap
    assert (
        binary_metrics(y, p, t_dear)["sensitivity"] >= binary_metrics(y, p, t_cheap)["sensitivity"]
    )


@pytest.mark.parametrize("target", [0.8, 0.95, 0.99])
def test_sensitivity_policy_reaches_the_target_with_best_specificity(target):
    y, p = _data(6)
    t = choose_threshold(y, p, "sensitivity", target_sensitivity=target)
    m = binary_metrics(y, p, t)
    assert m["sensitivity"] >= target
    higher = np.unique(p[p > t])[:1]  # the next stricter threshold loses the target
    if len(higher):
        assert binary_metrics(y, p, higher[0] + 1e-9)["sensitivity"] < target


def test_unknown_policy():
    with pytest.raises(ValueError, match="unknown policy"):
        choose_threshold(np.array([0, 1]), np.array([0.2, 0.8]), "magic")
