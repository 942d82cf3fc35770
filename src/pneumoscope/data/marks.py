"""Source-mark augmentations for the population check, applied to child and adult films alike.

The population check (child or adult?) learns from films of different origins: pediatric
films of one hospital against adult films cut from papers and case reports, which carry
letters, arrows, text boxes, frames, crops and their own JPEG quality. Drawn independently
of the group, these marks say nothing about age, so the check has to read the anatomy.

A film starts as the decoded gray image shrunk to a long side of at most ``RAW_LONG`` px
(:func:`shrink`, aspect kept) and ends as the package's ``preprocess_gray`` output
(square resize + CLAHE), so training sees exactly what the check's preprocessing gives for
a film that carried these marks (:func:`augment`). Training-time only; the recipe and its
measured effect: experiments/population_check/README.md.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from pneumoscope.data.preprocess import PreprocessConfig, preprocess_gray

RAW_LONG = 320  # long side of the film the augmentations start from
TRAIN_FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_PLAIN)
WORDS = (
    "R",
    "L",
    "A",
    "B",
    "C",
    "D",
    "a",
    "b",
    "c",
    "AP",
    "PA",
    "PORTABLE",
    "SUPINE",
    "ERECT",
    "DX",
    "SX",
    "MOBILE",
    "1",
    "2",
    "3",
    "Day 1",
    "12 h",
    "Fig. 2",
    "UPRIGHT",
    "LEFT",
    "RIGHT",
)
# draws one arrow from p0 to p1: (img, p0, p1, color, thickness, rng) -> None
ArrowStyle = Callable[[np.ndarray, tuple, tuple, int, int, np.random.Generator], None]


def shrink(gray: np.ndarray, long_side: int = RAW_LONG) -> np.ndarray:
    """The decoded film with its long side at most ``long_side`` px, aspect kept."""
    h, w = gray.shape
    s = long_side / max(h, w)
    if s >= 1:
        return gray
    return cv2.resize(
        gray, (max(8, round(w * s)), max(8, round(h * s))), interpolation=cv2.INTER_AREA
    )


def _fill(rng: np.random.Generator, img: np.ndarray) -> int:
    return int(rng.choice([0, 255, int(rng.integers(60, 200))]))


def crop_zoom(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random crop (55-100% of the area, aspect 0.75-1.33) or, p 0.25, a zoom out."""
    h, w = img.shape
    if rng.random() < 0.25:
        top, bot, lft, rgt = (int(rng.uniform(0, 0.2) * s) for s in (h, h, w, w))
        if rng.random() < 0.25:
            return cv2.copyMakeBorder(img, top, bot, lft, rgt, cv2.BORDER_REPLICATE)
        return cv2.copyMakeBorder(
            img, top, bot, lft, rgt, cv2.BORDER_CONSTANT, value=_fill(rng, img)
        )
    area = rng.uniform(0.55, 1.0) * h * w
    ar = np.exp(rng.uniform(np.log(0.75), np.log(1.33)))
    ch = int(min(h, round(np.sqrt(area / ar))))
    cw = int(min(w, round(np.sqrt(area * ar))))
    y = int(rng.integers(0, h - ch + 1))
    x = int(rng.integers(0, w - cw + 1))
    return img[y : y + ch, x : x + cw]


