"""Would a weight-free thorax crop normalise the field of view? Measured before any training.

Films of one set are framed differently: in the pediatric set most NORMAL films show
neck, shoulders and abdomen while most PNEUMONIA films are cropped tight to the lungs, so
a model can learn the framing instead of the lungs. Cropping every film to its thorax in
the one preprocessing path would take that cue away, if the crop found the thorax
reliably without cutting pathology off. This script holds such a finder and measures,
per group of films, the box it draws (and the raw lung-field box before the safeguards):
if NORMAL and PNEUMONIA films end up framed alike only when the safeguards are off, the
crop is not worth a training run.

The thorax is found without weights, from intensities: on a small blurred copy, the
background (dark, connected to the border) is set aside, Otsu's threshold on the body
splits it into dark (air: the lung fields) and bright, and the two largest dark regions
near the middle are the lungs. The box spans them, symmetric about the spine (the
brightest column between them, so a lung whitened by consolidation is not cut off), at
least as tall as it is wide (the lower lobes, where consolidation hides from the
threshold, are not cut off either), with a margin, and never smaller than
``MIN_SIDE`` of the film in either direction. A film where no lung field is found keeps
its whole frame.

    python experiments/thorax_crop/thorax_crop.py --data ../shared/data/chest_xray_224 --n 300
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import cv2
import numpy as np

WORK = 128  # side of the working copy the box is found on
MARGIN = 0.08  # added on every side, as a fraction of the film
MIN_SIDE = 0.6  # the box covers at least this fraction of the film's width and height
MIN_LUNG = 0.02  # a lung region covers at least this fraction of the working copy
MODES = ("full", "thorax")


def lung_fields(small: np.ndarray) -> np.ndarray:
    """Boolean mask of the (at most two) lung fields on a blurred WORK x WORK uint8 copy;
    empty when none is found."""
    otsu, _ = cv2.threshold(small, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    _, lab = cv2.connectedComponents((small < 0.5 * otsu).astype(np.uint8), connectivity=4)
    edge = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    body = ~np.isin(lab, edge[edge > 0])
    if body.sum() < MIN_LUNG * small.size:
        return np.zeros_like(body)
    t, _ = cv2.threshold(small[body].reshape(1, -1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    dark = cv2.morphologyEx(((small < t) & body).astype(np.uint8), cv2.MORPH_OPEN, np.ones((5, 5)))
    n, lab, stats, centres = cv2.connectedComponentsWithStats(dark, connectivity=4)
    w = small.shape[1]
    found = [
        (stats[i, cv2.CC_STAT_AREA], i)
        for i in range(1, n)
        if stats[i, cv2.CC_STAT_AREA] >= MIN_LUNG * small.size
        and 0.1 * w < centres[i][0] < 0.9 * w
        and 0.15 * w < centres[i][1] < 0.85 * w
    ]
    return np.isin(lab, [i for _, i in sorted(found, reverse=True)[:2]])


def spine_column(small: np.ndarray) -> float:
    """The brightest column of the film's middle (rows and columns 30-70%): the spine."""
    w = small.shape[1]
    lo, hi = int(0.3 * w), int(0.7 * w)
    profile = small[lo:hi, lo:hi].astype(np.float32).mean(axis=0)
    profile = np.convolve(profile, np.ones(5) / 5, mode="same")
    return lo + float(np.argmax(profile)) + 0.5


def thorax_box(gray: np.ndarray) -> tuple[float, float, float, float]:
    """(top, bottom, left, right) of the thorax as fractions of the film's height and
    width; (0, 1, 0, 1) when no lung field is found."""
    small = cv2.resize(gray, (WORK, WORK), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (7, 7), 0)
    lungs = lung_fields(small)
    if not lungs.any():
        return 0.0, 1.0, 0.0, 1.0
    ys, xs = np.nonzero(lungs)
    c = spine_column(small)
    half = max(c - xs.min(), xs.max() + 1 - c) / WORK
    left, right = c / WORK - half, c / WORK + half
    top, bottom = ys.min() / WORK, (ys.max() + 1) / WORK
    bottom = max(bottom, top + (right - left))  # at least as tall as wide, downwards
    top, bottom = _grow(top - MARGIN, bottom + MARGIN)
    left, right = _grow(left - MARGIN, right + MARGIN)
    return top, bottom, left, right


