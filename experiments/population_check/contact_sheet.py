"""Contact sheets: many films on one PNG, each with a short caption, to look at data.

Used to look at the sources before any design choice (step 1 of the README) and at the
films the population check gets wrong (``evaluate.py --sheets``). Films are shown as
decoded (no CLAHE) unless ``preprocessed=True``, letterboxed into square tiles so that
aspect ratios stay visible.

    .venv/bin/python experiments/population_check/contact_sheet.py --sample-sources \
        --out /work/pop_work/sheets
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import cv2
import numpy as np

DATA = Path("/work/shared/data")


def tile(img: np.ndarray, size: int, caption: str) -> np.ndarray:
    """Letterbox a gray image into a size x size tile (gray background) with a caption."""
    h, w = img.shape[:2]
    s = size / max(h, w)
    small = cv2.resize(
        img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA
    )
    out = np.full((size + 16, size), 96, np.uint8)
    y0, x0 = (size - small.shape[0]) // 2, (size - small.shape[1]) // 2
    out[y0 : y0 + small.shape[0], x0 : x0 + small.shape[1]] = small
    out[size:] = 0
    cv2.putText(
        out, caption[:40], (2, size + 12), cv2.FONT_HERSHEY_SIMPLEX, 0.33, 255, 1, cv2.LINE_AA
    )
    return out


def sheet(
    images: list[np.ndarray], captions: list[str], cols: int = 8, size: int = 160
) -> np.ndarray:
    """Tiles in a grid, row by row."""
    tiles = [tile(im, size, c) for im, c in zip(images, captions, strict=True)]
    while len(tiles) % cols:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.hstack(tiles[i : i + cols]) for i in range(0, len(tiles), cols)]
    return np.vstack(rows)


def read(path: str | Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise SystemExit(f"cannot read {path}")
    return img


def write_sheet(
    paths: list[str], captions: list[str], out: Path, cols: int = 8, size: int = 160
) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), sheet([read(p) for p in paths], captions, cols, size))
    print(f"wrote {out} ({len(paths)} films)")


def sample_sources(out: Path, seed: int = 0) -> None:
    """One sheet per source: 32 random films each (adult figure1 is 39 films: all shown)."""
    import pandas as pd

    rng = random.Random(seed)
    adults = pd.read_csv(DATA / "adult_public/adults.csv")
    for src, rows in adults.groupby("source"):
        rows = rows.sample(min(len(rows), 40), random_state=seed)
        paths = [str(DATA / "adult_public" / p) for p in rows["path"]]
        caps = [
            f"{a} {v} {s}"[:30]
            for a, v, s in zip(rows["age"], rows["view"], rows["original_size"], strict=True)
        ]
        write_sheet(paths, caps, out / f"adult_{src}.png")
    for split in ("train", "test"):
        files = sorted((DATA / "chest_xray_224" / split).glob("*/*.jpeg"))
        pick = rng.sample(files, 32)
        write_sheet(
            [str(p) for p in pick], [p.stem[:24] for p in pick], out / f"pediatric_{split}.png"
        )
    cov = DATA / "chest_xray_covid19_pneumonia_256/Data"
    files = sorted(cov.glob("*/COVID19/*.jpg"))
    write_sheet([str(p) for p in files], [p.stem for p in files], out / "covid_copy_COVID19.png")
    files = sorted(cov.glob("*/[NP]*/*.jpg"))
    pick = rng.sample(files, 16)
    write_sheet([str(p) for p in pick], [p.stem for p in pick], out / "covid_copy_pediatric.png")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sample-sources", action="store_true", help="one sheet per source")
    ap.add_argument("--out", type=Path, default=Path("/work/pop_work/sheets"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.sample_sources:
        sample_sources(args.out, args.seed)


if __name__ == "__main__":
    main()
