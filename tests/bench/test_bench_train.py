"""bench/train.py runs end to end on the small synthetic cache and writes well-formed JSON.

No timing is asserted: only that every pipeline ran the steps asked for and that the
figures are consistent with one another.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import REPO


def test_bench_train_writes_a_well_formed_report(data_dir, tmp_path):
    out = tmp_path / "train.json"
    config = tmp_path / "bench.yaml"  # every augmentation on, so every naive transform runs
    config.write_text(
        "model: seed_cnn\nbatch_size: 8\naugment: {crop: 0.5, aspect: 0.15, gamma: 0.2, "
        "hflip: 0.5, vflip: 0.1, fill: border}\n"
    )
    cmd = [
        sys.executable,
        str(REPO / "bench" / "train.py"),
        "--data", str(data_dir),
        "--config", str(config),
        "--threads", "1",
        "--steps", "2",
        "--warmup", "1",
        "--repeats", "1",
        "--naive-workers", "0,1",
        "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "pneumoscope cache" in done.stdout and "naive JPEG, 0 workers" in done.stdout

    report = json.loads(out.read_text())
    cfg, env = report["config"], report["environment"]
    assert cfg["baseline"] == "naive JPEG, 0 workers"
    assert (cfg["model"], cfg["batch_size"], cfg["steps"]) == ("seed_cnn", 8, 2)
    assert cfg["img_size"] == 32
    assert env["torch_threads"] == 1 and env["cpu_count"] >= 1 and env["torch"]
    # the naive pipeline reproduces the cache's pixels
    assert report["naive_pixels_vs_cache"]["max_abs_diff"] <= 2
    pipelines = report["pipelines"]
    assert set(pipelines) == {
        "pneumoscope cache",
        "cache, NCHW layout",  # the presets train channels-last: what the layout is worth
        "naive JPEG, 0 workers",
        "naive JPEG, 1 worker",
    }
    assert cfg["channels_last"] is True
    assert pipelines["naive JPEG, 0 workers"]["speedup_vs_naive"] == 1.0
    for r in pipelines.values():
        assert r["timed_steps"] == 2 and len(r["raw_ms"]["step_s"]) == 2
        assert r["images_per_s"] > 0 and r["epoch_s_estimate"] > 0
        assert 0 <= r["input_share_pct"] <= 100
        assert r["input_ms_mean"] <= r["step_ms_mean"]
