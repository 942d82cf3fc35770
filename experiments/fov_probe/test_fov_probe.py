"""fov_probe.py reframes films before the run's own preprocessing, both ways, and
writes per zoom the NORMAL positive rate and the PNEUMONIA sensitivity."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).with_name("fov_probe.py")


def _probe_module():
    spec = importlib.util.spec_from_file_location("fov_probe", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_zoom_center_crops_in_and_frames_out():
    zoom = _probe_module().zoom_center
    img = np.full((60, 80), 200, np.uint8)
    img[20:40, 30:50] = 50  # a dark centre block, 20 x 20
    tight = zoom(img, 2.0)
    assert tight.shape == img.shape and (tight < 100).sum() > 3.5 * 400  # 4x the area
    wide = zoom(img, 0.5)
    assert wide.shape == img.shape
    assert (wide == 0).sum() == 60 * 80 - 30 * 40  # a black frame round the shrunk film
    assert 80 <= ((wide > 0) & (wide < 100)).sum() <= 120  # the block at a quarter the area
    assert np.array_equal(zoom(img, 1.0), img)


def test_probe_writes_both_directions(run_dir, data_dir, tmp_path):
    out = tmp_path / "fov.json"
    cmd = [sys.executable, str(SCRIPT), "--run", str(run_dir),
           "--data", str(data_dir), "--out", str(out)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    zooms = [r["zoom"] for r in report["results"]]
    assert min(zooms) < 1.0 < max(zooms) and 1.0 in zooms
    for r in report["results"]:
        assert 0 <= r["normal_positive_rate"] <= 1 and 0 <= r["pneumonia_sensitivity"] <= 1
    zin = [r["normal_positive_rate"] for r in report["results"] if r["zoom"] > 1]
    assert abs(report["zoom_in_normal_positive_rate"] - sum(zin) / len(zin)) < 1e-12
    assert "sensitivity (mean)" in done.stdout
