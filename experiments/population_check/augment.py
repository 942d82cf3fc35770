"""Augmentations that remove source marks, applied to child and adult films alike.

A film starts as the decoded gray image (long side <= 320 px, aspect kept, from
``raw.npz``) and ends as the package's ``preprocess_gray`` output (square resize + CLAHE),
so training sees exactly what ``load_image`` would give for a film that carried these
marks. Every step is drawn independently of the class: borders, letters, arrows, text
boxes, crops, JPEG artefacts and blur then say nothing about age.

``stress`` holds the evaluation-only variants (mark styles never used in training) for
the secondary stress tests of the README.
"""

from __future__ import annotations

import cv2
import numpy as np

from pneumoscope.data.preprocess import PreprocessConfig, preprocess_gray

cv2.setNumThreads(1)
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


def marks(
    img: np.ndarray,
    rng: np.random.Generator,
    fonts=TRAIN_FONTS,
    filled_arrows: bool = False,
    boxed: bool = False,
) -> np.ndarray:
    """1-3 letters/words, arrows (p 0.4), a filled text box (p 0.15), burnt into the film."""
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
            if filled_arrows:
                _filled_arrow(img, (x0, y0), (x1, y1), color, th)
            else:
                cv2.arrowedLine(
                    img, (x0, y0), (x1, y1), color, th, cv2.LINE_AA, tipLength=rng.uniform(0.2, 0.4)
                )
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


def _filled_arrow(img: np.ndarray, p0, p1, color: int, th: int) -> None:
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
    """One training view of a film: the README's list, in order, then the package's
    ``preprocess_gray`` at ``size`` (square resize + CLAHE)."""
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


# ---- evaluation-only stress variants (styles absent from training) --------------------

STRESS_FONTS = (cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_COMPLEX, cv2.FONT_HERSHEY_SCRIPT_SIMPLEX)


def stress(img: np.ndarray, kind: str, seed: int) -> np.ndarray:
    """A decoded gray film with one stress change (before the package preprocessing)."""
    rng = np.random.default_rng(seed)
    h, w = img.shape
    if kind == "marks_new_style":
        return marks(img, rng, fonts=STRESS_FONTS, filled_arrows=True, boxed=True)
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


STRESS_KINDS = ("marks_new_style", "pad_border", "center_crop_80", "jpeg_q25")
