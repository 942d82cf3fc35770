"""Grad-CAM heatmaps in PyTorch: where in the X-ray the PNEUMONIA logit finds its evidence.

Built on the ``grad-cam`` package (``pytorch_grad_cam.GradCAM``); the training install
only. The heatmap always explains the positive-class (PNEUMONIA) logit, whatever the
predicted label, so a NORMAL prediction shows where the little pneumonia evidence there is
lies. An exported run with a global-pooling + linear head gets the same heatmap without
torch (:mod:`pneumoscope.inference.cam`).

Supported models: ``seed_cnn``, timm CNNs (NCHW feature maps: ResNet, EfficientNet,
DenseNet, ConvNeXt, MobileNet, RegNet, ...), timm ViT-style token models (ViT, DeiT: the
last block's ``norm1`` with the patch tokens reshaped to a grid) and channels-last models
(Swin). Anything else raises ``UserError``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from pneumoscope.core.errors import UserError
from pneumoscope.inference.cam import uncrop_heat
from pneumoscope.model.ensemble import Ensemble
from pneumoscope.model.run import LoadedRun

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
