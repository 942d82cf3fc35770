"""Benchmark prediction backends on real cached test images: torch eager fp32 (the baseline),
torch bf16 autocast, ONNX Runtime fp32 and static int8, OpenVINO int8.

    python bench/predict.py --run runs/reference --data work/pediatric128 \\
        --n 512 --threads 2 --out bench/results/predict.json

Speed is measured in this one process, on the same N test images already in memory (so
disk reads are not timed) with the same thread count for torch and ONNX Runtime:
  * throughput: images/s of ``logits_and_features`` at --batch-size, the median of
    --repeats passes, taken round-robin over the backends; each backend's pass over the
    whole test split (which gives its AUROC) comes first and is its warm-up;
  * latency: one image per call (batch size 1), median and p95 over --latency-n images
    after 10 warm-up calls, also round-robin over the backends, image by image.
torch bf16 runs only on a CPU with native bf16 (AVX512-BF16, AMX) and OpenVINO only when
installed (pip install 'pneumoscope[openvino]'); a backend left out is named in the report.
Accuracy on the whole test split, against torch eager fp32: AUROC change, largest change
of a calibrated probability, calls flipped at the run's threshold.
Memory is measured in a fresh subprocess per backend (so one backend's allocations never
count for another): after the imports and after loading the N images, the resident set
(VmRSS) is read; the backend is then loaded and run over the N images once, and the
process's peak resident set (VmHWM) is read. "peak +MB" is the difference: what the
backend itself (weights, session, activations) added at its peak.
The model is exported first (static int8, calibrated and checked on the validation split)
when RUN/model.onnx or its int8 model is missing or stale.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from record import machine, method
from sklearn.metrics import roc_auc_score

from pneumoscope.core.io import write_json_atomic
from pneumoscope.data.cache import open_cache
from pneumoscope.inference.bf16 import TorchBf16Runner
from pneumoscope.inference.export import MAX_FIDELITY, export_onnx, export_problem
from pneumoscope.inference.onnx_runner import OnnxRunner
from pneumoscope.inference.ov_runner import OpenVinoRunner, openvino_available, openvino_problem
from pneumoscope.model.contract import RunFiles
from pneumoscope.model.hardware import cpu_features
from pneumoscope.model.run import check_compatible, load_run, sigmoid

ALL_BACKENDS = (
    "torch eager",
    "torch bf16",
    "onnxruntime fp32",
    "onnxruntime int8",
    "openvino int8",
)
BASELINE = ALL_BACKENDS[0]


def available_backends() -> tuple[tuple[str, ...], dict]:
    """(the backends this machine runs, {left out: why})."""
    why = {}
    if not cpu_features().bf16_fast:
        why["torch bf16"] = "no native bf16 on this CPU (AVX512-BF16 or AMX)"
    if not openvino_available():
        why["openvino int8"] = "OpenVINO not installed"
    return tuple(b for b in ALL_BACKENDS if b not in why), why


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, type=Path)
    p.add_argument("--data", required=True, type=Path, help="prepared cache with a test split")
    p.add_argument("--n", type=int, default=512, help="test images timed (batch inference)")
    p.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime threads")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--latency-n", type=int, default=50, help="images timed one by one")
    p.add_argument("--out", type=Path, default=Path("bench/results/predict.json"))
    p.add_argument("--memory-worker", choices=ALL_BACKENDS, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def make_backend(name: str, args: argparse.Namespace):
    """Anything with ``logits_and_features(images, batch_size, rows)``."""
    if name == BASELINE:
        return load_run(args.run)
    if name == "torch bf16":
        return TorchBf16Runner(load_run(args.run))
    if name == "openvino int8":
        return OpenVinoRunner(args.run, threads=args.threads)
    return OnnxRunner(args.run, int8=name.endswith("int8"), threads=args.threads)


def bench_images(args: argparse.Namespace, check: bool = True):
    """(cache, test split, the first N test images loaded into memory)."""
    cache = open_cache(args.data)
    if check:  # loads the torch model: not in memory workers, whose baseline it would inflate
        check_compatible(cache, load_run(args.run), args.data)
    test = cache.split("test")
    rows = test["index"].to_numpy()[: args.n]
    return cache, test, np.ascontiguousarray(cache.images[rows])


# ---------------------------------------------------------------- speed (this process)


def time_backends(args, cache, test, images: np.ndarray) -> dict:
    """Test-split logits, throughput and latency of every backend, all in this process.

    The repeats go round-robin over the backends, so a change in the machine's load
    during the run hits them all alike.
    """
    backends = {name: make_backend(name, args) for name in args.backends}
    results: dict = {name: {"pass_seconds": []} for name in args.backends}
    for name, backend in backends.items():
        print(f"test split + warm-up: {name} ...", flush=True)
        t0 = time.perf_counter()
        results[name]["test_logits"], _ = backend.logits_and_features(
            cache.images, args.batch_size, rows=test["index"].to_numpy()
        )
        results[name]["test_split_seconds"] = time.perf_counter() - t0
    for _ in range(args.repeats):
        for name, backend in backends.items():
            t0 = time.perf_counter()
            backend.logits_and_features(images, args.batch_size)
            results[name]["pass_seconds"].append(time.perf_counter() - t0)
    for name in backends:
        r = results[name]
        r["images_per_s"] = len(images) / float(np.median(r["pass_seconds"]))
    print("latency (round-robin) ...", flush=True)
    for name, ms in latency(backends, images, args.latency_n).items():
        results[name].update(latency_ms_median=float(np.median(ms)), latency_ms_p95=_p95(ms))
    return results


def latency(backends: dict, images: np.ndarray, n: int, warmup: int = 10) -> dict:
    """Batch-1 latencies (ms) of every backend, image by image round-robin. Torch's first
    ~7 single-image calls after batch work took ~1 s each on the development machine (then
    ~40 ms), hence 10 warm-up calls each."""
    for backend in backends.values():
        for i in range(warmup):
            k = i % len(images)
            backend.logits_and_features(images[k : k + 1], 1)
    ms: dict = {name: [] for name in backends}
    for i in range(min(n, len(images))):
        for name, backend in backends.items():
            t0 = time.perf_counter()
            backend.logits_and_features(images[i : i + 1], 1)
            ms[name].append(1000 * (time.perf_counter() - t0))
    return ms


def _p95(values: list[float]) -> float:
    return float(np.percentile(values, 95))


# ---------------------------------------------------------------- memory (subprocess)


def _proc_status_mb(field: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def memory_worker(args: argparse.Namespace) -> None:
    """Print {baseline_rss_mb, peak_rss_mb} of loading and running one backend once."""
    _, _, images = bench_images(args, check=False)
    linux = Path("/proc/self/status").is_file()
    base = _proc_status_mb("VmRSS") if linux else _maxrss_mb()
    backend = make_backend(args.memory_worker, args)
    backend.logits_and_features(images, args.batch_size)
    peak = _proc_status_mb("VmHWM") if linux else _maxrss_mb()
    print(json.dumps({"baseline_rss_mb": base, "peak_rss_mb": peak}))


def _maxrss_mb() -> float:
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def measure_memory(name: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--memory-worker", name]
    for key in ("run", "data", "n", "threads", "batch_size"):
        cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory worker for {name} failed:\n{done.stderr[-2000:]}")
    mem = json.loads(done.stdout.strip().splitlines()[-1])
    mem["peak_increase_mb"] = mem["peak_rss_mb"] - mem["baseline_rss_mb"]
    return mem


# ---------------------------------------------------------------- report


def ensure_export(args: argparse.Namespace, cache) -> dict:
    """The run's export record, exporting first (static int8, checked on the validation
    split) when it is missing or stale, or unchecked under an installed OpenVINO."""
    files = RunFiles.of(args.run)
    problem = export_problem(args.run, int8=True)
    if not problem and "openvino int8" in args.backends:
        problem = openvino_problem(files)
    if not problem:
        return json.loads(files.export_record.read_text())
    print(f"exporting first: {problem}", flush=True)
    val = cache.split("val").iloc[:MAX_FIDELITY]
    return export_onnx(
        args.run,
        quantize=True,
        check_images=np.ascontiguousarray(cache.images[val["index"].to_numpy()]),
        check_labels=val["label"].to_numpy(),
    )


def quality(logits: np.ndarray, base: np.ndarray, labels: np.ndarray, run) -> dict:
    """AUROC on the test split, and how far from torch's logits, probabilities and
    decisions it lands."""
    p = sigmoid(logits.astype(np.float64) / run.temperature)
    base_p = sigmoid(base.astype(np.float64) / run.temperature)
    flips = int(np.sum((p >= run.threshold) != (base_p >= run.threshold)))
    return {
        "auroc": float(roc_auc_score(labels, logits)),
        "max_abs_logit_diff_vs_torch": float(np.max(np.abs(logits - base))),
        "max_prob_diff_vs_torch": float(np.max(np.abs(p - base_p))),
        "decisions_changed_vs_torch": flips,
        "flip_fraction": flips / len(p),
    }


def add_ratios(results: dict) -> None:
    """Speed-ups (>1 = faster than torch eager) and memory ratio (<1 = less)."""
    b = results[BASELINE]
    for r in results.values():
        r["throughput_x"] = r["images_per_s"] / b["images_per_s"]
        r["latency_x"] = b["latency_ms_median"] / r["latency_ms_median"]
        r["memory_x"] = r["peak_increase_mb"] / b["peak_increase_mb"]
        r["auroc_change"] = r["auroc"] - b["auroc"]


def table(results: dict, args: argparse.Namespace) -> str:
    head = (
        f"{'backend':<18}{'img/s':>8}{'x':>7}{'lat ms':>9}{'p95':>8}{'x':>7}"
        f"{'peak +MB':>10}{'x':>7}{'AUROC':>9}{'dAUROC':>10}{'max|dp|':>9}{'flips':>6}"
    )
    lines = [
        f"{args.n} test images, batch {args.batch_size}, {args.threads} threads; int8: "
        "static QDQ; x = ratio to torch eager fp32 (speed: >1 faster; memory: <1 smaller); "
        "accuracy on the whole test split",
        head,
        "-" * len(head),
    ]
    for name, r in results.items():
        lines.append(
            f"{name:<18}{r['images_per_s']:>8.1f}{r['throughput_x']:>7.2f}"
            f"{r['latency_ms_median']:>9.2f}{r['latency_ms_p95']:>8.2f}{r['latency_x']:>7.2f}"
            f"{r['peak_increase_mb']:>10.0f}{r['memory_x']:>7.2f}{r['auroc']:>9.4f}"
            f"{r['auroc_change']:>+10.5f}{r['max_prob_diff_vs_torch']:>9.4f}"
            f"{r['decisions_changed_vs_torch']:>6d}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_worker:
        memory_worker(args)
        return
    args.backends, left_out = available_backends()
    for name, why in left_out.items():
        print(f"left out: {name}: {why}", flush=True)
    cache, test, images = bench_images(args)
    record = ensure_export(args, cache)
    run = load_run(args.run)
    labels = test["label"].to_numpy()
    load_before = os.getloadavg()
    results = time_backends(args, cache, test, images)
    base = results[BASELINE]["test_logits"]
    for name, r in results.items():
        r.update(quality(r.pop("test_logits"), base, labels, run))
        print(f"memory of {name} (fresh process) ...", flush=True)
        r.update(measure_memory(name, args))
    add_ratios(results)
    print(table(results, args))
    out = report(args, record, results, load_before, len(images))
    out["left_out"] = left_out
    out["config"]["n_test"] = len(labels)  # the accuracy columns' images: the whole test split
    write_json_atomic(args.out, out)
    print(f"wrote {args.out}")


def report(args, record: dict, results: dict, load_before, n_images: int) -> dict:
    return {
        "config": {
            "run": str(args.run),
            "data": str(args.data),
            "n_images": n_images,
            "threads": args.threads,
            "batch_size": args.batch_size,
            "repeats": args.repeats,
            "latency_n": args.latency_n,
        },
        "machine": machine(load_before, cpu_features=cpu_features().to_dict()),
        "method": method(__doc__),
        "export": record,
        "backends": results,
    }


if __name__ == "__main__":
    main()
