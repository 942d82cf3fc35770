"""Grad-CAM heatmaps: where in the X-ray the PNEUMONIA logit finds its evidence.

Built on the ``grad-cam`` package (``pytorch_grad_cam.GradCAM``). The heatmap always
explains the positive-class (PNEUMONIA) logit, whatever the predicted label, so a NORMAL
prediction shows where the little pneumonia evidence there is lies.

Supported models: ``seed_cnn``, timm CNNs (NCHW feature maps: ResNet, EfficientNet,
DenseNet, ConvNeXt, MobileNet, RegNet, ...), timm ViT-style token models (ViT, DeiT: the
last block's ``norm1`` with the patch tokens reshaped to a grid) and channels-last models
(Swin). Anything else raises ``UserError``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from pneumoscope.core.errors import UserError
from pneumoscope.core.io import atomic_write, write_text_atomic
from pneumoscope.inference.intended_use import IntendedUse, Screened, load_screened
from pneumoscope.model.ensemble import Ensemble
from pneumoscope.model.population_check import check_folder
from pneumoscope.model.run import LoadedRun, load_run

CSV_COLUMNS = [
    "path",
    "probability",
    "label",
    "threshold",
    "status",
    "error",
    "heatmap",
    "note",
    "estimated_age_group",
    "adult_probability",
]
CSV_NAME = "explanations.csv"
MIN_PANEL = 256  # PNG panels are upscaled to at least this many pixels so the caption fits


# --------------------------------------------------------------------------- target layer


@dataclass(frozen=True)
class CamSpec:
    """The layer Grad-CAM hooks and how to turn its output into a (B, C, H, W) map."""

    layer: nn.Module
    reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None
    # an ensemble's other members' layers: the heatmap is the mean of the members' maps
    more_layers: tuple[nn.Module, ...] = ()

    @property
    def layers(self) -> list[nn.Module]:
        return [self.layer, *self.more_layers]


class _TokensToMap:
    """(B, prefix + H*W, C) transformer tokens -> (B, C, H, W), dropping class/register tokens."""

    def __init__(self, prefix: int, grid: tuple[int, int]):
        self.prefix, self.grid = prefix, grid

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        t = t[:, self.prefix :, :]
        return t.reshape(t.shape[0], self.grid[0], self.grid[1], t.shape[2]).permute(0, 3, 1, 2)


def _channels_last_to_first(t: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) -> (B, C, H, W), for channels-last models such as Swin."""
    return t.permute(0, 3, 1, 2)


def _arch_name(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return str(cfg.get("architecture") or type(model).__name__)


def _first_conv(model: nn.Module) -> nn.Conv2d | None:
    return next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)


def _default_geometry(
    model: nn.Module, img_size: int | None, in_chans: int | None
) -> tuple[int, int]:
    if in_chans is None:
        conv = _first_conv(model)
        in_chans = conv.in_channels if conv is not None else 1
    if img_size is None:
        cfg = getattr(model, "pretrained_cfg", None) or {}
        size = cfg.get("input_size") or (in_chans, 224, 224)
        img_size = int(size[-1])
    return int(img_size), int(in_chans)


def _trace(model: nn.Module, img_size: int, in_chans: int):
    """One dummy forward in eval mode, recording every submodule's output shape in the order
    the modules finish. Returns (records, call counts, final feature output)."""
    records: list[tuple[nn.Module, tuple[int, ...]]] = []
    calls: Counter = Counter()

    def hook(module, _inp, out):
        calls[module] += 1
        if isinstance(out, torch.Tensor):
            records.append((module, tuple(out.shape)))

    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    x = torch.zeros(1, in_chans, img_size, img_size, device=device, dtype=dtype)
    modes = [(m, m.training) for m in model.modules()]
    handles = [m.register_forward_hook(hook) for m in model.modules() if m is not model]
    model.eval()
    try:
        with torch.no_grad():
            run = getattr(model, "forward_features", None)
            out = run(x) if callable(run) else model(x)
    except Exception as exc:
        raise UserError(
            f"Grad-CAM cannot run {_arch_name(model)} on a {img_size} px, {in_chans}-channel "
            f"input: {type(exc).__name__}: {exc}"
        ) from None
    finally:
        for h in handles:
            h.remove()
        for m, training in modes:
            m.training = training
    return records, calls, out


