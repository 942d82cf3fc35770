"""Augmentation on batched tensors, so it runs on the training device in a few kernels.

One random affine per image (random resized crop, rotation, zoom, independent x/y scale,
shift, flips), composed into a single matrix and applied to the whole batch with one
``affine_grid`` + ``grid_sample``; then gamma, contrast and brightness jitter, each one
batched op. Inputs and outputs are float tensors (B, C, H, W) in [0, 1].

A setting of 0 switches its transform off and draws no random numbers for it, so adding
a transform never changes the random stream of configs that leave it off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pneumoscope.data.augment_config import FILLS, AugmentConfig

__all__ = ["FILLS", "AugmentConfig", "Transforms", "augment_batch", "draw_transforms"]


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator | None, device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=device) * (hi - lo) + lo


def _crop_boxes(b: int, crop: float, gen, dev) -> tuple[torch.Tensor, ...]:
    """Per image: the kept box's half-sizes (w, h) and centre (cx, cy), in grid units."""
    area = _uniform(b, 1.0 - crop, 1.0, gen, dev)
    log_r = _uniform(b, math.log(3 / 4), math.log(4 / 3), gen, dev)
    r = torch.exp(log_r)
    w = torch.sqrt(area * r).clamp(max=1.0)  # fraction of the width kept
    h = torch.sqrt(area / r).clamp(max=1.0)
    cx = (torch.rand(b, generator=gen, device=dev) * 2.0 - 1.0) * (1.0 - w)
    cy = (torch.rand(b, generator=gen, device=dev) * 2.0 - 1.0) * (1.0 - h)
    return w, h, cx, cy


@dataclass(frozen=True)
class Transforms:
    """One random transform per image: the affine ``theta`` (B, 2, 3) in grid coordinates,
    then gamma, contrast and brightness factors (B,), None where the config has them off."""

    theta: torch.Tensor
    gamma: torch.Tensor | None
    contrast: torch.Tensor | None
    brightness: torch.Tensor | None


def draw_transforms(
    b: int, cfg: AugmentConfig, generator: torch.Generator | None = None, device=None
) -> Transforms:
    """Draw ``b`` transforms (float32), in the order the random stream has always had.

    The affine maps output grid coordinates p (in [-1, 1]) to input coordinates
    C (R D p + t) + c: D scales and flips, R rotates, t shifts, and the crop box (C, c)
    chooses which part of the input the whole picture is drawn from.
    """
    gen, dev = generator, device
    angle = _uniform(b, -cfg.rotation, cfg.rotation, gen, dev) * (math.pi / 180.0)
    scale = _uniform(b, 1.0 - cfg.zoom, 1.0 + cfg.zoom, gen, dev)
    tx = _uniform(b, -cfg.shift, cfg.shift, gen, dev) * 2.0  # grid coords span [-1, 1]
    ty = _uniform(b, -cfg.shift, cfg.shift, gen, dev) * 2.0
    fx = torch.where(torch.rand(b, generator=gen, device=dev) < cfg.hflip, -1.0, 1.0)
    fy = torch.where(torch.rand(b, generator=gen, device=dev) < cfg.vflip, -1.0, 1.0)
    zx, zy = scale, scale
    if cfg.aspect > 0:
        zx = scale * _uniform(b, 1.0 - cfg.aspect, 1.0 + cfg.aspect, gen, dev)
        zy = scale * _uniform(b, 1.0 - cfg.aspect, 1.0 + cfg.aspect, gen, dev)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # R @ D with D = diag(fx / zx, fy / zy): a proper rotation of a flipped, scaled image
    dx, dy = fx / zx, fy / zy
    a = torch.stack(
        [torch.stack([cos * dx, -sin * dy], dim=1), torch.stack([sin * dx, cos * dy], dim=1)],
        dim=1,
    )
    t = torch.stack([tx, ty], dim=1)
    if cfg.crop > 0:
        w, h, cx, cy = _crop_boxes(b, cfg.crop, gen, dev)
        box = torch.stack([w, h], dim=1)
        a = a * box[:, :, None]  # C @ A with C = diag(w, h)
        t = t * box + torch.stack([cx, cy], dim=1)
    theta = torch.cat([a, t[:, :, None]], dim=2).float()
    gamma = contrast = brightness = None
    if cfg.gamma > 0:
        lg = -math.log(1.0 - cfg.gamma)
        gamma = torch.exp(_uniform(b, -lg, lg, gen, dev))
    if cfg.contrast > 0:
        contrast = _uniform(b, 1.0 - cfg.contrast, 1.0 + cfg.contrast, gen, dev)
    if cfg.brightness > 0:
        brightness = _uniform(b, -cfg.brightness, cfg.brightness, gen, dev)
    return Transforms(theta, gamma, contrast, brightness)


def apply_transforms(x: torch.Tensor, tr: Transforms, fill: str) -> torch.Tensor:
    """``x`` (B, C, H, W) in [0, 1] through its transforms: one ``affine_grid`` +
    ``grid_sample``, then gamma, contrast and brightness, each one batched op."""
    b, dt = x.shape[0], x.dtype
    grid = F.affine_grid(tr.theta.to(dt), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode=fill, align_corners=False)
    if tr.gamma is not None:
        out = out.clamp_(min=0.0).pow(tr.gamma.view(b, 1, 1, 1).to(dt))
    if tr.contrast is not None:
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        out = (out - mean) * tr.contrast.view(b, 1, 1, 1).to(dt) + mean
    if tr.brightness is not None:
        out = out + tr.brightness.view(b, 1, 1, 1).to(dt)
    return out.clamp_(0.0, 1.0)


def augment_batch(
    x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Randomly transform each image of ``x`` independently (:func:`draw_transforms`)."""
    return apply_transforms(x, draw_transforms(x.shape[0], cfg, generator, x.device), cfg.fill)
