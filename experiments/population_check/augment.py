"""Evaluation-only stress variants: mark styles never used in training, padding, a central
crop, JPEG q25 (the README's secondary stress tests). The training augmentations live in
the package, ``pneumoscope.data.marks``."""

from __future__ import annotations

import cv2
import numpy as np

from pneumoscope.data.marks import jpeg, marks

STRESS_FONTS = (cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_COMPLEX, cv2.FONT_HERSHEY_SCRIPT_SIMPLEX)
STRESS_KINDS = ("marks_new_style", "pad_border", "center_crop_80", "jpeg_q25")


def _filled_arrow(img: np.ndarray, p0, p1, color: int, th: int, rng=None) -> None:
    """An arrow with a filled triangular head (a style absent from training)."""
    p0, p1 = np.array(p0, float), np.array(p1, float)
    d = p1 - p0
    n = np.linalg.norm(d) + 1e-6
    u, v = d / n, np.array([-d[1], d[0]]) / n
    head = 0.3 * n
    base = p1 - u * head
    tri = np.array([p1, base + v * head * 0.5, base - v * head * 0.5]).astype(np.int32)
    cv2.line(img, tuple(p0.astype(int)), tuple(base.astype(int)), color, th, cv2.LINE_AA)
    cv2.fillPoly(img, [tri], color, cv2.LINE_AA)


def stress(img: np.ndarray, kind: str, seed: int) -> np.ndarray:
    """A decoded gray film with one stress change (before the package preprocessing)."""
    rng = np.random.default_rng(seed)
    h, w = img.shape
    if kind == "marks_new_style":
        return marks(img, rng, fonts=STRESS_FONTS, arrow=_filled_arrow, boxed=True)
    if kind == "pad_border":
        k = int(0.1 * max(h, w))
        return cv2.copyMakeBorder(
            img, k, k, k, k, cv2.BORDER_CONSTANT, value=int(rng.choice([0, 255, 128]))
        )
    if kind == "center_crop_80":
        dy, dx = int(0.1 * h), int(0.1 * w)
        return img[dy : h - dy, dx : w - dx]
    if kind == "jpeg_q25":
        return jpeg(img, 25)
    raise ValueError(kind)
