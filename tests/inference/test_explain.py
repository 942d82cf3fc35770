"""Grad-CAM: target layers per architecture, heatmap sanity, localisation, files and a real run."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from pneumoscope.core.errors import UserError
from pneumoscope.data.preprocess import load_image
from pneumoscope.inference.cam import uncrop_heat
from pneumoscope.inference.explain import (
    CSV_COLUMNS,
    caption,
    explain_files,
    heatmap_name,
    overlay,
    save_explanation,
)
from pneumoscope.inference.gradcam import cam_spec, gradcam, target_layer
from pneumoscope.model.architectures import build_model
from pneumoscope.model.calibration import TemperatureScaler
from pneumoscope.model.contract import ModelCard, RunFiles
from pneumoscope.model.network import normalize, spec_tensors
from pneumoscope.model.run import LoadedRun, sigmoid

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _loaded(
    model: nn.Module, size: int, arch: str = "custom", clahe: bool = False, eval_crop: float = 1.0
) -> LoadedRun:
    card = {
        "architecture": arch,
        "in_chans": 1,
        "preprocess": {"img_size": size, "clahe": clahe},
        "normalization": {"mean": [0.5], "std": [0.25]},
        "eval_crop": eval_crop,
        "class_names": ["NORMAL", "PNEUMONIA"],
        "threshold": 0.5,
    }
    return LoadedRun(RunFiles(Path(".")), ModelCard.from_dict(card), model.eval())


def _build(arch: str, size: int) -> LoadedRun:
    torch.manual_seed(0)
    return _loaded(build_model(arch, 1, size), size, arch)


def _hooks_left(model: nn.Module) -> list[str]:
    return [
        name
        for name, m in model.named_modules()
        if m._forward_hooks or m._backward_hooks or m._forward_pre_hooks
    ]


def _encode(img: np.ndarray, ext: str = ".png") -> bytes:
    ok, buf = cv2.imencode(ext, img)
    assert ok
    return buf.tobytes()


def _read_png(path: str | Path) -> np.ndarray:
    img = cv2.imdecode(np.fromfile(str(path), dtype=np.uint8), cv2.IMREAD_COLOR)
    assert img is not None, path
    return img


# --------------------------------------------------------------------------- architectures

ARCHS = [
    # (architecture, image size, expected target layer's qualified name)
    ("seed_cnn", 48, "features.37"),  # last ReLU of the last conv block
    ("resnet18", 64, "layer4"),
    ("efficientnet_b0", 64, "bn2"),  # conv_head -> bn2 (BatchNormAct2d: BN + SiLU)
    ("convnext_atto", 64, "norm_pre"),  # after the last stage (Identity for ConvNeXt)
    ("deit_tiny_patch16_224", 224, "blocks.11.norm1"),  # token model, reshape_transform
]


@pytest.mark.parametrize("arch,size,expected", ARCHS, ids=[a[0] for a in ARCHS])
def test_target_layer_and_heatmaps(arch, size, expected):
    loaded = _build(arch, size)
    layer = target_layer(loaded.model, size, 1)
    names = {m: n for n, m in loaded.model.named_modules()}
    assert names[layer] == expected
    imgs = np.random.default_rng(0).integers(0, 256, (3, size, size), dtype=np.uint8)
    heat = gradcam(loaded, imgs, batch_size=2)  # two batches: 2 + 1
    assert heat.shape == (3, size, size) and heat.dtype == np.float32
    assert np.isfinite(heat).all()
    assert heat.min() >= 0.0 and heat.max() <= 1.0
    for h in heat:  # min-max scaled, or all zero where nothing speaks for the positive class
        assert h.max() == 0.0 or (h.min() < 0.01 and h.max() > 0.99)
    if heat.max() == 0.0:  # random init may see no positive evidence: flip the head's sign
        fc = [m for m in loaded.model.modules() if isinstance(m, nn.Linear)][-1]
        with torch.no_grad():
            fc.weight.neg_()
        heat = gradcam(loaded, imgs)
    assert max(h.std() for h in heat) > 0.01  # a real map, not a constant
    assert not _hooks_left(loaded.model)


def test_channels_last_swin():
    loaded = _build("swin_tiny_patch4_window7_224", 224)
    spec = cam_spec(loaded.model, 224, 1)
    assert spec.layer is loaded.model.norm  # (B, 7, 7, C) tokens after the last stage
    assert spec.reshape_transform(torch.zeros(2, 7, 7, 5)).shape == (2, 5, 7, 7)
    img = np.random.default_rng(0).integers(0, 256, (1, 224, 224), dtype=np.uint8)
    heat = gradcam(loaded, img)
    assert heat.shape == (1, 224, 224) and np.isfinite(heat).all()
    assert heat.min() >= 0.0 and heat.max() <= 1.0
    assert not _hooks_left(loaded.model)


def test_seed_cnn_target_is_last_block_activation():
    model = build_model("seed_cnn", 1, 32)
    layer = target_layer(model)
    assert isinstance(layer, nn.ReLU)
    assert layer is [m for m in model.features if isinstance(m, nn.ReLU)][-1]


def test_unsupported_architectures_raise_user_error():
    class Flat(nn.Module):  # features without any spatial layout
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(16 * 16, 8)
            self.head = nn.Linear(8, 1)

        def forward_features(self, x):
            return self.fc(x.flatten(1))

        def forward(self, x):
            return self.head(self.forward_features(x))

    class Tokens(nn.Module):  # a token model without ViT-style blocks
        def __init__(self):
            super().__init__()
            self.embed = nn.Conv2d(1, 8, 4, stride=4)
            self.head = nn.Linear(8, 1)

        def forward_features(self, x):
            return self.embed(x).flatten(2).transpose(1, 2)

        def forward(self, x):
            return self.head(self.forward_features(x).mean(1))

    for model in (Flat(), Tokens()):
        with pytest.raises(UserError, match="Grad-CAM is not supported for"):
            target_layer(model, 16, 1)
    with pytest.raises(UserError, match="cannot run"):  # ViT needs its own input size
        target_layer(build_model("deit_tiny_patch16_224", 1, 64), 64, 1)


# --------------------------------------------------------------------------- side effects


def test_no_hooks_left_and_model_state_unchanged():
    loaded = _build("resnet18", 48)
    model = loaded.model
    before = {k: v.clone() for k, v in model.state_dict().items()}  # weights and BN stats
    imgs = np.random.default_rng(1).integers(0, 256, (2, 48, 48), dtype=np.uint8)
    layer = target_layer(model, 48, 1)

    model.train()  # modes must come back as they were, whatever they were
    first = gradcam(loaded, imgs)
    assert all(m.training for m in model.modules())
    model.eval()
    with torch.inference_mode():  # a caller under inference mode must still get gradients
        second = gradcam(loaded, imgs)
    assert not any(m.training for m in model.modules())

    np.testing.assert_allclose(first, second, atol=1e-5)  # both ran in eval mode
    assert not layer._forward_hooks and not layer._backward_hooks
    assert not _hooks_left(model)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    for p in model.parameters():
        assert p.grad is None and p.requires_grad


def test_existing_gradients_and_frozen_flags_are_restored():
    loaded = _build("seed_cnn", 32)
    params = list(loaded.model.parameters())
    params[0].requires_grad_(False)
    params[1].grad = torch.ones_like(params[1])
    gradcam(loaded, np.full((1, 32, 32), 128, np.uint8))
    assert not params[0].requires_grad and params[1].requires_grad
    assert torch.equal(params[1].grad, torch.ones_like(params[1]))


# --------------------------------------------------------------------------- localisation


class _BlobNet(nn.Module):
    """Hand-set weights: channel 0 = relu(x) (bright), channel 1 = relu(-x) (dark); the logit
    is mean(bright) - mean(dark). Grad-CAM of that logit is exactly the bright region."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 2, 1), nn.ReLU(), nn.MaxPool2d(2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 1)
        with torch.no_grad():
            self.features[0].weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
            self.features[0].bias.zero_()
            self.fc.weight.copy_(torch.tensor([[1.0, -1.0]]))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


