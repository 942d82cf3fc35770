"""Heatmaps from class activation maps, in numpy: what the torch-free install explains with.

For a network whose head is global average pooling + a linear layer, Grad-CAM's weights
(the gradient of the logit with respect to the last feature map, averaged over its
positions) are the linear layer's weights divided by the map's area, so Grad-CAM's map is
the class activation map (CAM: the feature map weighted by the head's weights) up to a
positive factor, which the scaling to [0, 1] removes. The export writes that map as the
ONNX output ``cam``; :func:`heat_from_maps` scales and resizes it as the ``grad-cam``
package does (ReLU, min-max per image, bilinear resize to the input, then again), so both
paths give the same heatmap. Other heads (attention pooling, several dense layers, token
models) have no such identity: they are explained with Grad-CAM in the training install.
"""

from __future__ import annotations

import cv2
import numpy as np


def _scaled(maps: np.ndarray, size: int | None) -> np.ndarray:
    """Per image: minus its minimum, over its maximum (+1e-7), then resized to size."""
    out = []
    for m in maps:
        m = m - np.min(m)
        m = m / (1e-7 + np.max(m))
        out.append(cv2.resize(np.float32(m), (size, size)) if size else m)
    return np.stack(out).astype(np.float32, copy=False)


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


def heat_from_maps(maps: np.ndarray, size: int, eval_crop: float = 1.0) -> np.ndarray:
    """Class activation maps (N, h, w) -> heatmaps (N, size, size) float32 in [0, 1] on the
    whole film, scaled as Grad-CAM's are."""
    maps = np.asarray(maps, np.float32)
    if len(maps) == 0:
        return np.zeros((0, size, size), np.float32)
    heat = _scaled(np.maximum(maps, 0.0), size)
    heat = _scaled(np.maximum(heat, 0.0), None)  # the package scales again after its mean
    heat = uncrop_heat(heat, eval_crop)
    return np.clip(np.nan_to_num(heat, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
