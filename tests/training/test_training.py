"""Training recipes: presets and configs, batched augmentation, the seed2-style input
(3 channels, ImageNet statistics, evaluation crop) through every inference path,
backbone freezing, clear errors for a wrong cache or precision."""

from __future__ import annotations

import json
import math
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback
from safetensors.torch import load_file
from typer.testing import CliRunner

from pneumoscope.core.errors import UserError
from pneumoscope.core.settings import preset_folder, preset_names
from pneumoscope.data.augment import AugmentConfig, augment_batch
from pneumoscope.data.cache import open_cache
from pneumoscope.data.preprocess import try_load_image
from pneumoscope.inference.predict import predict_to_csv
from pneumoscope.model.run import load_run, sigmoid
from pneumoscope.training.config import TrainConfig, resolve_config
from pneumoscope.training.train import train
from tests.helpers import REPO

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(data_dir, out, **kw) -> TrainConfig:
    base = dict(
        data=str(data_dir),
        out=str(out),
        model="seed_cnn",
        epochs=2,
        batch_size=16,
        lr=3e-3,
        threads=1,
        accelerator="cpu",
    )
    base.update(kw)
    return TrainConfig(**base)


# --------------------------------------------------------------------------- presets, config


def _preset_table() -> dict[str, tuple[str, str]]:
    """docs/commands.md's preset table: {preset: (what it is, cache it needs)}."""
    rows = {}
    for line in (REPO / "docs" / "commands.md").read_text().splitlines():
        m = re.match(r"^\| `([\w-]+)` \| (.+) \| (.+) \|$", line)
        if m:
            rows[m.group(1)] = (m.group(2), m.group(3))
    return rows


def test_presets_load_and_agree_with_the_page_that_describes_them(tmp_path):
    """Every shipped preset loads by name and validates, and docs/commands.md's table says
    what it holds: its size, epochs and rotation, and the cache it needs (a preset edited
    without its page, or a page left behind, fails here; restating the YAML could not)."""
    names = set(preset_names("train"))  # shipped in the package: pneumoscope/presets/train
    table = _preset_table()
    assert {"fast-cpu", "seed1-cnn", "seed2-efficientnet"} <= names
    assert set(table) == names
    over = {"data": "d", "out": str(tmp_path)}
    for name in sorted(names):
        cfg = resolve_config(name, over)
        cfg.validate()
        what, cache = table[name]
        needs = f"`--img-size {cfg.img_size}{'' if cfg.clahe else ' --no-clahe'}`"
        assert cache == needs, (name, cache)
        assert f"{cfg.img_size} px" in what and f"{cfg.epochs} epochs" in what, name
        assert f"rotation {cfg.augment['rotation']:g}" in what, name
        assert ("CLAHE" in what) == cfg.clahe, name
    fc = resolve_config("fast-cpu", over)  # the reference recipe of the README
    what = table["fast-cpu"][0]
    assert f"+ {fc.threshold_tta} augmented copies" in what
    assert f"{fc.tta} augmented copies (test-time augmentation)" in what
    assert f"at most {fc.max_minutes:g} minutes" in what
    assert resolve_config(str(preset_folder("train") / "seed2-efficientnet.yaml"), over) == (
        resolve_config("seed2-efficientnet", over)
    )  # a preset's file is the preset
    # a weights file given by flag replaces the preset's download
    s2w = resolve_config("seed2-efficientnet", {**over, "weights": "b0.safetensors"})
    assert s2w.weights == "b0.safetensors" and s2w.pretrained is False


