"""eval_size.py: validation AUROC per size with batch-norm statistics refitted, the
rule's decision, test figures only when a size is adopted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("eval_size.py")


def test_eval_size_writes_the_rules_decision(resnet_run, data_dir, data48, tmp_path):
    out = tmp_path / "size.json"
    cmd = [sys.executable, str(SCRIPT), "--run", str(resnet_run), "--data", str(data_dir),
           "--at", str(data48), "--n-train", "32", "--out", str(out)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    [row] = report["val"].values()
    assert sorted(row) == ["32", "48"] and all(0 <= v <= 1 for v in row.values())
    gain = report["decision"]["by_size"]["48"]["mean_gain"]
    assert gain == pytest.approx(row["48"] - row["32"])
    adopted = report["decision"]["adopted"]
    assert adopted == ("48" if gain >= 0.002 else None)
    assert ("test" in report) == (adopted is not None)
    assert "decision:" in done.stdout
