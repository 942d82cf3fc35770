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
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from pneumoscope.core.errors import UserError

FILLS = ("zeros", "border", "reflection")


@dataclass(frozen=True)
class AugmentConfig:
    rotation: float = 10.0  # degrees, uniform in [-r, r]
    zoom: float = 0.1  # isotropic scale uniform in [1 - z, 1 + z]
    shift: float = 0.05  # fraction of the image size, uniform in [-s, s]
    hflip: float = 0.0  # probability; off by default: a mirrored chest is not a real anatomy
    vflip: float = 0.0
    brightness: float = 0.1  # additive, uniform in [-b, b]
    contrast: float = 0.1  # multiplicative around the mean, uniform in [1 - c, 1 + c]
    # RandomResizedCrop: keep an area fraction uniform in [1 - crop, 1], aspect ratio
    # log-uniform in [3/4, 4/3], anywhere inside the image, resized back to full size
    crop: float = 0.0
    # independent x and y scale, each uniform in [1 - a, 1 + a] (times the zoom): Keras's
    # zoom_range draws x and y independently, so zoom 0 + aspect 0.2 is Keras's zoom 0.2
    aspect: float = 0.0
    gamma: float = 0.0  # x ** g, g log-uniform in [1 - gamma, 1 / (1 - gamma)]
    fill: str = "zeros"  # outside the image: zeros, border (Keras 'nearest') or reflection

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> AugmentConfig:
        """Unknown keys are ignored and missing ones take their defaults, so configs saved
        by older and newer versions still load (``zoom_out`` among them: tried, not adopted
        and removed; see experiments/fov_probe)."""
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def check(self) -> None:
        """One-line errors for settings outside their range."""
        for name in (
            "zoom",
            "shift",
            "crop",
            "aspect",
            "gamma",
            "brightness",
            "contrast",
        ):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
                raise UserError(f"augment {name} must be a number in [0, 1), got {v!r}")
        for name in ("hflip", "vflip"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise UserError(f"augment {name} is a probability in [0, 1], got {v!r}")
        if not isinstance(self.rotation, (int, float)) or not 0.0 <= self.rotation <= 180.0:
            raise UserError(f"augment rotation must be in [0, 180] degrees, got {self.rotation!r}")
        if self.fill not in FILLS:
            raise UserError(f"augment fill must be one of {', '.join(FILLS)}, got {self.fill!r}")


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


def augment_batch(
    x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Randomly transform each image of ``x`` independently.

    The affine maps output grid coordinates p (in [-1, 1]) to input coordinates
    C (R D p + t) + c: D scales and flips, R rotates, t shifts, and the crop box (C, c)
    chooses which part of the input the whole picture is drawn from.
    """
    b, dev = x.shape[0], x.device
    gen = generator
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
    theta = torch.cat([a, t[:, :, None]], dim=2).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode=cfg.fill, align_corners=False)
    if cfg.gamma > 0:
        lg = -math.log(1.0 - cfg.gamma)
        g = torch.exp(_uniform(b, -lg, lg, gen, dev)).view(b, 1, 1, 1).to(x.dtype)
        out = out.clamp_(min=0.0).pow(g)
    if cfg.contrast > 0:
        c = _uniform(b, 1.0 - cfg.contrast, 1.0 + cfg.contrast, gen, dev).view(b, 1, 1, 1)
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        out = (out - mean) * c.to(x.dtype) + mean
    if cfg.brightness > 0:
        out = out + _uniform(b, -cfg.brightness, cfg.brightness, gen, dev).view(b, 1, 1, 1).to(
            x.dtype
        )
    return out.clamp_(0.0, 1.0)
