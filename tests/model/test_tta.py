"""Test-time augmentation: the same seeded transforms for every film, averaged with it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pneumoscope.data.augment import AugmentConfig
from pneumoscope.model.calibration import TemperatureScaler, ValidationCheck
from pneumoscope.model.tta import TestTimeAugmentation, TTARunner, copy_stack, with_tta

AUG = {"rotation": 10.0, "zoom": 0.1, "shift": 0.05, "crop": 0.5, "gamma": 0.2, "fill": "border"}
IDENTITY = {
    "rotation": 0.0,
    "zoom": 0.0,
    "shift": 0.0,
    "brightness": 0.0,
    "contrast": 0.0,
}


def films(n: int, size: int = 24, seed: int = 0) -> np.ndarray:
    """Films with structure (a bright disc at a random place), so transforms show."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = np.empty((n, size, size), np.uint8)
    for i in range(n):
        cy, cx = rng.integers(4, size - 4, 2)
        out[i] = np.where((yy - cy) ** 2 + (xx - cx) ** 2 < 20, 220, 30) + rng.integers(0, 20)
    return out


class MeanRunner:
    """A backend stand-in: logit = weighted pixel sum, features = row means; it records
    the batch sizes it was given."""

    def __init__(self):
        self.calls: list[int] = []
        self.img_size = 24

    def logits_and_features(self, images, batch_size=64, rows=None):
        x = images if rows is None else images[rows]
        self.calls.append(len(x))
        w = np.linspace(-1, 1, x.shape[-1], dtype=np.float32)
        z = (x.astype(np.float32) / 255.0 * w).sum(axis=(1, 2)) / 10.0
        return z.astype(np.float32), x.astype(np.float32).mean(axis=2)


def test_every_film_gets_the_same_seeded_copies_whatever_its_batch():
    f = films(5)
    cfg = AugmentConfig.from_dict(AUG)
    all5 = copy_stack(f, 3, cfg, seed=4)
    assert all5.shape == (15, 24, 24) and all5.dtype == np.uint8
    alone = copy_stack(f[3:4], 3, cfg, seed=4)
    np.testing.assert_array_equal(all5[9:12], alone)
    assert not np.array_equal(all5[9], all5[10])  # the 3 copies differ from each other
    assert not np.array_equal(copy_stack(f[3:4], 3, cfg, seed=5), alone)  # seed matters
    twin = copy_stack(np.stack([f[0], f[0]]), 3, cfg, seed=4)
    np.testing.assert_array_equal(twin[:3], twin[3:])


def test_identity_copies_are_the_film():
    f = films(2)
    same = copy_stack(f, 2, AugmentConfig.from_dict(IDENTITY), seed=0)
    np.testing.assert_array_equal(same, np.repeat(f, 2, axis=0))


def test_the_logit_is_the_mean_of_the_film_and_its_copies_and_features_stay_plain():
    f = films(7)
    inner = MeanRunner()
    runner = TTARunner(inner, TestTimeAugmentation(4, 1, AUG))
    z, feats = runner.logits_and_features(f, batch_size=10)
    z_plain, f_plain = MeanRunner().logits_and_features(f)
    copies = copy_stack(f, 4, AugmentConfig.from_dict(AUG), 1)
    z_copies, _ = MeanRunner().logits_and_features(copies)
    expect = (z_plain + z_copies.reshape(7, 4).sum(axis=1)) / 5.0
    np.testing.assert_allclose(z, expect, rtol=1e-6)
    np.testing.assert_array_equal(feats, f_plain)
    assert max(inner.calls) <= 10  # batch_size bounds the forward passes of a call
    # a film alone, or picked out by rows, scores as it did in the batch
    z1, _ = runner.logits_and_features(f[5:6], batch_size=1)
    z_rows, _ = runner.logits_and_features(f, rows=np.array([5, 2]))
    assert z1[0] == z[5] and z_rows.tolist() == [z[5], z[2]]
    assert runner.img_size == 24 and runner.predict_logits(f).tolist() == z.tolist()