def test_heatmap_lies_on_the_evidence_handcrafted():
    """Known answer: catches a wrong sign (explaining NORMAL), transposed or flipped maps
    and a wrong normalisation."""
    loaded = _loaded(_BlobNet(), 64)
    assert target_layer(loaded.model, 64, 1) is loaded.model.features
    img = np.full((64, 64), 60, np.uint8)
    img[4:20, 36:60] = 250  # an off-centre, non-square bright patch (top right)
    heat = gradcam(loaded, img[None])[0]
    blob = np.zeros((64, 64), bool)
    blob[4:20, 36:60] = True
    far = ~cv2.dilate(blob.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    assert heat[blob].mean() > 0.9
    assert heat[far].max() < 0.05
    assert heat[36:60, 4:20].max() < 0.05  # the transposed location stays cold


def _blob_batch(rng: np.random.Generator, n: int, size: int):
    """Noise; half the images get a bright Gaussian blob ("pneumonia") at a random place."""
    imgs = rng.normal(90, 20, (n, size, size))
    labels = rng.integers(0, 2, n)
    yy, xx = np.mgrid[:size, :size]
    centres = []
    for i in range(n):
        cy, cx = rng.integers(size // 6, size - size // 6, 2)
        centres.append((cy, cx))
        if labels[i]:
            imgs[i] += 120 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (size / 12) ** 2))
    return np.clip(imgs, 0, 255).astype(np.uint8), labels, centres