def rotate(img: np.ndarray, rng: np.random.Generator, max_deg: float = 8.0) -> np.ndarray:
    h, w = img.shape
    m = cv2.getRotationMatrix2D((w / 2, h / 2), float(rng.uniform(-max_deg, max_deg)), 1.0)
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def borders(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flat bands over 0-12% of each side (overwrite, as a figure's frame would)."""
    img = img.copy()
    h, w = img.shape
    v = _fill(rng, img)
    for side in range(4):
        if rng.random() < 0.5:
            continue
        k = int(rng.uniform(0.01, 0.12) * (h if side < 2 else w))
        if side == 0:
            img[:k] = v
        elif side == 1:
            img[h - k :] = v
        elif side == 2:
            img[:, :k] = v
        else:
            img[:, w - k :] = v
    return img


def _corner_point(rng: np.random.Generator, h: int, w: int) -> tuple[int, int]:
    if rng.random() < 0.6:  # corners and edges, where figures carry their letters
        x = int(rng.choice([rng.uniform(0.02, 0.2), rng.uniform(0.7, 0.95)]) * w)
        y = int(rng.choice([rng.uniform(0.08, 0.2), rng.uniform(0.85, 0.98)]) * h)
    else:
        x, y = int(rng.uniform(0.05, 0.9) * w), int(rng.uniform(0.1, 0.95) * h)
    return x, y


def line_arrow(img: np.ndarray, p0, p1, color: int, th: int, rng: np.random.Generator) -> None:
    """The training arrow style: a line with an open head (``cv2.arrowedLine``)."""
    cv2.arrowedLine(img, p0, p1, color, th, cv2.LINE_AA, tipLength=rng.uniform(0.2, 0.4))


def marks(
    img: np.ndarray,
    rng: np.random.Generator,
    fonts=TRAIN_FONTS,
    arrow: ArrowStyle = line_arrow,
    boxed: bool = False,
) -> np.ndarray:
    """1-3 letters/words, arrows (p 0.4), a filled text box (p 0.15), burnt into the film.

    ``fonts``, ``arrow`` and ``boxed`` (letters on a filled box, no separate text box) set
    the style; training uses the defaults, the experiment's stress tests other styles."""
    img = img.copy()
    h, w = img.shape
    scale_px = max(h, w)
    for _ in range(int(rng.integers(1, 4))):
        text = str(rng.choice(WORDS))
        font = int(rng.choice(fonts))
        fs = rng.uniform(0.025, 0.09) * scale_px / 22.0
        th = max(1, int(round(fs * rng.uniform(1.0, 2.5))))
        x, y = _corner_point(rng, h, w)
        color = 255 if rng.random() < 0.75 else 0
        if boxed:
            (tw, tht), _ = cv2.getTextSize(text, font, fs, th)
            cv2.rectangle(img, (x - 3, y - tht - 3), (x + tw + 3, y + 5), 255 - color, -1)
        cv2.putText(img, text, (x, y), font, fs, color, th, cv2.LINE_AA)
    if rng.random() < 0.4:
        for _ in range(int(rng.integers(1, 3))):
            x1, y1 = int(rng.uniform(0.1, 0.9) * w), int(rng.uniform(0.1, 0.9) * h)
            ang, ln = rng.uniform(0, 2 * np.pi), rng.uniform(0.06, 0.2) * scale_px
            x0, y0 = int(x1 - ln * np.cos(ang)), int(y1 - ln * np.sin(ang))
            color = 255 if rng.random() < 0.7 else 0
            th = max(1, int(scale_px * rng.uniform(0.004, 0.012)))
            arrow(img, (x0, y0), (x1, y1), color, th, rng)
    if not boxed and rng.random() < 0.15:
        bw, bh = int(rng.uniform(0.15, 0.4) * w), int(rng.uniform(0.04, 0.08) * h)
        x, y = (
            int(rng.uniform(0, w - bw)),
            int(rng.choice([rng.uniform(0, 0.1), rng.uniform(0.85, 0.95)]) * h),
        )
        bg = 0 if rng.random() < 0.5 else 255
        cv2.rectangle(img, (x, y), (x + bw, y + bh), bg, -1)
        cv2.putText(
            img,
            str(rng.choice(WORDS)),
            (x + 2, y + bh - 3),
            cv2.FONT_HERSHEY_SIMPLEX,
            bh / 30.0,
            255 - bg,
            1,
            cv2.LINE_AA,
        )
    return img


def intensity(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x = img.astype(np.float32) / 255.0
    x = x ** rng.uniform(0.6, 1.6)
    x = (x - 0.5) * rng.uniform(0.7, 1.3) + 0.5 + rng.uniform(-25, 25) / 255.0
    return np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)


def resolution(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape
    if rng.random() < 0.5:
        f = rng.uniform(0.3, 1.0)
        small = cv2.resize(
            img, (max(16, int(w * f)), max(16, int(h * f))), interpolation=cv2.INTER_AREA
        )
        img = cv2.resize(
            small,
            (w, h),
            interpolation=int(rng.choice([cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_NEAREST])),
        )
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 1.5))
    if rng.random() < 0.25:
        noise = rng.normal(0, rng.uniform(2, 8), img.shape)
        img = np.clip(img + noise, 0, 255).astype(np.uint8)
    return img


def jpeg(img: np.ndarray, q: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(q)])
    return cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE) if ok else img


def augment(img: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """One training view of a film: crop or zoom out, flip, rotation, borders, marks,
    intensity, resolution, JPEG, in this order, then the package's ``preprocess_gray`` at
    ``size`` (square resize + CLAHE)."""
    img = crop_zoom(img, rng)
    if rng.random() < 0.5:
        img = img[:, ::-1]
    img = np.ascontiguousarray(img)
    if rng.random() < 0.7:
        img = rotate(img, rng)
    if rng.random() < 0.3:
        img = borders(img, rng)
    if rng.random() < 0.6:
        img = marks(img, rng)
    img = intensity(img, rng)
    img = resolution(img, rng)
    if rng.random() < 0.7:
        img = jpeg(img, int(rng.integers(30, 96)))
    return preprocess_gray(img, PreprocessConfig(img_size=size))
