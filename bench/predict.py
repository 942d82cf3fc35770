"""Benchmark prediction backends on real cached test images: torch eager vs ONNX Runtime.

    python bench/predict.py --run runs/reference --data work/pediatric128 \\
        --n 512 --threads 2 --out bench/results/predict.json

Speed is measured in this one process, on the same N test images already in memory (so
disk reads are not timed) with the same thread count for torch and ONNX Runtime:
  * throughput: images/s of ``logits_and_features`` at --batch-size, the median of
    --repeats passes, taken round-robin over the backends; each backend's pass over the
    whole test split (which gives its AUROC) comes first and is its warm-up;
  * latency: one image per call (batch size 1), median and p95 over --latency-n images
    after 10 warm-up calls.
Memory is measured in a fresh subprocess per backend (so one backend's allocations never
count for another): after the imports and after loading the N images, the resident set
(VmRSS) is read; the backend is then loaded and run over the N images once, and the
process's peak resident set (VmHWM) is read. "peak +MB" is the difference: what the
backend itself (weights, session, activations) added at its peak.
The model is exported first (with int8) when RUN/model.onnx is missing or stale.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from pneumoscope.core.io import write_json_atomic
from pneumoscope.data.cache import open_cache
from pneumoscope.inference.export import INT8_OPS, OnnxRunner, export_onnx, export_problem
from pneumoscope.model.contract import RunFiles
from pneumoscope.model.run import check_compatible, load_run, sigmoid

BACKENDS = ("torch eager", "onnxruntime fp32", "onnxruntime int8")
BASELINE = BACKENDS[0]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, type=Path)
    p.add_argument("--data", required=True, type=Path, help="prepared cache with a test split")
    p.add_argument("--n", type=int, default=512, help="test images timed (batch inference)")
    p.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime threads")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--latency-n", type=int, default=50, help="images timed one by one")
    p.add_argument(
        "--int8-ops",
        default=",".join(INT8_OPS),
        help="ONNX ops quantised in model.int8.onnx (re-exported when they differ)",
    )
    p.add_argument("--out", type=Path, default=Path("bench/results/predict.json"))
    p.add_argument("--memory-worker", choices=BACKENDS, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def make_backend(name: str, args: argparse.Namespace):
    """Anything with ``logits_and_features(images, batch_size, rows)``."""
    if name == BASELINE:
        return load_run(args.run)
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
    backends = {name: make_backend(name, args) for name in BACKENDS}
    results: dict = {name: {"pass_seconds": []} for name in BACKENDS}
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
    for name, backend in backends.items():
        r = results[name]
        r["images_per_s"] = len(images) / float(np.median(r["pass_seconds"]))
        print(f"latency: {name} ...", flush=True)
        r.update(latency(backend, images, args.latency_n))
    return results


def latency(backend, images: np.ndarray, n: int, warmup: int = 10) -> dict:
    """Batch-1 latency. Torch's first ~7 single-image calls after batch work took ~1 s
    each on the development machine (then ~40 ms), hence 10 warm-up calls."""
    for i in range(warmup):
        backend.logits_and_features(images[i : i + 1], 1)
    ms = []
    for i in range(min(n, len(images))):
        t0 = time.perf_counter()
        backend.logits_and_features(images[i : i + 1], 1)
        ms.append(1000 * (time.perf_counter() - t0))
    return {"latency_ms_median": float(np.median(ms)), "latency_ms_p95": _p95(ms)}


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


def ensure_export(args: argparse.Namespace, cache, test) -> dict:
    """The run's export record, exporting first when it is missing, stale or other int8."""
    ops = [op.strip() for op in args.int8_ops.split(",") if op.strip()]
    problem = export_problem(args.run, int8=True)
    if not problem:
        record = json.loads(RunFiles.of(args.run).export_record.read_text())
        if record["int8"]["ops"] == ops:
            return record
        problem = f"{RunFiles.INT8} quantises {record['int8']['ops']}, not {ops}"
    print(f"exporting first: {problem}", flush=True)
    check = np.ascontiguousarray(cache.images[test["index"].to_numpy()[:32]])
    return export_onnx(args.run, quantize=True, check_images=check, int8_ops=ops)


def quality(logits: np.ndarray, base: np.ndarray, labels: np.ndarray, run) -> dict:
    """AUROC on the test split, and how far from torch's logits and decisions it lands."""
    decide = sigmoid(logits / run.temperature) >= run.threshold
    base_decide = sigmoid(base / run.temperature) >= run.threshold
    return {
        "auroc": float(roc_auc_score(labels, logits)),
        "max_abs_logit_diff_vs_torch": float(np.max(np.abs(logits - base))),
        "decisions_changed_vs_torch": int(np.sum(decide != base_decide)),
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
        f"{'peak +MB':>10}{'x':>7}{'AUROC':>9}{'dAUROC':>10}{'max|dz|':>9}{'flips':>6}"
    )
    lines = [
        f"{args.n} test images, batch {args.batch_size}, {args.threads} threads; "
        f"int8 quantises {args.int8_ops}; x = ratio to torch eager (speed: >1 faster; "
        "memory: <1 smaller)",
        head,
        "-" * len(head),
    ]
    for name, r in results.items():
        lines.append(
            f"{name:<18}{r['images_per_s']:>8.1f}{r['throughput_x']:>7.2f}"
            f"{r['latency_ms_median']:>9.2f}{r['latency_ms_p95']:>8.2f}{r['latency_x']:>7.2f}"
            f"{r['peak_increase_mb']:>10.0f}{r['memory_x']:>7.2f}{r['auroc']:>9.4f}"
            f"{r['auroc_change']:>+10.5f}{r['max_abs_logit_diff_vs_torch']:>9.4f}"
            f"{r['decisions_changed_vs_torch']:>6d}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_worker:
        memory_worker(args)
        return
    cache, test, images = bench_images(args)
    record = ensure_export(args, cache, test)
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
    write_json_atomic(args.out, report(args, record, results, load_before, len(images)))
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
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        },
        "method": __doc__.split("\n\n", 2)[2].strip(),
        "export": record,
        "backends": results,
    }


if __name__ == "__main__":
    main()