def _last_spatial(records, calls, channels_last: bool, channels: int | None):
    """The last module (run once) whose output is a 4-D feature map larger than 1x1."""
    fallback = None
    for module, shape in reversed(records):
        if len(shape) != 4 or calls[module] != 1:
            continue
        if channels_last and channels is not None and shape[-1] != channels:
            continue
        h, w = (shape[1], shape[2]) if channels_last else (shape[2], shape[3])
        if h * w > 1:
            return module
        if fallback is None:  # only 1x1 maps: a constant heatmap, but no crash
            fallback = module
    return fallback


def cam_spec(model: nn.Module, img_size: int | None = None, in_chans: int | None = None) -> CamSpec:
    """Choose the Grad-CAM layer (and reshape transform) for any supported architecture."""
    if isinstance(model, Ensemble):
        return _ensemble_spec(model, img_size, in_chans)
    img_size, in_chans = _default_geometry(model, img_size, in_chans)
    records, calls, out = _trace(model, img_size, in_chans)
    arch = _arch_name(model)
    if not callable(getattr(model, "forward_features", None)):  # a plain NCHW nn.Module
        layer = _last_spatial(records, calls, channels_last=False, channels=None)
        if layer is None:
            raise UserError(f"Grad-CAM is not supported for {arch}: no spatial feature map found")
        return CamSpec(layer)
    if not isinstance(out, torch.Tensor):
        raise UserError(f"Grad-CAM is not supported for {arch}: its features are not a tensor")
    if out.ndim == 3:
        return _token_spec(model, arch, records)
    if out.ndim != 4:
        raise UserError(
            f"Grad-CAM is not supported for {arch}: its features have shape {tuple(out.shape)}, "
            "not a spatial map"
        )
    num_features = getattr(model, "num_features", None)
    channels_last = bool(
        num_features is not None and out.shape[-1] == num_features and out.shape[1] != num_features
    )
    layer = _last_spatial(records, calls, channels_last, out.shape[-1] if channels_last else None)
    if layer is None:
        raise UserError(f"Grad-CAM is not supported for {arch}: no spatial feature map found")
    return CamSpec(layer, _channels_last_to_first if channels_last else None)


def _ensemble_spec(model: Ensemble, img_size: int | None, in_chans: int | None) -> CamSpec:
    """Every member's own layer; Grad-CAM scales each member's map to [0, 1] and averages
    them (the gradient of the ensemble's logit reaches each member through its share)."""
    specs = [cam_spec(m, img_size, in_chans) for m in model.members]
    if any(s.reshape_transform is not None for s in specs):
        raise UserError(
            "Grad-CAM is supported for ensembles of CNNs (seed_cnn, resnet18, "
            "efficientnet_b0, ...); a member of this one is a transformer"
        )
    return CamSpec(specs[0].layer, None, tuple(s.layer for s in specs[1:]))


def _token_spec(model: nn.Module, arch: str, records) -> CamSpec:
    """ViT-style models: the last block's norm1 (the class token is only read by the last
    attention, so the patch tokens after it get no gradient), tokens reshaped to the grid."""
    blocks = getattr(model, "blocks", None)
    last = blocks[-1] if isinstance(blocks, (nn.Sequential, nn.ModuleList)) and blocks else None
    layer = getattr(last, "norm1", None)
    shape = (
        next((s for m, s in reversed(records) if m is layer), None) if layer is not None else None
    )
    if layer is None or shape is None or len(shape) != 3:
        raise UserError(
            f"Grad-CAM is not supported for {arch}: a token model without a ViT-style "
            "'blocks[-1].norm1' layer; use a CNN (seed_cnn, resnet18, efficientnet_b0, ...)"
        )
    prefix = int(getattr(model, "num_prefix_tokens", 1 if hasattr(model, "cls_token") else 0))
    n = shape[1] - prefix
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if not grid or int(grid[0]) * int(grid[1]) != n:
        side = math.isqrt(max(n, 0))
        if side * side != n or n == 0:
            raise UserError(
                f"Grad-CAM is not supported for {arch}: {n} patch tokens do not form a square grid"
            )
        grid = (side, side)
    return CamSpec(layer, _TokensToMap(prefix, (int(grid[0]), int(grid[1]))))


