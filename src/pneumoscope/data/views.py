"""Fixed augmented views of a film in numpy: what test-time augmentation applies, with or
without PyTorch.

Test-time augmentation gives every film the same K transforms (drawn once, with torch's
seeded generator, by :func:`pneumoscope.data.augment.draw_transforms`). :class:`Views`
holds those K transforms as plain numbers, so an export can record them and the serving
install (no torch) applies them: the affine by bilinear sampling with the padding of
``grid_sample(align_corners=False)`` (zeros, border or reflection), then gamma, contrast
and brightness, in float32, then rounded back to uint8. The sampling positions and weights
depend only on the view and the image size, so they are computed once per size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Views:
    """K transforms: ``theta`` (K, 2, 3) in grid coordinates, per-view gamma, contrast and
    brightness (None: off), and the fill outside the image."""

    theta: np.ndarray
    gamma: np.ndarray | None
    contrast: np.ndarray | None
    brightness: np.ndarray | None
    fill: str
    _taps: dict = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.theta)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: float32 values written as floats read back exactly."""

        def listed(a):
            return None if a is None else np.asarray(a, np.float32).tolist()

        return {
            "theta": listed(self.theta),
            "gamma": listed(self.gamma),
            "contrast": listed(self.contrast),
            "brightness": listed(self.brightness),
            "fill": self.fill,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Views:
        def arr(v):
            return None if v is None else np.asarray(v, np.float32)

        theta = arr(d["theta"]).reshape(-1, 2, 3)
        return cls(theta, arr(d["gamma"]), arr(d["contrast"]), arr(d["brightness"]), d["fill"])

    def apply(self, film: np.ndarray) -> np.ndarray:
        """uint8 (S, S) -> uint8 (K, S, S): the film through each view."""
        h, w = film.shape
        idx, wts = self._sampling(h, w)
        src = np.asarray(film, np.float32).reshape(-1) / np.float32(255.0)
        out = np.einsum("knt,knt->kn", src[idx], wts, dtype=np.float32).reshape(-1, h, w)
        out = self._intensity(out)
        return np.round(np.clip(out, 0.0, 1.0) * np.float32(255.0)).astype(np.uint8)

    def _intensity(self, out: np.ndarray) -> np.ndarray:
        k = len(self)
        if self.gamma is not None:
            out = np.power(np.maximum(out, 0.0), self.gamma.reshape(k, 1, 1), dtype=np.float32)
        if self.contrast is not None:
            mean = out.mean(axis=(1, 2), keepdims=True, dtype=np.float32)
            out = (out - mean) * self.contrast.reshape(k, 1, 1) + mean
        if self.brightness is not None:
            out = out + self.brightness.reshape(k, 1, 1)
        return out.astype(np.float32, copy=False)

    def _sampling(self, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        """Per view and output pixel: the 4 source pixels (flat indices) and their weights."""
        if (h, w) not in self._taps:
            self._taps[(h, w)] = _bilinear_taps(self.theta, h, w, self.fill)
        return self._taps[(h, w)]


def _bilinear_taps(theta: np.ndarray, h: int, w: int, fill: str):
    """affine_grid + grid_sample(bilinear, align_corners=False) as gather indices and weights."""
    xs = (2.0 * np.arange(w, dtype=np.float32) + 1.0) / w - 1.0
    ys = (2.0 * np.arange(h, dtype=np.float32) + 1.0) / h - 1.0
    gx, gy = np.meshgrid(xs, ys)
    base = np.stack([gx.ravel(), gy.ravel(), np.ones(h * w, np.float32)])  # (3, HW)
    grid = np.einsum("kij,jn->kin", theta.astype(np.float32), base)  # (K, 2, HW)
    ix = ((grid[:, 0] + 1.0) * w - 1.0) / 2.0
    iy = ((grid[:, 1] + 1.0) * h - 1.0) / 2.0
    ix, iy = _pad_coords(ix, w, fill), _pad_coords(iy, h, fill)
    x0, y0 = np.floor(ix), np.floor(iy)
    fx, fy = ix - x0, iy - y0
    idx, wts = [], []
    for dy, wy in ((0, 1.0 - fy), (1, fy)):
        for dx, wx in ((0, 1.0 - fx), (1, fx)):
            xi, yi = (x0 + dx).astype(np.int64), (y0 + dy).astype(np.int64)
            inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
            idx.append(np.where(inside, yi.clip(0, h - 1) * w + xi.clip(0, w - 1), 0))
            wts.append(np.where(inside, wx * wy, 0.0).astype(np.float32))
    return np.stack(idx, axis=-1), np.stack(wts, axis=-1)


def _pad_coords(c: np.ndarray, size: int, fill: str) -> np.ndarray:
    """Pixel coordinates after grid_sample's padding (align_corners=False)."""
    if fill == "border":
        return np.clip(c, 0, size - 1)
    if fill == "reflection":  # reflect over [-0.5, size - 0.5], then keep inside
        span = float(size)
        d = np.abs(c + 0.5)
        flips = np.floor(d / span)
        extra = np.fmod(d, span)
        c = np.where(flips % 2 == 0, extra - 0.5, span - extra - 0.5)
        return np.clip(c, 0, size - 1)
    return c  # zeros: taps outside the image weigh nothing
