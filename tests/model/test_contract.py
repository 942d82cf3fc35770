"""The run contract: model cards of every version so far load, newer ones are refused with
one line, every file of a run has one name, and the weights are hashed once."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pneumoscope.core.errors import UserError
from pneumoscope.model import contract
from pneumoscope.model.contract import CARD_VERSION, ModelCard, RunFiles, read_card
from pneumoscope.model.run import load_run

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "run_v1"


def _v1() -> dict:
    return json.loads((FIXTURE / "model.json").read_text())


def test_the_v1_fixture_card_round_trips_key_for_key():
    d = _v1()
    card = ModelCard.from_dict(d)
    assert card.card_version == 1 == CARD_VERSION  # release 0.1.0 wrote no version
    assert card.architecture == "test_efficientnet" and card.input.img_size == 32
    assert card.input.preprocess.clahe is True and card.input.in_chans == 1
    assert card.input.normalization.kind == "dataset" and card.input.eval_crop == 1.0
    assert card.training.augment["rotation"] == 10.0 and card.training.threshold_tta == 0
    out = card.to_dict()
    assert out.pop("card_version") == 1
    # the same keys in the same order with the same values: tools reading model.json see
    # no change
    assert json.dumps(out, indent=2) == json.dumps(d, indent=2)
    assert ModelCard.from_dict(card.to_dict()).to_dict() == card.to_dict()


def test_saved_card_is_todays_model_json_plus_its_version(tmp_path):
    card = ModelCard.from_dict(_v1())
    card.save(RunFiles(tmp_path))
    written = json.loads((tmp_path / "model.json").read_text())
    assert list(written) == ["card_version", *_v1()]
    assert {k: v for k, v in written.items() if k != "card_version"} == _v1()


def test_cards_of_older_shape_get_their_defaults_in_one_place():
    d = _v1()
    for key in ("eval_crop", "input_note", "pneumoscope_version", "threshold_policy"):
        d.pop(key)
    d["normalization"].pop("kind")
    # the first release's training section
    keep = ("imbalance", "pos_weight", "epochs_run", "train_seconds", "stopped_by", "seed")
    d["training"] = {k: d["training"][k] for k in keep}
    card = ModelCard.from_dict(d)
    assert card.input.eval_crop == 1.0 and card.input_note == ""
    assert card.input.normalization.kind == "dataset"  # the only normalisation back then
    assert card.threshold_policy == "0.5" and card.pneumoscope_version == "unknown"
    t = card.training
    assert t.augment is None and t.threshold_tta == 0 and t.ema_decay == 0.0
    assert t.freeze_epochs == 0 and t.processes == 1 and t.initial_weights is None
    assert t.optimizer is None and t.epochs_run == 2


def test_keys_this_version_does_not_know_are_kept():
    d = _v1()
    d["note"] = "made for the ward"
    d["training"]["sampler_seed"] = 3
    out = ModelCard.from_dict(d).to_dict()
    assert out["note"] == "made for the ward" and out["training"]["sampler_seed"] == 3


def test_cards_of_runs_made_with_removed_features_load_and_keep_their_records():
    """Runs refitted by `calibrate --refit-size` or shortened by fit_to_time (tried, not
    adopted, removed) still load; what their cards recorded is kept and written back."""
    d = _v1()
    refit = {"trained_img_size": 160, "img_size": 192, "batch_norms": 20, "films": 1024}
    d["size_refit"] = refit
    d["training"]["schedule_note"] = "schedule fitted to the 30-minute cap: 6 of 12 epochs"
    d["training"]["ema_decay"] = 0.995
    card = ModelCard.from_dict(d)
    assert card.training.ema_decay == 0.995  # what the run was trained with
    out = card.to_dict()
    assert out["size_refit"] == refit
    assert out["training"]["schedule_note"] == d["training"]["schedule_note"]
    assert ModelCard.from_dict(out).to_dict() == out


def test_a_run_with_an_older_card_loads_and_predicts_the_same(tmp_path):
    old = tmp_path / "old"
    shutil.copytree(FIXTURE, old)
    d = json.loads((old / "model.json").read_text())
    for key in ("eval_crop", "input_note"):
        d.pop(key)
    d["normalization"].pop("kind")
    (old / "model.json").write_text(json.dumps(d))
    x = np.random.default_rng(0).integers(0, 256, (4, 32, 32), dtype=np.uint8)
    a, b = load_run(old), load_run(FIXTURE)
    assert a.eval_crop == 1.0 and a.threshold == b.threshold
    np.testing.assert_array_equal(a.predict_proba(x), b.predict_proba(x))


def test_a_newer_card_gets_one_line_saying_to_upgrade(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    d = _v1()
    d["card_version"] = CARD_VERSION + 1
    d["pneumoscope_version"] = "9.0.0"
    (run / "model.json").write_text(json.dumps(d))
    with pytest.raises(UserError) as err:
        load_run(run)
    msg = str(err.value)
    assert "\n" not in msg
    assert "written by pneumoscope 9.0.0" in msg and f"card version {CARD_VERSION + 1}" in msg
    assert msg.endswith("upgrade pneumoscope")


def test_a_card_without_the_input_is_refused_with_one_line(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    d = _v1()
    del d["normalization"]
    (run / "model.json").write_text(json.dumps(d))
    with pytest.raises(UserError, match="no normalization"):
        read_card(run)


def test_run_files_name_every_file_of_a_run():
    f = RunFiles(Path("/r"))
    assert f.weights == Path("/r/model.safetensors") and f.card == Path("/r/model.json")
    assert f.calibration.name == "calibration.json"
    assert (f.ood_card.name, f.ood_stats.name) == ("ood.json", "ood.safetensors")
    assert f.last_ckpt == Path("/r/checkpoints/last.ckpt")
    assert f.best_val == Path("/r/checkpoints/best_val.npz")
    assert f.summary == Path("/r/checkpoints/summary.json")
    assert (f.onnx.name, f.int8.name, f.export_record.name) == (
        "model.onnx",
        "model.int8.onnx",
        "export.json",
    )
    assert f.predictions("test") == Path("/r/predictions_test.csv")
    assert RunFiles.int8_beside(f.onnx) == f.int8
    assert RunFiles.record_beside(f.onnx) == f.export_record
    assert RunFiles.record_beside(Path("/x/m.onnx")) == Path("/x/m.export.json")
    assert f.card not in f.fitted_files() and f.weights in f.fitted_files()


def test_the_digest_is_cached_until_the_file_changes(tmp_path, monkeypatch):
    calls = []
    real = contract._sha256_of
    monkeypatch.setattr(contract, "_sha256_of", lambda p: calls.append(p) or real(p))
    path = tmp_path / "w.bin"
    path.write_bytes(b"a" * 10)
    first = contract.file_sha256(path)
    assert contract.file_sha256(path) == first and len(calls) == 1
    path.write_bytes(b"b" * 11)
    assert contract.file_sha256(path) != first and len(calls) == 2


def test_validation_metrics_are_typed_and_missing_figures_are_none():
    from pneumoscope.model.contract import ValidationMetrics

    v = ValidationMetrics.from_dict(
        {"val_auroc": 0.98, "val_loss": 0.2, "at_threshold": {"sensitivity": 0.95}}
    )
    assert (v.auroc, v.loss, v.accuracy) == (0.98, 0.2, None)
    assert v.at_threshold["sensitivity"] == 0.95
    assert ValidationMetrics.from_dict({}).auroc is None  # an ensemble's card has none