def test_heatmap_finds_the_blob_after_training():
    """resnet10t trained for 40 small steps on "blob = pneumonia": its heat is higher on the
    blob than far from it."""
    size = 48
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    loaded = _build("resnet10t", size)
    model = loaded.model.train()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(40):
        x, y, _ = _blob_batch(rng, 16, size)
        mean, std = spec_tensors(loaded.spec)
        z = model(normalize(torch.from_numpy(x).unsqueeze(1), mean, std, 1))
        loss = nn.functional.binary_cross_entropy_with_logits(z.squeeze(1), torch.tensor(y * 1.0))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    x, y, centres = _blob_batch(np.random.default_rng(100), 24, size)
    keep = np.flatnonzero(y == 1)
    heat = gradcam(loaded, x[keep])
    z = loaded.predict_logits(x)
    assert z[y == 1].min() > z[y == 0].mean()  # it did learn the task
    yy, xx = np.mgrid[:size, :size]
    inside, outside = [], []
    for h, k in zip(heat, keep, strict=True):
        d = np.hypot(yy - centres[k][0], xx - centres[k][1])
        inside.append(h[d < size / 12].mean())
        outside.append(h[d > size / 4].mean())
    inside, outside = np.array(inside), np.array(outside)
    assert inside.mean() > outside.mean() + 0.2, (inside, outside)
    assert (inside > outside).mean() >= 0.75, (inside, outside)


# --------------------------------------------------------------------------- pictures


def test_overlay_and_caption():
    gray = np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))
    heat = np.zeros((32, 32), np.float32)  # other size: resized to the image
    out = overlay(gray, heat)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(overlay(gray, heat, alpha=0.0)[..., 0], gray)
    cold = overlay(gray, heat, alpha=1.0)[0, 0]
    assert cold[2] > cold[0]  # JET's zero is blue, and the result is RGB
    with pytest.raises(ValueError):
        overlay(gray, heat, alpha=1.5)
    assert caption("PNEUMONIA", 0.934, 0.25) == "PNEUMONIA p=0.93 (threshold 0.25)"
    assert caption("NORMAL", 0.1851, 0.188) == "NORMAL p=0.185 (threshold 0.188)"


def test_save_explanation_png(tmp_path):
    gray = np.full((48, 48), 100, np.uint8)
    heat = np.zeros((48, 48), np.float32)
    heat[:24] = 1.0
    path = save_explanation(tmp_path / "ü dir" / "x.png", gray, heat, 0.93, "PNEUMONIA", 0.25)
    img = _read_png(path)
    assert img.shape[1] == 2 * 256 + 4 and img.shape[0] > 256  # panels + caption strip
    assert not list(path.parent.glob(".*.tmp"))  # atomic write left no temporary file


def test_heatmap_name_is_safe_and_unique():
    a = heatmap_name("/data/a/person1 röntgen.jpeg")
    b = heatmap_name("/data/b/person1 röntgen.jpeg")
    assert a != b and a.endswith(".png") and a.startswith("person1_rontgen_")
    assert a == heatmap_name("/data/a/person1 röntgen.jpeg")
    assert heatmap_name("/data/肺炎.png").startswith("image_")
    assert all(c.isascii() and (c.isalnum() or c in "._-") for c in a)


# --------------------------------------------------------------------------- files


