"""bench/train.py runs end to end on the small synthetic cache and writes well-formed JSON:
the input pipelines and the fp32 vs bf16 training steps at two sizes.

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
        "--sizes", "32,40",
        "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "pneumoscope cache" in done.stdout and "naive JPEG, 0 workers" in done.stdout
    assert "bf16, 40 px" in done.stdout

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
        assert r["peak_rss_mb"] > 0 and r["peak_rss_rise_mb"] <= r["peak_rss_mb"]

    # the precision section: fp32 and bf16 at each size, ratios to fp32 at the same size
    assert cfg["precisions"] == ["fp32", "bf16"] and cfg["sizes"] == [32, 40]
    assert cfg["precision"] in ("32-true", "bf16-mixed") and cfg["precision_reason"]
    assert env["cpu_bf16_signals"].keys() == {"amx_bf16", "avx512_bf16", "vnni", "onednn"}
    prec = report["precisions"]
    assert list(prec) == ["fp32, 32 px", "bf16, 32 px", "fp32, 40 px", "bf16, 40 px"]
    for name, r in prec.items():
        p, size = name.split(", ")
        assert (r["precision"], r["img_size"]) == (p, int(size.split()[0]))
        assert r["lightning_precision"] == {"fp32": "32-true", "bf16": "bf16-mixed"}[p]
        assert r["timed_steps"] == 2 and r["images_per_s"] > 0 and r["peak_rss_mb"] > 0
        fp32 = prec[f"fp32, {size}"]["images_per_s"]
        assert r["x_fp32"] == (1.0 if p == "fp32" else r["images_per_s"] / fp32)
        med = prec[f"fp32, {size}"]["step_ms_median"] / r["step_ms_median"]
        assert r["x_fp32_median"] == (1.0 if p == "fp32" else med)
