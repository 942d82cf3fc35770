"""Benchmark `pneumoscope serve` under load against the bare model, in one run.

    python bench/serve.py --run runs/r18 --backend torch --threads 2 \\
        --n 64 --requests 200 --soak 2000 --out bench/results/serve.json
    python bench/serve.py --run runs/r18 --backend onnx-int8 --workers 1 2 ...

With ``--workers 1 2`` the server is started once per value (``serve --workers N``: N
replica processes on one socket), one after the other, each driven the same way and paired
with its own bare passes, so the rows compare replicas against one bare model measured in
the same run. Memory is the server's whole process tree (parent, replicas, decoding
workers).

A real server (``python -m pneumoscope serve``) is started as a subprocess on a free
127.0.0.1 port and driven, once /readyz answers, by a bounded asyncio load generator
(httpx): --requests POST /v1/predict requests (raw image bytes, no heatmap) per concurrency
level (1, 4, 16), cycling over a fixed seeded sample of --n real test images read into
memory once; each request has a time limit and each level a deadline, so the run always
ends. Per level: p50/p95 latency (client side, send to last byte), throughput (requests
done / wall time), errors (anything but 200) and the server's resident set before and after
(VmRSS) and peak (VmHWM) from /proc/<pid>/status. A soak of --soak more requests at
concurrency 4 counts errors and the resident-set growth from its first tenth to its end.

The baseline is the bare model through the same inference path, `pneumoscope.api.load(run,
backend)` then ``Model.predict`` on the same files, loaded once in this process with the same
backend and threads, and warmed up (a batch pass, then single files until 5 calls in a row
take under 1.5x the fastest; the server gets 10 unrecorded requests):
  * single-image latency WITH reading and decoding: ``predict([one file])`` per file (p50,
    p95); compared with the server's p50 at concurrency 1 (target <= 1.5x);
  * batch throughput: ``predict(all N files, batch_size=32)``, images/s over all passes;
    compared with the server's throughput at concurrency 16 (target >= 0.7x).
The machine's load may change during a run, so the compared figures are taken in --repeats
interleaved rounds: a bare pass, then its share of the server's requests at that level.
--threads sets OMP_NUM_THREADS/MKL_NUM_THREADS for the server (which has no threads option)
and torch's threads here; ONNX Runtime uses all cores in both (the default of `serve` and
the API alike). The load generator shares the machine's cores with the server: on a small
machine it takes CPU that the bare model has to itself.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from record import machine, method

LEVELS = (1, 4, 16)
SOAK_CONCURRENCY = 4
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".tif", ".tiff", ".bmp"}
TARGET_LATENCY_X = 1.5
TARGET_THROUGHPUT_X = 0.7
REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, type=Path)
    p.add_argument("--backend", default="torch", choices=("torch", "onnx", "onnx-int8"))
    p.add_argument("--threads", type=int, default=2, help="inference threads, server and bare")
    p.add_argument(
        "--images",
        type=Path,
        default=REPO.parent / "shared/data/chest_xray_224/test",
        help="folder of real test images (searched recursively)",
    )
    p.add_argument("--n", type=int, default=64, help="images in the seeded sample")
    p.add_argument("--requests", type=int, default=200, help="requests per concurrency level")
    p.add_argument("--soak", type=int, default=None, help="soak requests (default 2000; 200 quick)")
    p.add_argument("--repeats", type=int, default=3, help="rounds pairing bare and server")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=60.0, help="client time limit per request, s")
    p.add_argument("--max-concurrency", type=int, default=2, help="server --max-concurrency")
    p.add_argument("--max-queue", type=int, default=16, help="server --max-queue")
    p.add_argument("--quick", action="store_true", help="small run: n 16, 32 requests, soak 200")
    p.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[1],
        help="serve --workers values, one server each",
    )
    p.add_argument("--out", type=Path, default=Path("bench/results/serve.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.requests, args.repeats = min(args.n, 16), min(args.requests, 32), 2
    if args.soak is None:
        args.soak = 200 if args.quick else 2000
    return args


def sample_files(folder: Path, n: int, seed: int) -> list[Path]:
    """A fixed seeded sample of N image files (sorted first, so it is the same every run)."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SystemExit(f"no images under {folder}")
    return random.Random(seed).sample(files, min(n, len(files)))


# ---------------------------------------------------------------- the bare model


