"""Augmentation on batched tensors, so it runs on the training device in a few kernels.

One random affine (rotation, zoom, shift, optional flips) per image, applied to the
whole batch with a single ``affine_grid`` + ``grid_sample``, then brightness/contrast
jitter. Inputs and outputs are float tensors (B, C, H, W) in [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    rotation: float = 10.0  # degrees, uniform in [-r, r]
    zoom: float = 0.1  # scale uniform in [1 - z, 1 + z]
    shift: float = 0.05  # fraction of the image size, uniform in [-s, s]
    hflip: float = 0.0  # probability; off by default: a mirrored chest is not a real anatomy
    vflip: float = 0.0
    brightness: float = 0.1  # additive, uniform in [-b, b]
    contrast: float = 0.1  # multiplicative around the mean, uniform in [1 - c, 1 + c]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> AugmentConfig:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator | None, device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=device) * (hi - lo) + lo


def augment_batch(
    x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Randomly transform each image of ``x`` independently."""
    b, dev = x.shape[0], x.device
    gen = generator
    angle = _uniform(b, -cfg.rotation, cfg.rotation, gen, dev) * (math.pi / 180.0)
    scale = _uniform(b, 1.0 - cfg.zoom, 1.0 + cfg.zoom, gen, dev)
    tx = _uniform(b, -cfg.shift, cfg.shift, gen, dev) * 2.0  # grid coords span [-1, 1]
    ty = _uniform(b, -cfg.shift, cfg.shift, gen, dev) * 2.0
    sx = torch.where(torch.rand(b, generator=gen, device=dev) < cfg.hflip, -1.0, 1.0)
    sy = torch.where(torch.rand(b, generator=gen, device=dev) < cfg.vflip, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [
            torch.stack([cos * sx, -sin, tx], dim=1),
            torch.stack([sin, cos * sy, ty], dim=1),
        ],
        dim=1,
    ).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if cfg.contrast > 0:
        c = _uniform(b, 1.0 - cfg.contrast, 1.0 + cfg.contrast, gen, dev).view(b, 1, 1, 1)
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        out = (out - mean) * c.to(x.dtype) + mean
    if cfg.brightness > 0:
        out = out + _uniform(b, -cfg.brightness, cfg.brightness, gen, dev).view(b, 1, 1, 1).to(
            x.dtype
        )
    return out.clamp_(0.0, 1.0)