def test_explain_files_good_bad_unicode_and_duplicates(tmp_path):
    size = 48
    torch.manual_seed(0)
    loaded = _loaded(build_model("seed_cnn", 1, size), size, "seed_cnn", clahe=True)
    rng = np.random.default_rng(0)
    src = tmp_path / "in"
    files = {
        "a/same.png": _encode(rng.integers(0, 256, (60, 50), dtype=np.uint8)),
        "b/same.png": _encode(rng.integers(0, 256, (60, 50), dtype=np.uint8)),
        "dir with space/Röntgen bild ü.jpg": _encode(
            rng.integers(0, 256, (70, 70, 3), dtype=np.uint8), ".jpg"
        ),
        "corrupt.jpg": b"\xff\xd8 not really a jpeg",
        "empty.png": b"",
    }
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    paths = [str(src / rel) for rel in files] + [str(src / "missing.png")]
    out = tmp_path / "explanations ü"
    rows = explain_files(loaded, paths, out, batch_size=2)

    assert [r["path"] for r in rows] == paths
    assert [r["status"] for r in rows] == ["ok"] * 3 + ["error"] * 3
    for r in rows[3:]:
        assert r["error"] and r["heatmap"] == "" and r["probability"] is None
    assert "empty" in rows[4]["error"]
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 3
    assert rows[0]["heatmap"] != rows[1]["heatmap"]  # same name, two folders: two PNGs
    assert {Path(r["heatmap"]) for r in rows[:3]} == set(pngs)
    probs = sigmoid(
        loaded.predict_logits(np.stack([load_image(p, loaded.preprocess) for p in paths[:3]]))
    )
    for r, p in zip(rows[:3], probs, strict=True):
        assert r["probability"] == pytest.approx(float(p), abs=1e-6)
        assert r["label"] == ("PNEUMONIA" if p >= 0.5 else "NORMAL")
        _read_png(r["heatmap"])

    with open(out / "explanations.csv", newline="", encoding="utf-8") as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0]) == CSV_COLUMNS
    assert len(table) == len(paths)
    assert [t["path"] for t in table] == paths
    assert [t["status"] for t in table] == [r["status"] for r in rows]
    assert not _hooks_left(loaded.model)


def test_explain_files_uses_temperature(tmp_path):
    loaded = _loaded(build_model("seed_cnn", 1, 32), 32, "seed_cnn")
    img = tmp_path / "x.png"
    img.write_bytes(_encode(np.random.default_rng(0).integers(0, 256, (40, 40), dtype=np.uint8)))
    loaded.calibration = TemperatureScaler()
    loaded.calibration.temperature_, loaded.calibration.threshold_ = 3.0, 0.4
    row = explain_files(loaded, [str(img)], tmp_path / "out")[0]
    z = loaded.predict_logits(load_image(img, loaded.preprocess)[None])[0]
    assert row["probability"] == pytest.approx(float(sigmoid(z / 3.0)), abs=1e-6)
    assert row["threshold"] == 0.4


# --------------------------------------------------------------------------- real run


def test_heatmap_with_an_evaluation_crop_lands_on_the_full_image():
    """A run with eval_crop (the PyTorch design's resize 1.15x + centre crop) is explained
    through the same crop and the heat is mapped back: it still covers the patch, and the
    border the crop cut away gets none."""
    loaded = _loaded(_BlobNet(), 64, eval_crop=1.25)
    img = np.full((64, 64), 60, np.uint8)
    img[14:30, 36:52] = 250  # inside the kept centre
    heat = gradcam(loaded, img[None])[0]
    blob = np.zeros((64, 64), bool)
    blob[14:30, 36:52] = True
    far = ~cv2.dilate(blob.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    assert heat[blob].mean() > 0.8
    assert heat[far].max() < 0.05
    assert heat[:, :5].max() == 0.0 and heat[:5, :].max() == 0.0  # cut off by the crop


def test_uncrop_heat_inverts_the_centre_crop():
    s, f = 40, 1.2
    heat = np.ones((1, s, s), np.float32)
    full = uncrop_heat(heat, f)[0]
    big = int(s * f)
    margin = (big - s) / 2 / f  # in full-image pixels
    assert full[s // 2, s // 2] == 1.0
    assert full[0, 0] == 0.0 and full[-1, -1] == 0.0
    inside = full[s // 2] > 0.5
    assert abs(inside.sum() - (s - 2 * margin)) <= 2
    assert uncrop_heat(heat, 1.0) is heat
