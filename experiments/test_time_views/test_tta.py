"""tta.py runs end to end on the shared tiny run and writes its decision: per K the
validation AUROC gain of each run and their mean, the K the rule adopts (or none), and the
test figures only when one is adopted. No figure is asserted beyond its range."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).with_name("tta.py")


def test_tta_writes_the_rules_decision(run_dir, data_dir, tmp_path):
    runs = [shutil.copytree(run_dir, tmp_path / name) for name in ("a", "b")]
    out = tmp_path / "tta.json"
    cmd = [sys.executable, str(SCRIPT), "--data", str(data_dir),
           "--views", "2,1", "--out", str(out)]  # fmt: skip
    for r in runs:
        cmd += ["--run", str(r)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    by_k = report["decision"]["by_k"]
    assert sorted(by_k) == ["1", "2"]  # JSON keys; sorted K
    for r in by_k.values():
        assert len(r["gains"]) == 2 and all(-1 <= g <= 1 for g in r["gains"])
        assert abs(r["mean_gain"] - sum(r["gains"]) / 2) < 1e-12
    adopted = report["decision"]["adopted"]
    assert adopted in (None, 1, 2)
    assert ("test" in report) == (adopted is not None)
    if adopted:
        for row in report["test"].values():
            assert 0 <= row[f"views_{adopted}"]["accuracy"] <= 1
    assert "decision:" in done.stdout