class Bare:
    """The bare model in this process: `api.load` once, then ``Model.predict`` on files."""

    def __init__(self, args: argparse.Namespace, files: list[Path]):
        import torch

        import pneumoscope.api

        torch.set_num_threads(args.threads)
        self.model = pneumoscope.api.load(args.run, args.backend)
        self.paths = [str(f) for f in files]
        self.latency_ms: list[float] = []
        self.batch_seconds: list[float] = []
        self.errors = 0
        self.worker = ThreadPoolExecutor(1, "bare-model")
        self.worker.submit(self.model.predict, self.paths, 32).result()
        self.warm_up_calls = self._warm_up()

    def _warm_up(self, settled: int = 5, cap: int = 150) -> int:
        """Single-file calls until ``settled`` in a row take under 1.5x the fastest so far.
        Torch's first few dozen single-image calls here took 300-900 ms, then ~70 ms."""
        fastest, streak = float("inf"), 0
        for k in range(cap):
            t0 = time.perf_counter()
            self.worker.submit(self.model.predict, [self.paths[k % len(self.paths)]]).result()
            secs = time.perf_counter() - t0
            fastest = min(fastest, secs)
            streak = streak + 1 if secs < 1.5 * fastest else 0
            if streak >= settled:
                return k + 1
        return cap

    def single_pass(self) -> None:
        """Every file once, one call per file: latency with reading and decoding. The calls
        run on one worker thread, as the server's inference does (torch single-image calls
        from the main thread ran 3-10x slower here, for dozens of calls, under load)."""
        for p in self.paths:
            t0 = time.perf_counter()
            table = self.worker.submit(self.model.predict, [p]).result()
            self.latency_ms.append(1000 * (time.perf_counter() - t0))
            self.errors += int((table["status"] != "ok").sum())

    def batch_pass(self) -> None:
        """Every file once, in batches of 32 (on the same worker thread)."""
        t0 = time.perf_counter()
        table = self.worker.submit(self.model.predict, self.paths, 32).result()
        self.batch_seconds.append(time.perf_counter() - t0)
        self.errors += int((table["status"] != "ok").sum())

    def summary(self) -> dict:
        ms, secs = self.latency_ms, self.batch_seconds
        return {
            "latency_ms_p50": float(np.median(ms)),
            "latency_ms_p95": float(np.percentile(ms, 95)),
            "single_calls": len(ms),
            "batch32_images_per_s": len(self.paths) * len(secs) / sum(secs),
            "batch_passes": len(secs),
            "warm_up_calls": self.warm_up_calls,
            "errors": self.errors,
        }


# ---------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: argparse.Namespace, port: int, log, workers: int = 1) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    cmd = [
        sys.executable, "-m", "pneumoscope", "serve", "--run", str(args.run),
        "--port", str(port), "--backend", args.backend, "--workers", str(workers),
        "--max-concurrency", str(args.max_concurrency), "--max-queue", str(args.max_queue),
    ]  # fmt: skip
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def wait_ready(proc: subprocess.Popen, base: str, log_path: Path, limit_s: float = 300) -> float:
    """Seconds until /readyz says ready; stops with the server's log when it dies or hangs."""
    import httpx

    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit_s:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited ({proc.returncode}):\n{_tail(log_path)}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return time.perf_counter() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the server was not ready after {limit_s:.0f} s:\n{_tail(log_path)}")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:]


