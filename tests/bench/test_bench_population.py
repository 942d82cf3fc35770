"""bench/population.py runs end to end on the first films of each set (``--limit``, no
retrain) and writes its JSON layout: ``rates`` (one row per set: counts, a rate that is a
fraction, its Wilson interval, target and verdict), ``held_out`` (None when skipped),
``cost`` (ms per film of each part, the check's ratios to the pneumonia model) and the CPU.

No timing is asserted: only that the figures are well formed and agree with one another.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.realdata

LIMIT = 5
ROW_KEYS = {
    "id", "set", "check", "check_label", "threshold", "n", "flagged", "rate", "ci95", "target",
    "verdict", "deciding", "exceptions",
}  # fmt: skip
PARTS = {
    "resnet18_torch_b1", "resnet18_torch_b32", "check_prepare_pediatric", "check_prepare_adult",
    "check_onnx_b1", "check_onnx_b32",
}  # fmt: skip


def test_bench_population_writes_a_well_formed_report(shared_data, tmp_path):
    out = tmp_path / "sub" / "population.json"
    cmd = [
        sys.executable, str(REPO / "bench" / "population.py"), "--skip-held-out",
        "--limit", str(LIMIT), "--repeats", "1", "--data", str(shared_data), "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())

    assert report["held_out"] is None and report["config"]["limit"] == LIMIT
    assert 0 < report["check"]["threshold"] < 1
    rows = report["rates"]
    assert [r["id"] for r in rows] == ["A", "B", "D", "D"]
    for r in rows:
        assert set(r) >= ROW_KEYS, r["set"]
        assert r["n"] == LIMIT and 0 <= r["flagged"] <= r["n"]
        assert 0.0 <= r["rate"] <= 1.0 and r["rate"] == r["flagged"] / r["n"]
        lo, hi = r["ci95"]
        assert 0.0 <= lo <= r["rate"] <= hi <= 1.0
        assert r["target"]["op"] in ("<=", ">=") and 0 < r["target"]["value"] < 1
        assert r["verdict"] in ("pass", "pass (interval reaches across)", "fail")
        wrong = r["exceptions"]
        expected = r["flagged"] if r["target"]["op"] == "<=" else r["n"] - r["flagged"]
        assert wrong["count"] == expected and len(wrong["films"]) == min(expected, 30)
        for film in wrong["films"]:
            assert (shared_data / film["path"]).is_file() and 0 <= film["adult_probability"] <= 1

    cost = report["cost"]
    assert set(cost["ms_per_film"]) >= PARTS
    assert all(ms > 0 for ms in cost["ms_per_film"].values())
    for kind in ("pediatric", "adult"):
        for b in (1, 32):
            total = cost["check"][f"check_total_{kind}_b{b}"]
            parts = cost["ms_per_film"][f"check_prepare_{kind}"]
            parts += cost["ms_per_film"][f"check_onnx_b{b}"]
            assert total["ms_per_film"] == pytest.approx(parts)
            base = cost["ms_per_film"][f"resnet18_torch_b{b}"]
            assert total["x_torch"] == pytest.approx(parts / base)
            assert total["verdict"] in ("pass", "fail")
    machine = report["machine"]
    assert machine["cpu_model"] and isinstance(machine["avx512_bf16"], bool)
    assert isinstance(machine["amx"], bool) and machine["torch"]
    assert "| A |" in done.stdout and "prepare + forward" in done.stdout
    assert machine["cpu_model"] in done.stdout