def _grow(lo: float, hi: float) -> tuple[float, float]:
    """[lo, hi] clipped to [0, 1] and widened about its centre to at least MIN_SIDE."""
    lo, hi = max(0.0, lo), min(1.0, hi)
    short = MIN_SIDE - (hi - lo)
    if short > 0:
        lo, hi = lo - short / 2, hi + short / 2
        shift = max(0.0, -lo) - max(0.0, hi - 1.0)
        lo, hi = lo + shift, hi + shift
    return max(0.0, lo), min(1.0, hi)


def crop_to_thorax(gray: np.ndarray) -> np.ndarray:
    """The film cropped to ``thorax_box`` (whole pixels; the full film when none found)."""
    h, w = gray.shape
    top, bottom, left, right = thorax_box(gray)
    y0, y1 = int(round(top * h)), max(int(round(bottom * h)), int(round(top * h)) + 1)
    x0, x1 = int(round(left * w)), max(int(round(right * w)), int(round(left * w)) + 1)
    return gray[y0:y1, x0:x1]


GROUPS = {
    "train NORMAL": "train/NORMAL/*",
    "train PNEUMONIA": "train/PNEUMONIA/*",
    "test NORMAL2-IM": "test/NORMAL/NORMAL2*",
    "test NORMAL IM": "test/NORMAL/IM*",
}


def raw_box(gray: np.ndarray) -> tuple[float, float, float, float] | None:
    """The lung fields' own bounding box (no symmetry, extension, margin or minimum)."""
    small = cv2.GaussianBlur(
        cv2.resize(gray, (WORK, WORK), interpolation=cv2.INTER_AREA), (7, 7), 0
    )
    lungs = lung_fields(small)
    if not lungs.any():
        return None
    ys, xs = np.nonzero(lungs)
    return ys.min() / WORK, (ys.max() + 1) / WORK, xs.min() / WORK, (xs.max() + 1) / WORK


def box_stats(boxes: list) -> dict:
    b = np.array([x for x in boxes if x is not None], dtype=np.float64)
    h, w = b[:, 1] - b[:, 0], b[:, 3] - b[:, 2]
    return {
        "found": len(b) / len(boxes),
        "height": float(h.mean()),
        "height_sd": float(h.std()),
        "width": float(w.mean()),
        "width_sd": float(w.std()),
        "area": float((h * w).mean()),
        "full_frame": float(((h * w) > 0.97).mean()),
    }


def measure(root: Path, n: int, seed: int = 0) -> dict:
    rng = random.Random(seed)
    out = {}
    for name, pattern in GROUPS.items():
        paths = sorted(str(p) for p in root.glob(pattern))
        paths = rng.sample(paths, min(n, len(paths)))
        grays = [cv2.imread(p, cv2.IMREAD_GRAYSCALE) for p in paths]
        out[name] = {
            "films": len(paths),
            "crop": box_stats([thorax_box(g) for g in grays]),
            "lung_fields": box_stats([raw_box(g) for g in grays]),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="the pediatric set (train/ and test/ folders)")
    ap.add_argument("--n", type=int, default=300, help="films per group at most (seeded sample)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "thorax_crop.json"))
    a = ap.parse_args()
    res = measure(Path(a.data), a.n)
    print(f"{'group':<17} {'films':>5}  {'crop: area':>10} {'full':>5}  "
          f"{'lung fields: height':>19} {'width':>11}")  # fmt: skip
    for name, r in res.items():
        c, f = r["crop"], r["lung_fields"]
        lung_h = f"{f['height']:.3f} ± {f['height_sd']:.3f}"
        lung_w = f"{f['width']:.3f} ± {f['width_sd']:.3f}"
        print(f"{name:<17} {r['films']:>5}  {c['area']:>10.3f} {c['full_frame']:>5.2f}  "
              f"{lung_h:>19} {lung_w:>11}")  # fmt: skip
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"data": a.data, "n": a.n, "groups": res}, indent=2))


if __name__ == "__main__":
    main()
