"""Probe a run for the field-of-view shortcut, in both directions, on validation films only.

In the pediatric set most NORMAL films show neck, shoulders and abdomen while most
PNEUMONIA films are cropped tight to the lungs, so a model can learn "tight crop means
pneumonia" and "wide view means normal". The probe reframes each validation film as the
camera would have, before the run's own preprocessing (so a run that normalises the field
of view in preprocessing gets the chance to undo it):

* zoom in (z > 1): a centre crop of 1/z of the film, as a tighter film would look; it
  reports how many NORMAL films then cross the run's threshold;
* zoom out (z < 1): the film shrunk to z of its size in the middle of a black frame (the
  collimator border of a film taken wider); it reports how many PNEUMONIA films are still
  called pneumonia.

A robust model keeps both rates near their un-zoomed values. Films are scored one view
each (no test-time views), at the run's threshold.

    python experiments/fov_probe/fov_probe.py --run runs/fast-cpu --data work/pediatric160
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from pneumoscope.data.cache import open_cache
from pneumoscope.data.preprocess import decode_gray, preprocess_gray
from pneumoscope.model.run import load_run

ZOOMS = (1 / 1.5, 1 / 1.3, 1.0, 1.3, 1.5)


def zoom_center(img: np.ndarray, z: float) -> np.ndarray:
    """Zoom a 2-D film about its centre: z > 1 crops 1/z of each side and resizes back,
    z < 1 shrinks it to z of its size inside a black frame; the shape is kept."""
    h, w = img.shape
    if z >= 1.0:
        kh, kw = int(round(h / z)), int(round(w / z))
        top, left = (h - kh) // 2, (w - kw) // 2
        crop = img[top : top + kh, left : left + kw]
        return cv2.resize(crop, (w, h), interpolation=cv2.INTER_AREA)
    kh, kw = max(1, int(round(h * z))), max(1, int(round(w * z)))
    out = np.zeros_like(img)
    top, left = (h - kh) // 2, (w - kw) // 2
    out[top : top + kh, left : left + kw] = cv2.resize(img, (kw, kh), interpolation=cv2.INTER_AREA)
    return out


def probe(run_dir: str, data: str, split: str = "val", zooms=ZOOMS) -> list[dict]:
    run = load_run(run_dir)
    rows = open_cache(data).split(split)
    y = rows["label"].to_numpy()
    grays = [decode_gray(p) for p in rows["path"]]
    out = []
    for z in zooms:
        x = np.stack([preprocess_gray(zoom_center(g, z), run.preprocess) for g in grays])
        called = np.asarray(run.predict_proba(x)) >= run.threshold
        out.append(
            {
                "zoom": round(z, 4),
                "normal_positive_rate": float(called[y == 0].mean()),
                "pneumonia_sensitivity": float(called[y == 1].mean()),
            }
        )
    return out


def summary(res: list[dict]) -> dict:
    """The two figures the recipe rules use: NORMAL called pneumonia at zoom 1.3 and 1.5,
    and PNEUMONIA still called pneumonia at zoom 1/1.3 and 1/1.5 (means)."""
    zin = [r["normal_positive_rate"] for r in res if r["zoom"] > 1.0]
    zout = [r["pneumonia_sensitivity"] for r in res if r["zoom"] < 1.0]
    return {
        "zoom_in_normal_positive_rate": float(np.mean(zin)) if zin else None,
        "zoom_out_sensitivity": float(np.mean(zout)) if zout else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--data", required=True, help="the run's cache: its split and file paths")
    ap.add_argument("--split", default="val")
    ap.add_argument("--out", default=None, help="JSON file (default: results/fov_RUN.json here)")
    a = ap.parse_args()
    res = probe(a.run, a.data, a.split)
    print(f"run {a.run}, {a.split} split, threshold from the run's calibration, one view a film")
    print(f"{'zoom':>6} {'NORMAL called positive':>24} {'PNEUMONIA sensitivity':>22}")
    for r in res:
        rate, sens = r["normal_positive_rate"], r["pneumonia_sensitivity"]
        print(f"{r['zoom']:>6.3f} {rate:>24.3f} {sens:>22.3f}")
    s = summary(res)
    print(
        f"zoom in 1.3/1.5, NORMAL called positive (mean): {s['zoom_in_normal_positive_rate']:.4f}; "
        f"zoom out 1/1.3, 1/1.5, sensitivity (mean): {s['zoom_out_sensitivity']:.4f}"
    )
    out = Path(a.out or Path(__file__).parent / "results" / f"fov_{Path(a.run).name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"run": a.run, "split": a.split, "results": res, **s}, indent=2))


if __name__ == "__main__":
    main()
