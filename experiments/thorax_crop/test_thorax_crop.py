"""thorax_crop.py: the weight-free thorax finder boxes two dark lung fields in a
bright body, keeps the whole frame where it finds none, and the script writes its table."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

SCRIPT = Path(__file__).with_name("thorax_crop.py")


def _module():
    spec = importlib.util.spec_from_file_location("thorax_crop", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _film() -> np.ndarray:
    """256 x 256: black background, a bright body, two dark lungs either side of a spine,
    the lungs spanning rows 60-150 and columns 70-186."""
    img = np.zeros((256, 256), np.uint8)
    cv2.rectangle(img, (40, 20), (216, 250), 200, -1)
    cv2.ellipse(img, (100, 105), (30, 45), 0, 0, 360, 70, -1)
    cv2.ellipse(img, (156, 105), (30, 45), 0, 0, 360, 70, -1)
    cv2.rectangle(img, (124, 20), (132, 250), 240, -1)  # the spine
    return img


def test_box_spans_the_lungs_with_the_safeguards():
    tc = _module()
    top, bottom, left, right = tc.thorax_box(_film())
    assert top < 60 / 256 < 150 / 256 < bottom  # both lungs inside, with the margin
    assert left < 70 / 256 and right > 186 / 256
    assert bottom - top >= right - left - 1e-9  # at least as tall as wide
    raw = tc.raw_box(_film())
    assert abs(raw[0] - 60 / 256) < 0.05 and abs(raw[1] - 150 / 256) < 0.05
    crop = tc.crop_to_thorax(_film())
    assert crop.shape[0] < 256 and crop.shape[1] < 256
    flat = np.full((256, 256), 128, np.uint8)
    assert tc.thorax_box(flat) == (0.0, 1.0, 0.0, 1.0)  # nothing found: the whole frame


def test_script_writes_its_table(tmp_path):
    for group in ("train/NORMAL", "train/PNEUMONIA", "test/NORMAL"):
        (tmp_path / group).mkdir(parents=True)
    for i in range(2):
        cv2.imwrite(str(tmp_path / f"train/NORMAL/IM-{i}.png"), _film())
        cv2.imwrite(str(tmp_path / f"train/PNEUMONIA/p{i}.png"), _film())
        cv2.imwrite(str(tmp_path / f"test/NORMAL/NORMAL2-IM-{i}.png"), _film())
        cv2.imwrite(str(tmp_path / f"test/NORMAL/IM-{i}.png"), _film())
    out = tmp_path / "t.json"
    cmd = [sys.executable, str(SCRIPT), "--data", str(tmp_path),
           "--n", "2", "--out", str(out)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    groups = json.loads(out.read_text())["groups"]
    assert set(groups) == {"train NORMAL", "train PNEUMONIA", "test NORMAL2-IM", "test NORMAL IM"}
    for g in groups.values():
        assert g["films"] == 2 and g["crop"]["found"] == 1.0 and 0 < g["crop"]["area"] < 1