def memory_mb(pid: int) -> dict:
    """The server's resident set now (VmRSS) and at its peak so far (VmHWM), in MB, summed
    over its process tree (replicas and decoding workers included)."""
    out = {"VmRSS": 0.0, "VmHWM": 0.0}
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/status") as fh:
                for line in fh:
                    key = line.split(":")[0]
                    if key in out:
                        out[key] += int(line.split()[1]) / 1024
        except OSError:  # ended meanwhile
            continue
    return {"rss_mb": out["VmRSS"], "peak_rss_mb": out["VmHWM"]}


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (from /proc/*/stat parent ids)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


# ---------------------------------------------------------------- the load generator


async def drive(base: str, bodies: list[bytes], total: int, concurrency: int, args):
    """``total`` requests from ``concurrency`` workers; stops at a deadline whatever happens.
    Returns (latencies of the successful requests in ms, error kinds, wall seconds)."""
    import httpx

    counter = iter(range(total))
    ms: list[float] = []
    errors: Counter = Counter()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def worker(client: httpx.AsyncClient) -> None:
        for i in counter:
            t0 = time.perf_counter()
            try:
                r = await client.post(f"{base}/v1/predict", content=bodies[i % len(bodies)])
                ok = r.status_code == 200 and r.json().get("status") == "ok"
                key = "ok" if ok else f"http {r.status_code}"
            except httpx.HTTPError as exc:
                key = type(exc).__name__
            if key == "ok":
                ms.append(1000 * (time.perf_counter() - t0))
            else:
                errors[key] += 1

    deadline = 30 + args.timeout * (total / concurrency + 2)
    t0 = time.perf_counter()
    async with httpx.AsyncClient(timeout=args.timeout, limits=limits) as client:
        tasks = [asyncio.create_task(worker(client)) for _ in range(concurrency)]
        _, pending = await asyncio.wait(tasks, timeout=deadline)
        for t in pending:
            t.cancel()
    if pending:
        errors["level deadline"] += total - len(ms) - sum(errors.values())
    return ms, errors, time.perf_counter() - t0


def run_level(pid: int, base: str, bodies: list[bytes], c: int, args, bare: Bare) -> dict:
    """One concurrency level. At c=1 and c=16 the requests go in --repeats rounds, each
    after a pass of the bare model it is compared with (single files, batches of 32), so
    a change in the machine's load hits both alike."""
    paired = {1: bare.single_pass, 16: bare.batch_pass}.get(c)
    rounds = args.repeats if paired else 1
    before = memory_mb(pid)["rss_mb"]
    ms, errors, wall = [], Counter(), 0.0
    for k in range(rounds):
        if paired:
            paired()
        n = args.requests // rounds + (k < args.requests % rounds)
        got, errs, secs = asyncio.run(drive(base, bodies, n, c, args))
        ms, wall = ms + got, wall + secs
        errors.update(errs)
    after = memory_mb(pid)
    return {
        "concurrency": c,
        "ok": len(ms),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        "latency_ms_p50": float(np.median(ms)) if ms else float("nan"),
        "latency_ms_p95": float(np.percentile(ms, 95)) if ms else float("nan"),
        "requests_per_s": len(ms) / wall,
        "wall_s": wall,
        "rss_before_mb": before,
        "rss_after_mb": after["rss_mb"],
        "peak_rss_mb": after["peak_rss_mb"],
    }


def soak(pid: int, base: str, bodies: list[bytes], args) -> dict:
    """--soak requests in ten slices, the resident set read after each: errors and growth
    (from the end of the first slice, once warm, to the end)."""
    slices = [args.soak // 10 + (k < args.soak % 10) for k in range(10)]
    start = memory_mb(pid)["rss_mb"]
    rss, ok, errors, wall = [], 0, Counter(), 0.0
    for n in (s for s in slices if s):
        got, errs, secs = asyncio.run(drive(base, bodies, n, SOAK_CONCURRENCY, args))
        ok, wall = ok + len(got), wall + secs
        errors.update(errs)
        rss.append(memory_mb(pid)["rss_mb"])
    return {
        "requests": args.soak,
        "concurrency": SOAK_CONCURRENCY,
        "ok": ok,
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        "requests_per_s": ok / wall if wall else 0.0,
        "rss_start_mb": start,
        "rss_after_each_tenth_mb": rss,
        "rss_growth_mb": rss[-1] - rss[0] if rss else 0.0,
        "peak_rss_mb": memory_mb(pid)["peak_rss_mb"],
    }


def serve_and_drive(
    args: argparse.Namespace, bodies: list[bytes], bare: Bare, workers: int = 1
) -> dict:
    """Start the server (``workers`` replicas), drive every level (with the paired bare
    passes) and the soak."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        log_path = Path(tmp) / "server.log"
        with open(log_path, "wb") as log:
            proc = start_server(args, port, log, workers)
            try:
                ready_s = wait_ready(proc, base, log_path)
                if workers > 1:  # every replica answering, not only the first
                    _wait_replicas(log_path, workers)
                out = {"workers": workers, "ready_s": ready_s, "idle": memory_mb(proc.pid)}
                print(f"server pid {proc.pid} ready on {base} in {ready_s:.1f} s", flush=True)
                asyncio.run(drive(base, bodies, 10, 1, args))  # warm-up, not counted
                out["levels"] = []
                for c in LEVELS:
                    print(f"concurrency {c}: {args.requests} requests ...", flush=True)
                    out["levels"].append(run_level(proc.pid, base, bodies, c, args, bare))
                if args.soak:
                    print(f"soak: {args.soak} requests at concurrency 4 ...", flush=True)
                    out["soak"] = soak(proc.pid, base, bodies, args)
            finally:
                stop_server(proc)
    return out


def _wait_replicas(log_path: Path, workers: int, limit_s: float = 300) -> None:
    t0 = time.perf_counter()
    while log_path.read_text(errors="replace").count("Application startup complete") < workers:
        if time.perf_counter() - t0 > limit_s:
            raise SystemExit(f"{workers} replicas were not up after {limit_s:.0f} s")
        time.sleep(0.2)


# ---------------------------------------------------------------- report


def ratios(bare: dict, levels: list[dict]) -> dict:
    by_c = {lv["concurrency"]: lv for lv in levels}
    lat_x = by_c[1]["latency_ms_p50"] / bare["latency_ms_p50"]
    thr_x = by_c[16]["requests_per_s"] / bare["batch32_images_per_s"]
    return {
        "p50_c1_vs_bare_single": lat_x,
        "p50_c1_target_max": TARGET_LATENCY_X,
        "p50_c1_ok": bool(lat_x <= TARGET_LATENCY_X),
        "throughput_c16_vs_bare_batch32": thr_x,
        "throughput_c16_target_min": TARGET_THROUGHPUT_X,
        "throughput_c16_ok": bool(thr_x >= TARGET_THROUGHPUT_X),
    }


def table(args, bare: dict, served_all: list[dict], rats: list[dict]) -> str:
    """One block per --workers value, each against the same bare model."""
    blocks = [_table(args, bare, s, r) for s, r in zip(served_all, rats, strict=True)]
    return "\n\n".join(blocks)


def _table(args, bare: dict, served: dict, rat: dict) -> str:
    head = (
        f"{'':<16}{'p50 ms':>9}{'p95 ms':>9}{'req/s':>8}{'x bare':>8}{'errors':>8}"
        f"{'RSS before':>12}{'after':>8}{'peak MB':>9}"
    )
    lines = [
        f"serve --workers {served['workers']}: "
        f"{args.backend}, {args.threads} threads, {args.n} test images, {args.requests} "
        f"requests per level, server --max-concurrency {args.max_concurrency} "
        f"--max-queue {args.max_queue}; x bare: latency ratio at c=1, throughput ratio at c=16",
        head,
        "-" * len(head),
        f"{'bare, 1 image':<16}{bare['latency_ms_p50']:>9.1f}{bare['latency_ms_p95']:>9.1f}"
        f"{1000 / bare['latency_ms_p50']:>8.1f}",
        f"{'bare, batch 32':<16}{'':>18}{bare['batch32_images_per_s']:>8.1f}",
    ]
    x = {1: rat["p50_c1_vs_bare_single"], 16: rat["throughput_c16_vs_bare_batch32"]}
    for lv in served["levels"]:
        c = lv["concurrency"]
        ratio = f"{x[c]:>8.2f}" if c in x else f"{'':>8}"
        lines.append(
            f"{f'server c={c}':<16}{lv['latency_ms_p50']:>9.1f}{lv['latency_ms_p95']:>9.1f}"
            f"{lv['requests_per_s']:>8.1f}{ratio}{lv['errors']:>8d}"
            f"{lv['rss_before_mb']:>12.0f}{lv['rss_after_mb']:>8.0f}{lv['peak_rss_mb']:>9.0f}"
        )
    lines += _verdicts(rat, served.get("soak"))
    return "\n".join(lines)


def _verdicts(rat: dict, soak_result: dict | None) -> list[str]:
    def mark(ok: bool) -> str:
        return "met" if ok else "MISSED"

    lines = [
        f"p50 at c=1 / bare single-image latency: {rat['p50_c1_vs_bare_single']:.2f}x "
        f"(target <= {TARGET_LATENCY_X}x: {mark(rat['p50_c1_ok'])})",
        f"throughput at c=16 / bare batch-32 throughput: "
        f"{rat['throughput_c16_vs_bare_batch32']:.2f}x "
        f"(target >= {TARGET_THROUGHPUT_X}x: {mark(rat['throughput_c16_ok'])})",
    ]
    if soak_result:
        s = soak_result
        lines.append(
            f"soak: {s['requests']} requests at c={s['concurrency']}, {s['errors']} errors, "
            f"{s['requests_per_s']:.1f} req/s, RSS {s['rss_start_mb']:.0f} -> "
            f"{s['rss_after_each_tenth_mb'][-1]:.0f} MB (growth after the first tenth "
            f"{s['rss_growth_mb']:+.1f} MB), peak {s['peak_rss_mb']:.0f} MB"
        )
    return lines


def report(args, files, bare: dict, served: list[dict], rat: list[dict], load_before) -> dict:
    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "config": {
            "run": str(args.run),
            "backend": args.backend,
            "threads": args.threads,
            "images": str(args.images),
            "n_images": len(files),
            "seed": args.seed,
            "requests_per_level": args.requests,
            "levels": list(LEVELS),
            "soak": args.soak,
            "timeout_s": args.timeout,
            "server_max_concurrency": args.max_concurrency,
            "server_max_queue": args.max_queue,
            "quick": args.quick,
            "workers": args.workers,
        },
        "machine": machine(load_before),
        "method": method(__doc__),
        "bare": bare,
        "server": served[0] if len(served) == 1 else served,
        "ratios": rat[0] if len(rat) == 1 else rat,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    from pneumoscope.core.io import write_json_atomic

    files = sample_files(args.images, args.n, args.seed)
    bodies = [f.read_bytes() for f in files]
    load_before = os.getloadavg()
    print(f"bare model ({args.backend}, {args.threads} threads): load, warm up ...", flush=True)
    bare = Bare(args, files)
    served = [serve_and_drive(args, bodies, bare, w) for w in args.workers]
    summary = bare.summary()
    rat = [ratios(summary, s["levels"]) for s in served]
    print(table(args, summary, served, rat))
    write_json_atomic(args.out, report(args, files, summary, served, rat, load_before))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