def test_no_tta_is_the_backend_itself_and_tta_never_wraps_twice():
    inner = MeanRunner()
    assert with_tta(inner, None) is inner
    assert with_tta(inner, TestTimeAugmentation(0, 0, AUG)) is inner
    wrapped = with_tta(inner, TestTimeAugmentation(2, 0, AUG))
    assert isinstance(wrapped, TTARunner)
    assert with_tta(wrapped, TestTimeAugmentation(3, 0, AUG)) is wrapped


def test_calibration_json_keeps_the_tta(tmp_path):
    from pneumoscope.model.contract import RunFiles

    run = RunFiles.of(tmp_path)
    run.weights.write_bytes(b"weights")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    z = rng.normal(size=200) + 2 * y
    scaler = TemperatureScaler().fit(z, y, TestTimeAugmentation(8, 0, AUG))
    scaler.set_threshold("youden", {"youden": 0.4}, {})
    scaler.set_provenance(ValidationCheck(200, {}, {}, {}), "/data", "abc")
    scaler.save(run)
    back = TemperatureScaler.load(run)
    assert back.tta_ == TestTimeAugmentation(8, 0, AUG)
    assert "8 augmented copies of it" in back.tta_note()
    plain = TemperatureScaler().fit(z, y)
    plain.set_threshold("youden", {"youden": 0.4}, {})
    plain.set_provenance(ValidationCheck(200, {}, {}, {}), "/data", "abc")
    plain.save(run)
    assert "tta" not in json.loads(run.calibration.read_text())
    assert plain.tta_note() == "" and TemperatureScaler.load(run).tta_ is None


def test_a_negative_count_is_one_readable_line():
    from pneumoscope.core.errors import UserError
    from pneumoscope.training.config import TrainConfig

    with pytest.raises(UserError, match="--tta must be 0 or more"):
        TrainConfig(data="d", out="o", tta=-1)


def test_the_run_config_names_the_tta_only_when_it_is_on():
    import yaml

    from pneumoscope.training.config import TrainConfig

    assert yaml.safe_load(TrainConfig(data="d", out="o", tta=8).to_yaml())["tta"] == 8
    assert "tta" not in yaml.safe_load(TrainConfig(data="d", out="o").to_yaml())  # as before


# ------------------------------------------------- files and flags from before the rename
# Test-time augmentation was called "test views" (calibration.json test_views and
# threshold_views, config keys of the same names, calibrate --views / --test-views).

OLD_CALIBRATION = {
    "temperature": 1.3,
    "temperature_warning": None,
    "policy": "youden",
    "policy_params": {},
    "threshold_views": {
        "views": 4, "seed": 0, "augment": AUG, "n_scored": 1000, "views_auroc": 0.97,
    },
    "test_views": {"views": 8, "seed": 0, "augment": AUG},
    "threshold": 0.42,
    "thresholds_by_policy": {"youden": 0.42},
    "validation": {"n": 200, "before": {}, "after": {}, "at_threshold": {}},
    "validation_data_sha256": "abc",
    "weights_sha256": None,
    "data": "/data",
    "created": "2026-01-01T00:00:00+00:00",
}  # fmt: skip


def test_a_calibration_written_before_the_rename_loads_and_scores_the_same(tmp_path):
    from pneumoscope.model.contract import RunFiles

    run = RunFiles.of(tmp_path)
    run.weights.write_bytes(b"weights")
    old = {**OLD_CALIBRATION, "weights_sha256": run.weights_sha256()}
    run.calibration.write_text(json.dumps(old))
    back = TemperatureScaler.load(run)
    assert back.tta_ == TestTimeAugmentation(8, 0, AUG)
    t = back.threshold_tta_
    assert (t.copies, t.seed, t.augment, t.n_scored, t.copies_auroc) == (4, 0, AUG, 1000, 0.97)
    assert back.tta_note() == (
        " + 4 augmented copies of each image; each score is the logit averaged over the "
        "film and 8 augmented copies of it"
    )
    # written again: the new keys, in the old keys' places, and nothing of the old ones
    back.save(run)
    new = json.loads(run.calibration.read_text())
    assert [k for k in new if "views" in k] == []
    assert list(new)[4:6] == ["threshold_tta", "tta"]
    assert new["tta"] == {"copies": 8, "seed": 0, "augment": AUG}
    assert new["threshold_tta"] == {
        "copies": 4, "seed": 0, "augment": AUG, "n_scored": 1000, "copies_auroc": 0.97,
    }  # fmt: skip
    again = TemperatureScaler.load(run)
    assert again.tta_ == back.tta_ and again.threshold_tta_ == back.threshold_tta_
    # the same film scores the same whichever file the calibration came from
    f = films(6)
    z_old, _ = with_tta(MeanRunner(), back.tta_).logits_and_features(f)
    z_new, _ = with_tta(MeanRunner(), again.tta_).logits_and_features(f)
    np.testing.assert_array_equal(z_old, z_new)


