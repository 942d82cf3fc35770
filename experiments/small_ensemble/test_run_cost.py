"""run_cost.py times two runs' product scoring on the same validation films and
writes the ratio (no timing is asserted, only that the figures hang together)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).with_name("run_cost.py")


def test_run_cost_writes_the_ratio(run_dir, resnet_run, data_dir, tmp_path):
    out = tmp_path / "cost.json"
    cmd = [sys.executable, str(SCRIPT), "--base", str(run_dir),
           "--base-data", str(data_dir), "--run", str(resnet_run), "--data", str(data_dir),
           "--n", "8", "--repeats", "1", "--out", str(out)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["films"] == 8 and r["base"]["seconds"] > 0 and r["run"]["seconds"] > 0
    assert abs(r["ratio"] - r["run"]["seconds"] / r["base"]["seconds"]) < 1e-9
    assert "x base" in done.stdout
