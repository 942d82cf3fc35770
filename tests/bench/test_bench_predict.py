"""bench/predict.py runs end to end on the small session run and writes its JSON layout
(``backends`` -> name -> ``throughput_x``, ``auroc_change``, ...) where --out says.

No timing is asserted: only that every backend this machine offers ran, the baseline's
ratios are 1 and the accuracy columns agree with one another.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np

from pneumoscope.data.cache import open_cache
from pneumoscope.inference.export import export_onnx
from pneumoscope.inference.fidelity import Tolerance
from tests.helpers import REPO

KEYS = {
    "images_per_s", "throughput_x", "latency_ms_median", "latency_ms_p95", "latency_x",
    "peak_increase_mb", "memory_x", "auroc", "auroc_change", "max_abs_logit_diff_vs_torch",
    "max_prob_diff_vs_torch", "decisions_changed_vs_torch", "flip_fraction",
}  # fmt: skip


def test_bench_predict_writes_a_well_formed_report(run_dir, data_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    cache = open_cache(data_dir)  # exported first with a tolerance fit for 24 images
    val = cache.split("val")
    export_onnx(
        run,
        quantize=True,
        check_images=np.asarray(cache.images[val["index"].to_numpy()]),
        check_labels=val["label"].to_numpy(),
        tolerance=Tolerance(auroc=0.05, max_prob_diff=0.1, flip_fraction=0.2),
    )
    out = tmp_path / "sub" / "predict.json"
    cmd = [
        sys.executable, str(REPO / "bench" / "predict.py"),
        "--run", str(run), "--data", str(data_dir),
        "--n", "8", "--threads", "1", "--repeats", "1", "--latency-n", "2",
        "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    backends = report["backends"]
    assert {"torch eager", "onnxruntime fp32", "onnxruntime int8"} <= set(backends)
    assert set(backends) | set(report["left_out"]) == {
        "torch eager", "torch bf16", "onnxruntime fp32", "onnxruntime int8", "openvino int8"
    }  # fmt: skip
    for name, r in backends.items():
        assert set(r) >= KEYS, name
        assert r["flip_fraction"] == r["decisions_changed_vs_torch"] / report["config"]["n_test"]
    base = backends["torch eager"]
    assert base["throughput_x"] == base["latency_x"] == 1.0 and base["auroc_change"] == 0.0
    assert backends["onnxruntime fp32"]["max_prob_diff_vs_torch"] < 1e-4
    assert report["export"]["int8"]["format"] == "QDQ (static, 7-bit weights)"
