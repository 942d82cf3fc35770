"""bench/dedupe.py runs end to end at two tiny sizes and writes its JSON layout (``results``
-> per size: ``index`` timings and memory, recall, false pairs, the exhaustive baseline).

No timing is asserted: only that every planted pair within the threshold was found, none
beyond it, and that the index's pairs equal the exhaustive search's where both ran.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import REPO

INDEX_KEYS = {
    "setting", "probes_per_query", "prepare_s", "add_s", "query_s", "verify_s", "build_s",
    "query_plus_verify_s", "total_s", "cpu_s", "peak_rss_mb", "peak_increase_mb",
    "candidates_per_query", "threads", "other_s",
}  # fmt: skip


def test_bench_dedupe_writes_a_well_formed_report(tmp_path):
    out = tmp_path / "sub" / "dedupe.json"
    cmd = [
        sys.executable, str(REPO / "bench" / "dedupe.py"),
        "--n", "2000,3000", "--threshold", "24", "--threads", "1",
        "--exhaustive-max", "2000", "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["config"]["sizes"] == [2000, 3000] and report["machine"]["faiss"]
    small, large = report["results"]
    for r, n in ((small, 2000), (large, 3000)):
        assert r["n"] == n and set(r["index"]) >= INDEX_KEYS
        assert r["planted_within"] == max(10, n // 100) and r["planted_beyond"] == max(5, n // 400)
        assert r["recall"] == 1.0 and r["false_pairs"] == 0 and r["distances_exact"]
        assert r["pairs"] == r["planted_within"]  # uniform codes: no other pair is near
        s = r["index"]["setting"]
        assert s["nflip"] >= 24 // s["nhash"] and s["nhash"] * s["b"] <= 256
    assert small["equal_to_exhaustive"] and small["recall_vs_exhaustive"] == 1.0
    assert small["exhaustive"]["total_s"] > 0 and small["speedup_x"] > 0
    assert large["exhaustive"] is None  # above --exhaustive-max
    assert "2000" in done.stdout and "recall" in done.stdout
