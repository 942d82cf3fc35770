"""Probe a run for the field-of-view shortcut, on validation images only.

In the pediatric set most NORMAL films show neck, shoulders and abdomen while most
PNEUMONIA films are cropped tight to the lungs, so a model can learn "tight crop means
pneumonia". This zooms the validation NORMAL images in (a centre crop resized back, as
a tighter film would look) and reports how many cross the run's threshold. A robust
model keeps the rate near its un-zoomed value.

    python bench/fov_probe.py --run runs/fast-cpu --data work/pediatric160
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import torch

from pneumoscope.data.cache import open_cache
from pneumoscope.model.run import load_run

ZOOMS = (1.0, 1.15, 1.3, 1.5)


def zoom_center(img: np.ndarray, z: float) -> np.ndarray:
    s = img.shape[0]
    k = int(round(s / z))
    o = (s - k) // 2
    return cv2.resize(img[o : o + k, o : o + k], (s, s), interpolation=cv2.INTER_AREA)


def probe(run_dir: str, data: str, split: str = "val", zooms=ZOOMS) -> list[dict]:
    run = load_run(run_dir)
    cache = open_cache(data)
    rows = cache.split(split)
    idx = np.sort(rows["index"].to_numpy())
    y = cache.manifest["label"].to_numpy()[idx]
    x = cache.images[idx]
    out = []
    for z in zooms:
        xz = x if z == 1.0 else np.stack([zoom_center(i, z) for i in x])
        p = np.asarray(run.predict_proba(torch.from_numpy(xz)))
        out.append(
            {
                "zoom": z,
                "normal_positive_rate": float((p[y == 0] >= run.threshold).mean()),
                "normal_mean_p": float(p[y == 0].mean()),
                "pneumonia_sensitivity": float((p[y == 1] >= run.threshold).mean()),
            }
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--out", default=None, help="JSON file (default bench/results/fov_RUN.json)")
    a = ap.parse_args()
    res = probe(a.run, a.data, a.split)
    print(f"run {a.run}, {a.split} split, threshold from the run's calibration")
    print(f"{'zoom':>6} {'NORMAL called positive':>24} {'NORMAL mean p':>14} {'sensitivity':>12}")
    for r in res:
        print(
            f"{r['zoom']:>6.2f} {r['normal_positive_rate']:>24.3f} "
            f"{r['normal_mean_p']:>14.3f} {r['pneumonia_sensitivity']:>12.3f}"
        )
    out = Path(a.out or f"bench/results/fov_{Path(a.run).name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"run": a.run, "split": a.split, "results": res}, indent=2))


if __name__ == "__main__":
    main()