def test_config_keys_from_before_the_rename_load_as_the_new_ones(tmp_path):
    from pneumoscope.training.config import TrainConfig, resolve_config

    cfg = TrainConfig(data="d", out="o", threshold_views=4, test_views=8)
    assert (cfg.threshold_tta, cfg.tta) == (4, 8)
    saved = tmp_path / "config.yaml"
    saved.write_text("data: d\nout: o\nthreshold_views: 3\ntest_views: 2\n")
    cfg = resolve_config(saved, {})
    assert (cfg.threshold_tta, cfg.tta) == (3, 2)
    text = cfg.to_yaml()
    assert "threshold_tta: 3" in text and "tta: 2" in text and "views" not in text
    assert resolve_config(saved, {"tta": 5}).tta == 5  # a flag still wins over the file


def test_a_card_from_before_the_rename_reads_and_round_trips_key_for_key():
    from pneumoscope.model.contract import TrainingInfo, _build, _plain

    old = {"imbalance": "none", "threshold_views": 4, "test_views": 8, "seed": 0}
    t = _build(TrainingInfo, old)
    assert (t.threshold_tta, t.tta) == (4, 8) and t.extra == {}
    written = _plain(t)
    assert written["threshold_views"] == 4 and written["test_views"] == 8
    assert "tta" not in written and "threshold_tta" not in written
    new = _plain(TrainingInfo(threshold_tta=4, tta=8))  # a card written today
    assert new["threshold_tta"] == 4 and new["tta"] == 8 and "test_views" not in new


def test_the_old_flags_still_work_hidden(monkeypatch, tmp_path):
    import pneumoscope.evaluation.calibration as cal
    import pneumoscope.training.train as train_mod
    from pneumoscope.core.errors import UserError
    from tests.helpers import invoke_cli

    class Stop(UserError):
        pass

    seen: dict = {}

    def fake_calibrate(*args, **kwargs):
        seen.update(kwargs)
        raise Stop("stop")

    def fake_train(cfg, **kwargs):
        seen.update(threshold_tta=cfg.threshold_tta, tta=cfg.tta)
        raise Stop("stop")

    monkeypatch.setattr(cal, "calibrate", fake_calibrate)
    monkeypatch.setattr(train_mod, "train", fake_train)
    base = ["calibrate", "--run", str(tmp_path), "--data", str(tmp_path), "--no-ood"]
    for flags, expect in [
        (["--views", "3", "--test-views", "2"], (3, 2)),
        (["--threshold-tta", "3", "--tta", "2"], (3, 2)),
        ([], (None, None)),
    ]:
        seen.clear()
        assert "error: stop" in invoke_cli(*base, *flags).stderr
        assert (seen["threshold_tta"], seen["tta"]) == expect, flags
    train = ["train", "--data", "d", "--out", str(tmp_path / "r")]
    for flags in (
        ["--threshold-views", "3", "--test-views", "2"],
        ["--threshold-tta", "3", "--tta", "2"],
    ):
        seen.clear()
        assert "error: stop" in invoke_cli(*train, *flags).stderr
        assert (seen["threshold_tta"], seen["tta"]) == (3, 2), flags
    # --help shows the new names only
    for command in ("calibrate", "train"):
        shown = invoke_cli(command, "--help").stdout
        assert "--tta" in shown and "--threshold-tta" in shown
        assert "--test-views" not in shown and "--views" not in shown
        assert "--threshold-views" not in shown