def test_config_precedence_and_one_line_errors(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(
        yaml.safe_dump(
            {"data": "d", "out": "o", "epochs": 7, "lr": 0.01, "augment": {"gamma": 0.2}}
        )
    )
    cfg = resolve_config(f, {"epochs": 3, "augment": {"hflip": 0.5}})
    assert cfg.epochs == 3 and cfg.lr == 0.01  # flag over file over default
    assert cfg.augment["gamma"] == 0.2 and cfg.augment["hflip"] == 0.5
    assert cfg.augment["rotation"] == AugmentConfig().rotation  # unspecified: the default
    f.write_text("data: d\nout: o\nepoch: 3\n")
    with pytest.raises(UserError, match="unknown setting 'epoch'.*did you mean epochs"):
        resolve_config(f, {})
    f.write_text("data: d\nout: o\nepochs: ten\n")
    with pytest.raises(UserError, match="'epochs' .* must be a number"):
        resolve_config(f, {})
    f.write_text("data: d\nout: o\naugment: {rotaton: 3}\n")
    with pytest.raises(UserError, match="unknown augment setting"):
        resolve_config(f, {}).validate()
    with pytest.raises(UserError, match="config not found: nope"):
        resolve_config("nope", {})
    with pytest.raises(UserError, match="--out missing"):
        resolve_config(None, {"data": "d"})
    for bad, match in (
        ({"optimizer": "adam2"}, "--optimizer must be one of"),
        ({"scheduler": "step"}, "--scheduler must be one of"),
        ({"pretrained": True, "weights": "w.pth"}, "not both"),
        ({"freeze_epochs": 5, "epochs": 5}, "--freeze-epochs"),
        ({"augment": {"gamma": 1.5}}, "augment gamma"),
    ):
        with pytest.raises(UserError, match=match):
            resolve_config(None, {"data": "d", "out": "o", **bad}).validate()


def test_a_run_config_written_by_release_0_1_loads_back_unchanged(tmp_path):
    saved = REPO / "tests" / "fixtures" / "run_v1" / "config.yaml"
    cfg = resolve_config(saved.parent, {})  # a run folder stands for its config.yaml
    # unchanged but for the weight average, which 0.1 wrote off and which is gone since,
    # and threshold_views, renamed threshold_tta (same value, same place)
    assert "ema_decay: 0.0\n" in saved.read_text() and cfg.retired_note() == ""
    assert "threshold_views: 0\n" in saved.read_text() and cfg.threshold_tta == 0
    expect = saved.read_text().replace("ema_decay: 0.0\n", "")
    assert cfg.to_yaml() == expect.replace("threshold_views: 0\n", "threshold_tta: 0\n")
    f = tmp_path / "c.yaml"
    f.write_text("data: d\nout: o\noptimizer: adam\n")  # a value from a file names the file
    with pytest.raises(UserError, match=f"'optimizer' in {f} must be one of adamw, rmsprop"):
        resolve_config(f, {})


def test_a_config_with_retired_settings_loads_and_says_what_it_ignores(tmp_path):
    """fit_to_time, ema_decay and augment.zoom_out were tried and not adopted: a config that
    has them still loads, without them, and names those that were on; as flags or fields
    given in code they are unknown settings."""
    base = yaml.safe_load((REPO / "tests" / "fixtures" / "run_v1" / "config.yaml").read_text())
    f = tmp_path / "config.yaml"
    augment = {**base["augment"], "zoom_out": 0.5}
    f.write_text(yaml.safe_dump({**base, "fit_to_time": True, "ema_decay": 0.995,
                                 "augment": augment}, sort_keys=False))  # fmt: skip
    cfg = resolve_config(f, {})
    assert cfg.to_dict() == resolve_config(REPO / "tests" / "fixtures" / "run_v1", {}).to_dict()
    note = cfg.retired_note()
    assert note.startswith("ignored: fit_to_time: True, ema_decay: 0.995, augment.zoom_out: 0.5")
    assert "\n" not in note
    for key in ("fit_to_time", "ema_decay"):
        with pytest.raises(UserError, match=f"unknown setting '{key}'"):
            TrainConfig(data="d", out="o", **{key: 1})
    with pytest.raises(UserError, match="unknown augment setting.*zoom_out"):
        resolve_config(None, {"data": "d", "out": "o", "augment": {"zoom_out": 0.5}})


def test_cli_config_then_run_config_yaml_repeats_the_run_bit_for_bit(data_dir, tmp_path):
    """A CPU run with a seed repeats exactly, and RUN/config.yaml reproduces it."""
    from pneumoscope.cli import app

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "model": "seed_cnn",
                "epochs": 5,  # flag overrides below
                "batch_size": 16,
                "optimizer": "rmsprop",
                "lr": 1e-3,
                "weight_decay": 0.0,
                "scheduler": "plateau",
                "seed": 5,
                "augment": {"rotation": 20, "aspect": 0.1, "crop": 0.1, "gamma": 0.2},
            }
        )
    )
    runner = CliRunner()
    common = ["--data", str(data_dir), "--threads", "1", "--accelerator", "cpu", "--no-progress"]
    r = runner.invoke(
        app,
        ["train", "--config", str(recipe), "--out", str(tmp_path / "a"), "--epochs", "2"]
        + ["--augment", "hflip=0.5", "--augment", "fill=border", *common],
    )
    assert r.exit_code == 0, (r.output, r.exception)
    saved = yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())
    assert saved["epochs"] == 2 and saved["optimizer"] == "rmsprop"
    assert saved["augment"]["hflip"] == 0.5 and saved["augment"]["fill"] == "border"
    assert saved["augment"]["gamma"] == 0.2
    r = runner.invoke(
        app,
        ["train", "--config", str(tmp_path / "a"), "--out", str(tmp_path / "b"), "--no-progress"],
    )
    assert r.exit_code == 0, (r.output, r.exception)
    again = yaml.safe_load((tmp_path / "b" / "config.yaml").read_text())
    assert {**again, "out": ""} == {**saved, "out": ""}
    a = load_file(str(tmp_path / "a" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ha = pd.read_csv(tmp_path / "a" / "history.csv").drop(columns="elapsed_s")
    hb = pd.read_csv(tmp_path / "b" / "history.csv").drop(columns="elapsed_s")
    pd.testing.assert_frame_equal(ha, hb)
    card = json.loads((tmp_path / "a" / "model.json").read_text())
    assert card["training"]["optimizer"] == "rmsprop" and card["training"]["scheduler"] == "plateau"


def test_a_cache_of_another_size_or_clahe_is_refused_with_the_prepare_command(data_dir, tmp_path):
    for over, expect in (
        ({"img_size": 150}, "--img-size 150"),
        ({"clahe": False}, "--img-size 32 --no-clahe"),
    ):
        with pytest.raises(UserError, match="pneumoscope data prepare") as e:
            train(tiny(data_dir, tmp_path / "r", **over), progress=False)
        assert expect in str(e.value) and "\n" not in str(e.value)
    # a cache made by `data prepare` records its settings: the advice repeats them
    saved = tmp_path / "cache"
    saved.mkdir()
    for f in data_dir.iterdir():
        (saved / f.name).symlink_to(f)
    (saved / "prepare_config.yaml").write_text("sources: [x]\n")
    with pytest.raises(UserError) as e:
        train(tiny(saved, tmp_path / "r", img_size=150), progress=False)
    assert f"data prepare --config {saved / 'prepare_config.yaml'} " in str(e.value)
    with pytest.raises(UserError, match="needs a CUDA GPU; on CPU use --precision bf16"):
        train(tiny(data_dir, tmp_path / "r", precision="16-mixed"), progress=False)


# --------------------------------------------------------------------------- seed2-style input


class _Snapshots(Callback):
    """Weights at the start and at the end of every training epoch."""

    def __init__(self):
        self.start: dict = {}
        self.ends: list[dict] = []

    @staticmethod
    def _copy(module) -> dict:
        return {k: p.detach().clone() for k, p in module.net.named_parameters()}

    def on_train_start(self, trainer, pl_module):
        self.start = self._copy(pl_module)

    def on_train_epoch_end(self, trainer, pl_module):
        self.ends.append(self._copy(pl_module))


@pytest.fixture(scope="module")
def seed2_run(data_dir, tmp_path_factory):
    """A tiny run with the PyTorch design's input: 3 channels, ImageNet mean/std, resize
    1.15x + centre crop at evaluation, backbone frozen for the first epoch, plateau LR."""
    out = tmp_path_factory.mktemp("seed2")
    snaps = _Snapshots()
    cfg = tiny(
        data_dir,
        out,
        model="resnet10t",
        in_chans=3,
        normalization="imagenet",
        eval_crop=1.15,
        freeze_epochs=1,
        scheduler="plateau",
        lr=3e-4,
        weight_decay=1e-4,
        augment={**AugmentConfig().to_dict(), "crop": 0.1, "hflip": 0.5, "rotation": 5},
    )
    card = train(cfg, progress=False, callbacks=[snaps])
    return out, card, snaps


def test_backbone_is_frozen_for_freeze_epochs_then_trained(seed2_run):
    _, card, snaps = seed2_run
    assert card.training.freeze_epochs == 1
    head = {"fc.weight", "fc.bias"}
    first, second = snaps.ends
    for k, p in snaps.start.items():
        if k in head:
            assert not torch.equal(first[k], p), k  # the classifier learns from epoch 0
        else:
            assert torch.equal(first[k], p), k  # the backbone does not move in epoch 0
    assert any(not torch.equal(second[k], first[k]) for k in snaps.start if k not in head)


def test_seed2_input_is_in_the_card_and_predict_applies_the_crop(
    seed2_run, synthetic_source, tmp_path
):
    """predict (files -> CSV) equals a manual torchvision computation: resize 1.15x,
    centre crop, 3 channels, ImageNet mean/std, the run's temperature."""
    from torchvision.transforms.v2 import functional as TF

    run, card, _ = seed2_run
    assert card.input.in_chans == 3 and card.input.eval_crop == 1.15
    assert card.input.normalization.kind == "imagenet"
    assert list(card.input.normalization.mean) == pytest.approx([0.485, 0.456, 0.406])
    assert "centre crop" in card.input_note
    files = sorted(str(p) for p in (synthetic_source / "test").rglob("*.jpeg"))[:12]
    # synthetic films are nobody's: the population check would refuse them (--allow age)
    predict_to_csv(run, files, tmp_path / "p.csv", batch_size=5, workers=1, allow=("age",))
    got = pd.read_csv(tmp_path / "p.csv").set_index("path")["probability"]

    loaded = load_run(run)
    pp = loaded.preprocess
    imgs = np.stack([try_load_image(f, pp)[0] for f in files])
    x = torch.from_numpy(imgs).float().unsqueeze(1) / 255.0
    s = pp.img_size
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def manual(crop: bool) -> np.ndarray:
        v = x
        if crop:
            v = TF.resize(v, [int(s * 1.15)], antialias=False)
            v = TF.center_crop(v, [s])
        v = (v.expand(-1, 3, -1, -1) - mean) / std
        with torch.no_grad():
            z = loaded.model(v).squeeze(1).double().numpy()
        return sigmoid(z / loaded.temperature)

    want = manual(crop=True)
    np.testing.assert_allclose(got.loc[files].to_numpy(), want, atol=2e-6)
    assert np.abs(manual(crop=False) - want).max() > 1e-4  # the crop changes the numbers


def test_seed2_crop_survives_onnx_export(seed2_run, data_dir, tmp_path):
    from pneumoscope.inference.export import export_onnx

    run = tmp_path / "run"
    shutil.copytree(seed2_run[0], run)
    cache = open_cache(data_dir)
    rows = cache.split("val")["index"].to_numpy()[:16]
    info = export_onnx(run, check_images=np.asarray(cache.images[rows]))
    assert info["max_abs_diff_logit"] <= 1e-4


def test_runs_without_the_new_card_fields_load_unchanged(data_dir, tmp_path):
    run_dir = tmp_path / "new"
    train(tiny(data_dir, run_dir, epochs=1), progress=False)
    run = tmp_path / "old"
    shutil.copytree(run_dir, run)
    card = json.loads((run / "model.json").read_text())
    for key in ("eval_crop", "input_note"):
        card.pop(key, None)
    card["normalization"].pop("kind", None)
    (run / "model.json").write_text(json.dumps(card))
    old, new = load_run(run), load_run(run_dir)
    assert old.eval_crop == 1.0
    x = open_cache(data_dir).images[:8]
    np.testing.assert_array_equal(old.predict_logits(x), new.predict_logits(x))


# --------------------------------------------------------------------------- augmentation


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


OFF = dict(rotation=0, zoom=0, shift=0, hflip=0, vflip=0, brightness=0, contrast=0)


def test_augment_off_is_identity_and_old_configs_load():
    x = torch.rand(4, 1, 24, 24)
    y = augment_batch(x.clone(), AugmentConfig(**OFF), _gen())
    torch.testing.assert_close(y, x, atol=1e-5, rtol=0)
    old = {"rotation": 5, "zoom": 0.1, "shift": 0.0, "hflip": 0.5, "vflip": 0.0}
    cfg = AugmentConfig.from_dict({**old, "from_the_future": 1})
    assert (cfg.rotation, cfg.hflip, cfg.gamma, cfg.aspect, cfg.crop) == (5, 0.5, 0, 0, 0)


def test_augment_new_settings_do_not_change_the_stream_when_off():
    x = torch.rand(6, 1, 20, 20)
    a = augment_batch(x.clone(), AugmentConfig(), _gen(3))
    b = augment_batch(x.clone(), AugmentConfig(gamma=0.0, aspect=0.0, crop=0.0), _gen(3))
    assert torch.equal(a, b)


def test_gamma_jitter_is_per_image_and_log_uniform_in_range():
    x = torch.linspace(0.05, 0.95, 16 * 16).view(1, 1, 16, 16).repeat(64, 1, 1, 1)
    y = augment_batch(x.clone(), AugmentConfig(**OFF, gamma=0.2), _gen())
    g = (torch.log(y) / torch.log(x)).flatten(1)
    assert (g.std(dim=1) < 1e-3).all()  # one gamma per image
    g = g.mean(dim=1)
    assert g.min() >= 0.8 - 1e-4 and g.max() <= 1.25 + 1e-4
    assert g.min() < 0.9 and g.max() > 1.1 and len(torch.unique(g.round(decimals=4))) > 30


def _box(img: torch.Tensor) -> tuple[int, int]:
    """Width and height of the bright region."""
    on = img[0] > 0.5
    return int(on.any(dim=0).sum()), int(on.any(dim=1).sum())


def test_aspect_scales_x_and_y_independently():
    x = torch.zeros(32, 1, 64, 64)
    x[:, :, 24:40, 24:40] = 1.0  # a centred 16 x 16 square
    y = augment_batch(x.clone(), AugmentConfig(**OFF, aspect=0.3), _gen())
    ratios = [w / h for w, h in map(_box, y)]
    assert min(ratios) < 0.85 and max(ratios) > 1.15  # rectangles both ways
    y = augment_batch(x.clone(), AugmentConfig(**{**OFF, "zoom": 0.3}), _gen())
    assert all(abs(w - h) <= 1 for w, h in map(_box, y))  # zoom alone keeps squares


def test_random_resized_crop_zooms_in_within_the_image():
    ramp = torch.linspace(0, 1, 64).view(1, 1, 1, 64).repeat(16, 1, 64, 1)
    y = augment_batch(ramp.clone(), AugmentConfig(**OFF, crop=0.1, fill="zeros"), _gen())
    slope = (y[:, 0, 32, 40] - y[:, 0, 32, 20]) / (ramp[0, 0, 32, 40] - ramp[0, 0, 32, 20])
    # kept width fraction = sqrt(area * ratio): area in [0.9, 1], ratio in [3/4, 4/3]
    assert slope.min() >= math.sqrt(0.9 * 0.75) - 1e-3 and slope.max() <= 1.0 + 1e-4
    assert slope.min() < 0.97
    ones = torch.ones(16, 1, 32, 32)
    y = augment_batch(ones, AugmentConfig(**OFF, crop=0.1, fill="border"), _gen())
    assert torch.allclose(y, torch.ones_like(y))  # the box never leaves the image


def test_flip_with_rotation_is_a_rigid_motion():
    """A flipped and rotated disc keeps its area (a flip must not turn rotation into shear)."""
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    disc = (((xx - 31.5) ** 2 + (yy - 31.5) ** 2) < 12**2).float().view(1, 1, 64, 64)
    x = disc.repeat(16, 1, 1, 1)
    cfg = AugmentConfig(**{**OFF, "rotation": 40, "hflip": 1.0, "vflip": 0.5})
    y = augment_batch(x.clone(), cfg, _gen())
    area = y.sum(dim=(1, 2, 3)) / disc.sum()
    assert (area - 1).abs().max() < 0.02