def target_layer(
    model: nn.Module, img_size: int | None = None, in_chans: int | None = None
) -> nn.Module:
    """The layer Grad-CAM uses: seed_cnn's last activation; for timm CNNs the last module whose
    output is a spatial map (found by forward hooks on a dummy input of the model's size);
    for ViT/DeiT the last block's norm1; for Swin the last channels-last feature map.

    Raises UserError for architectures it cannot explain.
    """
    return cam_spec(model, img_size, in_chans).layer


# --------------------------------------------------------------------------- Grad-CAM


class PositiveLogit:
    """Grad-CAM target: the model's single logit itself (the PNEUMONIA evidence)."""

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        return model_output.reshape(-1)[0]


def gradcam(
    loaded: LoadedRun, images: np.ndarray, batch_size: int = 16, spec: CamSpec | None = None
) -> np.ndarray:
    """Grad-CAM heatmaps (N, S, S) float32 in [0, 1] for preprocessed uint8 images (N, S, S).

    Explains the PNEUMONIA logit. The model's train/eval modes, weights, ``requires_grad``
    flags and ``.grad`` are restored afterwards and no hook is left on it.
    """
    from pytorch_grad_cam import GradCAM

    images = np.asarray(images)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images (N, S, S), got {images.dtype} {images.shape}")
    n, h, w = images.shape
    if n == 0:
        return np.zeros((0, h, w), np.float32)
    batch_size = max(1, int(batch_size))
    model = loaded.model
    spec = spec or cam_spec(model, h, loaded.in_chans)
    modes = [(m, m.training) for m in model.modules()]
    params = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    out = np.empty((n, h, w), np.float32)
    try:
        # No parameter gradients are needed: the graph comes from an input that requires
        # grad, so backward computes activation gradients only and no weight gets a .grad.
        for p, _, _ in params:
            p.requires_grad_(False)
        with torch.inference_mode(False), torch.enable_grad():
            cam = GradCAM(
                model=model,
                target_layers=spec.layers,
                reshape_transform=spec.reshape_transform,
            )
            # try/finally rather than ``with cam``: the library's __exit__ swallows IndexError
            try:
                for start in range(0, n, batch_size):
                    chunk = np.ascontiguousarray(images[start : start + batch_size])
                    # the run's own input path, evaluation crop included
                    x = loaded.model_input(torch.from_numpy(chunk).unsqueeze(1))
                    x = x.to(cam.device).requires_grad_(True)
                    heat = cam(input_tensor=x, targets=[PositiveLogit()] * len(chunk))
                    out[start : start + len(chunk)] = uncrop_heat(heat, loaded.eval_crop)
            finally:
                cam.activations_and_grads.release()
    finally:
        for p, requires_grad, grad in params:
            p.requires_grad_(requires_grad)
            p.grad = grad
        for m, training in modes:
            m.training = training
    return np.clip(np.nan_to_num(out, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)


def uncrop_heat(heat: np.ndarray, eval_crop: float) -> np.ndarray:
    """Map heat computed on the evaluation crop (resize by ``eval_crop``, centre-crop S)
    back onto the full S x S image; the border the crop cut off gets no heat."""
    if eval_crop == 1.0:
        return heat
    n, s, _ = heat.shape
    big = int(s * eval_crop)
    top = int(round((big - s) / 2.0))
    full = np.zeros((n, big, big), np.float32)
    full[:, top : top + s, top : top + s] = heat
    return np.stack([cv2.resize(f, (s, s), interpolation=cv2.INTER_LINEAR) for f in full])


# --------------------------------------------------------------------------- pictures


def overlay(gray: np.ndarray, heat: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """JET-coloured heat over the gray X-ray: uint8 RGB (S, S, 3); ``alpha`` is the heat's
    weight."""
    gray = np.asarray(gray)
    if gray.ndim != 2:
        raise ValueError(f"expected a 2-D gray image, got shape {gray.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    gray = np.clip(gray, 0, 255).astype(np.uint8)
    heat = np.clip(np.nan_to_num(np.asarray(heat, np.float32)), 0.0, 1.0)
    if heat.shape != gray.shape:
        heat = cv2.resize(heat, (gray.shape[1], gray.shape[0]), interpolation=cv2.INTER_LINEAR)
    colour = cv2.applyColorMap(np.round(heat * 255).astype(np.uint8), cv2.COLORMAP_JET)
    colour = cv2.cvtColor(colour, cv2.COLOR_BGR2RGB)
    base = cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)
    return cv2.addWeighted(colour, float(alpha), base, 1.0 - float(alpha), 0.0)


def caption(label: str, prob: float, threshold: float) -> str:
    digits = 2
    if round(prob, 2) == round(threshold, 2) and prob != threshold:
        digits = 3  # "p=0.19 (threshold 0.19)" would hide which side of the threshold p is
    return f"{label} p={prob:.{digits}f} (threshold {threshold:.{digits}f})"


def render_explanation(
    gray: np.ndarray, heat: np.ndarray, prob: float, label: str, threshold: float
) -> np.ndarray:
    """RGB picture: a caption line above the preprocessed X-ray and its Grad-CAM overlay."""
    gray = np.clip(np.asarray(gray), 0, 255).astype(np.uint8)
    h, w = gray.shape
    scale = max(1.0, MIN_PANEL / max(h, w))
    size = (round(w * scale), round(h * scale))
    big = cv2.resize(gray, size, interpolation=cv2.INTER_LINEAR) if scale > 1 else gray
    heat = np.clip(np.nan_to_num(np.asarray(heat, np.float32)), 0.0, 1.0)
    big_heat = cv2.resize(heat, size, interpolation=cv2.INTER_LINEAR)
    left = cv2.cvtColor(big, cv2.COLOR_GRAY2RGB)
    right = overlay(big, big_heat)
    gap = np.zeros((size[1], 4, 3), np.uint8)
    panels = np.concatenate([left, gap, right], axis=1)
    text = caption(label, prob, threshold)
    font, thick = cv2.FONT_HERSHEY_SIMPLEX, 1
    font_scale = 0.6
    while font_scale > 0.3:
        (tw, th), _ = cv2.getTextSize(text, font, font_scale, thick)
        if tw <= panels.shape[1] - 12:
            break
        font_scale -= 0.05
    (tw, th), base = cv2.getTextSize(text, font, font_scale, thick)
    strip = np.full((th + base + 12, panels.shape[1], 3), 24, np.uint8)
    cv2.putText(strip, text, (6, th + 6), font, font_scale, (255, 255, 255), thick, cv2.LINE_AA)
    return np.concatenate([strip, panels], axis=0)


def _write_png(path: Path, rgb: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"could not encode PNG for {path}")
    data = buf.tobytes()
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def save_explanation(
    path: str | Path,
    gray: np.ndarray,
    heat: np.ndarray,
    prob: float,
    label: str,
    threshold: float,
) -> Path:
    """Write the side-by-side PNG (atomically; unicode paths work) and return its path."""
    path = Path(path)
    _write_png(path, render_explanation(gray, heat, prob, label, threshold))
    return path


# --------------------------------------------------------------------------- files


def heatmap_name(path: str | os.PathLike) -> str:
    """A filesystem-safe PNG name: the input's stem in ASCII plus a hash of its full path, so
    same-named inputs from different folders never overwrite each other."""
    full = os.path.abspath(os.fspath(path))
    digest = hashlib.sha256(os.fsencode(full)).hexdigest()[:10]
    stem = unicodedata.normalize("NFKD", Path(full).stem).encode("ascii", "ignore").decode()
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._-")[:60] or "image"
    return f"{stem}_{digest}.png"


def explain_files(
    run_or_loaded: str | Path | LoadedRun,
    paths: list[str],
    out_dir: str | Path,
    batch_size: int = 16,
    scope: IntendedUse | None = None,
) -> list[dict]:
    """Predict and explain each input: one PNG per readable image in ``out_dir``, an error row
    for each unreadable one, a skipped or out_of_scope row for each DICOM the intended-use
    rules (``scope``; default: the run's, nothing relaxed) refuse, and
    ``out_dir/explanations.csv`` with every row in input order."""
    loaded = run_or_loaded if isinstance(run_or_loaded, LoadedRun) else load_run(run_or_loaded)
    scope = scope or IntendedUse.from_card(loaded.card, check=check_folder(loaded.root))
    out_dir = Path(out_dir).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    batch_size = max(1, int(batch_size))
    spec: CamSpec | None = None
    rows: list[dict] = []
    for start in range(0, len(paths), batch_size):
        chunk = [str(p) for p in paths[start : start + batch_size]]
        read = [load_screened(p, loaded.preprocess, scope) for p in chunk]
        good = [i for i, s in enumerate(read) if s.pixels is not None]
        done: dict[int, dict] = {}
        if good:
            spec = spec or cam_spec(loaded.model, loaded.preprocess.img_size, loaded.in_chans)
            made = _explain_chunk(loaded, [read[i] for i in good], out_dir, batch_size, spec)
            done = dict(zip(good, made, strict=True))
        for i, s in enumerate(read):
            row = done.get(i) or _row(s.path, None, "", loaded.threshold, s.status, s.reason, "")
            rows.append(row | _estimate_cells(s))
    _write_csv(out_dir / CSV_NAME, rows)
    return rows


def _explain_chunk(loaded: LoadedRun, read: list, out_dir: Path, batch_size: int, spec) -> list:
    """Rows (and PNGs) for decoded images: probability, label and Grad-CAM heatmap."""
    imgs = np.stack([s.pixels for s in read])
    probs = loaded.proba_from_logits(loaded.scorer().predict_logits(imgs, batch_size))
    heats = gradcam(loaded, imgs, batch_size, spec)
    thr, names = loaded.threshold, loaded.card.class_names
    rows = []
    for s, prob, heat in zip(read, probs, heats, strict=True):
        label = names[int(prob >= thr)]
        png = out_dir / heatmap_name(s.path)
        save_explanation(png, s.pixels, heat, float(prob), label, thr)
        rows.append(_row(s.path, float(prob), label, thr, "ok", "", str(png)) | {"note": s.reason})
    return rows


def _row(path, prob, label, thr, status, error, heatmap) -> dict:
    values = [path, prob, label, float(thr), status, error, heatmap]
    return dict(zip(CSV_COLUMNS, values, strict=False)) | {"note": ""}


def _estimate_cells(s: Screened) -> dict:
    """The population check's estimate, in the CSV's own columns."""
    est = s.estimate
    return {
        "estimated_age_group": est.group if est else "",
        "adult_probability": est.adult_probability if est else None,
    }


def _write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        prob = "" if r["probability"] is None else f"{r['probability']:.6f}"
        writer.writerow(
            [
                r["path"],
                prob,
                r["label"],
                f"{r['threshold']:.6f}",
                r["status"],
                r["error"],
                r["heatmap"],
                r["note"],
                r["estimated_age_group"],
                "" if r["adult_probability"] is None else f"{r['adult_probability']:.4f}",
            ]
        )
    write_text_atomic(path, buf.getvalue())
