"""The calibrate step writes the calibration and nothing else: the OOD guard is its own
step (train runs both, one after the other; `pneumoscope calibrate` runs the guard unless
--no-ood)."""

from __future__ import annotations

import json
import shutil

import pytest

from pneumoscope.evaluation.calibration import calibrate
from pneumoscope.model.contract import RunFiles
from pneumoscope.model.ood import OodGuard, fit_ood_guard
from tests.helpers import run_cli


def _ood_state(files: RunFiles) -> dict:
    return {
        p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in (files.ood_card, files.ood_stats)
    }


@pytest.fixture
def run(run_dir, tmp_path) -> RunFiles:
    shutil.copytree(run_dir, tmp_path / "run")
    return RunFiles(tmp_path / "run")


def test_calibrate_leaves_the_ood_guard_untouched(run, data_dir):
    before = _ood_state(run)
    cal_before = run.calibration.read_text()
    scaler = calibrate(run.root, data_dir, policy="f1")
    assert _ood_state(run) == before
    assert run.calibration.read_text() != cal_before
    assert json.loads(run.calibration.read_text())["policy"] == "f1" == scaler.policy_


def test_calibrate_without_a_guard_makes_none(run, data_dir):
    run.ood_card.unlink()
    run.ood_stats.unlink()
    calibrate(run.root, data_dir)
    assert not run.ood_card.exists() and not run.ood_stats.exists()


def test_the_guard_step_refits_what_training_fitted(run, data_dir):
    trained = json.loads(run.ood_card.read_text())
    guard = fit_ood_guard(run.root, data_dir)
    again = json.loads(run.ood_card.read_text())
    assert list(again) == list(trained)
    for key in ("feature_dim", "n_fit", "n_val", "weights_sha256", "method", "threshold_rule"):
        assert again[key] == trained[key]
    assert again["threshold"] == pytest.approx(trained["threshold"], rel=1e-5)
    assert OodGuard.load(run).threshold_ == guard.threshold_ == again["threshold"]


def test_cli_calibrate_refits_the_guard_unless_no_ood(run, data_dir):
    before = _ood_state(run)
    r = run_cli("calibrate", "--run", str(run.root), "--data", str(data_dir), "--no-ood")
    assert r.returncode == 0, r.stderr
    assert _ood_state(run) == before
    run.ood_card.unlink()
    r = run_cli("calibrate", "--run", str(run.root), "--data", str(data_dir))
    assert r.returncode == 0, r.stderr
    assert "written to" in r.stdout and OodGuard.load(run) is not None


def test_cli_calibrate_ood_method_opt_in_and_a_bad_one_is_one_line(run, data_dir):
    r = run_cli("calibrate", "--run", str(run.root), "--data", str(data_dir),
                "--ood-method", "mahalanobis+residual")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(run.ood_card.read_text())["method_id"] == "mahalanobis+residual"
    assert OodGuard.load(run).method == "mahalanobis+residual"
    before = _ood_state(run)
    r = run_cli("calibrate", "--run", str(run.root), "--data", str(data_dir),
                "--ood-method", "energy")  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "--ood-method must be one of mahalanobis, mahalanobis+residual" in r.stderr
    assert _ood_state(run) == before


def test_calibrate_warns_when_the_copies_score_much_worse_than_the_films(capsys):
    """At a larger evaluation size the threshold copies scored far worse than the films
    (0.954 against 0.990) and the threshold chosen on both cost sensitivity: say so."""
    from types import SimpleNamespace

    from pneumoscope.cli.evaluate import _echo_calibration
    from pneumoscope.model.calibration import ThresholdAugmentation

    def fitted(copies_auroc: float):
        d = {"nll": 0.1, "ece": 0.02, "brier": 0.03, "auroc": 0.990}
        at = {"sensitivity": 0.775, "specificity": 1.0}
        tv = ThresholdAugmentation(
            copies=4, seed=0, augment={}, n_scored=10, copies_auroc=copies_auroc
        )
        v = SimpleNamespace(n=5, before=d, after=d, at_threshold=at)
        return SimpleNamespace(
            validation_=v, temperature_=0.55, tta_=None, threshold_tta_=tv,
            threshold_=0.98, temperature_warning_="",
        )  # fmt: skip

    _echo_calibration(fitted(0.954), "youden", RunFiles.of(".").calibration)
    err = capsys.readouterr().err
    assert "copies score much worse than the films (AUROC 0.954 against 0.990)" in err
    assert "--threshold-tta 0" in err
    _echo_calibration(fitted(0.985), "youden", RunFiles.of(".").calibration)
    assert "copies" not in capsys.readouterr().err
