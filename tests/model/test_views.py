"""Test-time views: the same seeded transforms for every film, averaged with it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pneumoscope.data.augment import AugmentConfig
from pneumoscope.model.calibration import TemperatureScaler, ValidationCheck
from pneumoscope.model.views import TestViews, ViewsRunner, view_stack, with_views

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


def test_every_film_gets_the_same_seeded_views_whatever_its_batch():
    f = films(5)
    cfg = AugmentConfig.from_dict(AUG)
    all5 = view_stack(f, 3, cfg, seed=4)
    assert all5.shape == (15, 24, 24) and all5.dtype == np.uint8
    alone = view_stack(f[3:4], 3, cfg, seed=4)
    np.testing.assert_array_equal(all5[9:12], alone)
    assert not np.array_equal(all5[9], all5[10])  # the 3 views differ from each other
    assert not np.array_equal(view_stack(f[3:4], 3, cfg, seed=5), alone)  # seed matters
    twin = view_stack(np.stack([f[0], f[0]]), 3, cfg, seed=4)
    np.testing.assert_array_equal(twin[:3], twin[3:])


def test_identity_views_are_the_film():
    f = films(2)
    same = view_stack(f, 2, AugmentConfig.from_dict(IDENTITY), seed=0)
    np.testing.assert_array_equal(same, np.repeat(f, 2, axis=0))


def test_the_logit_is_the_mean_of_the_film_and_its_views_and_features_stay_plain():
    f = films(7)
    inner = MeanRunner()
    runner = ViewsRunner(inner, TestViews(4, 1, AUG))
    z, feats = runner.logits_and_features(f, batch_size=10)
    z_plain, f_plain = MeanRunner().logits_and_features(f)
    copies = view_stack(f, 4, AugmentConfig.from_dict(AUG), 1)
    z_views, _ = MeanRunner().logits_and_features(copies)
    expect = (z_plain + z_views.reshape(7, 4).sum(axis=1)) / 5.0
    np.testing.assert_allclose(z, expect, rtol=1e-6)
    np.testing.assert_array_equal(feats, f_plain)
    assert max(inner.calls) <= 10  # batch_size bounds the forward passes of a call
    # a film alone, or picked out by rows, scores as it did in the batch
    z1, _ = runner.logits_and_features(f[5:6], batch_size=1)
    z_rows, _ = runner.logits_and_features(f, rows=np.array([5, 2]))
    assert z1[0] == z[5] and z_rows.tolist() == [z[5], z[2]]
    assert runner.img_size == 24 and runner.predict_logits(f).tolist() == z.tolist()


def test_no_views_is_the_backend_itself_and_views_never_wrap_twice():
    inner = MeanRunner()
    assert with_views(inner, None) is inner and with_views(inner, TestViews(0, 0, AUG)) is inner
    wrapped = with_views(inner, TestViews(2, 0, AUG))
    assert isinstance(wrapped, ViewsRunner) and with_views(wrapped, TestViews(3, 0, AUG)) is wrapped


def test_calibration_json_keeps_the_views(tmp_path):
    from pneumoscope.model.contract import RunFiles

    run = RunFiles.of(tmp_path)
    run.weights.write_bytes(b"weights")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    z = rng.normal(size=200) + 2 * y
    scaler = TemperatureScaler().fit(z, y, TestViews(8, 0, AUG))
    scaler.set_threshold("youden", {"youden": 0.4}, {})
    scaler.set_provenance(ValidationCheck(200, {}, {}, {}), "/data", "abc")
    scaler.save(run)
    back = TemperatureScaler.load(run)
    assert back.test_views_ == TestViews(8, 0, AUG)
    assert "8 augmented views of it" in back.views_note()
    plain = TemperatureScaler().fit(z, y)
    plain.set_threshold("youden", {"youden": 0.4}, {})
    plain.set_provenance(ValidationCheck(200, {}, {}, {}), "/data", "abc")
    plain.save(run)
    assert "test_views" not in json.loads(run.calibration.read_text())
    assert plain.views_note() == "" and TemperatureScaler.load(run).test_views_ is None


def test_a_negative_count_is_one_readable_line():
    from pneumoscope.core.errors import UserError
    from pneumoscope.training.config import TrainConfig

    with pytest.raises(UserError, match="--test-views must be 0 or more"):
        TrainConfig(data="d", out="o", test_views=-1)


def test_the_run_config_names_the_views_only_when_they_are_on():
    from pneumoscope.training.config import TrainConfig

    assert "test_views: 8" in TrainConfig(data="d", out="o", test_views=8).to_yaml()
    assert "test_views" not in TrainConfig(data="d", out="o").to_yaml()  # as before them
