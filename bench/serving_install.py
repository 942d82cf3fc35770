"""The serving install against the full one: size on disk, start-up and memory, one run.

    python -m venv /tmp/serving && /tmp/serving/bin/pip install '.[serve]'
    python bench/serving_install.py --run runs/r18 --serving-venv /tmp/serving \\
        --backend onnx-int8 --repeats 5 --out bench/results/serving_install.json

Both installs start `pneumoscope serve` on the same exported run, one after the other,
--repeats interleaved rounds (serving, full, serving, ...), each on a free 127.0.0.1 port.
Per install: the size on disk of its site-packages (every file's size, ``du``-like, in MB)
and how many distributions it holds; the seconds from starting the process to the first
200 of /readyz (polled every 50 ms: the model, the OOD guard, the population check and the
decoding workers loaded) as the median and the range over the rounds; the resident set
(VmRSS) of the server's process tree once ready, with its decoding workers; and the
seconds `pneumoscope --help` takes (the command's import cost). The full install is the
baseline (this interpreter's environment, unless --full-venv): each figure also as a ratio
serving / full. --before-src DIR adds the full install running another checkout's source
(PYTHONPATH=DIR, e.g. a `git worktree` of the commit before the serving install existed,
when serving imported torch whatever the backend). Nothing else should run meanwhile; the
load average before and after is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from record import machine, method
from serve import memory_mb

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, type=Path, help="an exported run")
    p.add_argument("--serving-venv", required=True, type=Path)
    p.add_argument("--full-venv", type=Path, default=Path(sys.prefix))
    p.add_argument("--backend", default="onnx-int8", choices=("onnx", "onnx-int8"))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--before-src", type=Path, help="another checkout's src/, full install")
    p.add_argument("--out", type=Path, default=REPO / "bench/results/serving_install.json")
    args = p.parse_args()
    load = os.getloadavg()
    installs = {"serving": (args.serving_venv, None), "full": (args.full_venv, None)}
    if args.before_src:
        installs["full, before"] = (args.full_venv, args.before_src.resolve())
    rows = {name: _static(venv) | {"src": str(src or "")} for name, (venv, src) in installs.items()}
    for name in rows:
        rows[name].update(start_s=[], rss_mb=[], help_s=[])
    for _ in range(args.repeats):
        for name, (venv, src) in installs.items():
            env = {**os.environ, "PYTHONPATH": str(src)} if src else None
            start, rss = _start(venv / "bin" / "python", args.run, args.backend, env)
            rows[name]["start_s"].append(start)
            rows[name]["rss_mb"].append(rss)
            rows[name]["help_s"].append(_help(venv / "bin" / "python", env))
    result = {
        "machine": machine(load),
        "method": method(__doc__),
        "run": str(args.run),
        "backend": args.backend,
        "repeats": args.repeats,
        "installs": {k: _summary(v) for k, v in rows.items()},
    }
    _print(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


def _static(venv: Path) -> dict:
    site = next(venv.glob("lib/python*/site-packages"))
    size = sum(f.stat().st_size for f in site.rglob("*") if f.is_file() and not f.is_symlink())
    dists = list(site.glob("*.dist-info"))
    torch = any(d.name.lower().startswith("torch-") for d in dists)
    return {"venv": str(venv), "site_packages_mb": size / 2**20, "distributions": len(dists),
            "has_torch": torch}  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(python: Path, run: Path, backend: str, env: dict | None) -> tuple[float, float]:
    """Seconds from the process start to the first 200 of /readyz, and the tree's RSS then."""
    port = _free_port()
    cmd = [str(python), "-m", "pneumoscope", "serve", "--run", str(run), "--backend", backend]
    t0 = time.perf_counter()
    proc = subprocess.Popen([*cmd, "--port", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, cwd="/", env=env)  # fmt: skip
    try:
        while True:
            if proc.poll() is not None:
                sys.exit(f"serve ended: {proc.stderr.read().decode()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.05)
            if time.perf_counter() - t0 > 300:
                sys.exit("serve did not become ready in 300 s")
        started = time.perf_counter() - t0
        time.sleep(1.0)  # the decoding workers settle
        return started, memory_mb(proc.pid)["rss_mb"]
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def _help(python: Path, env: dict | None) -> float:
    t0 = time.perf_counter()
    cmd = [str(python), "-m", "pneumoscope", "--help"]
    subprocess.run(cmd, capture_output=True, check=True, cwd="/", env=env)
    return time.perf_counter() - t0


def _summary(row: dict) -> dict:
    out = {k: v for k, v in row.items() if not isinstance(v, list)}
    for key in ("start_s", "rss_mb", "help_s"):
        out[key] = {"median": statistics.median(row[key]), "min": min(row[key]),
                    "max": max(row[key]), "all": row[key]}  # fmt: skip
    return out


def _print(result: dict) -> None:
    rows = result["installs"]
    names = list(rows)
    print(f"serving install vs full install: {result['backend']}, {result['repeats']} rounds")
    head = "".join(f"{n:>14}" for n in names) + "".join(f"{n + ' / full':>20}" for n in names)
    print(f"{'':24}{head}")
    for label, key in [
        ("site-packages, MB", "site_packages_mb"),
        ("distributions", "distributions"),
        ("serve to ready, s", "start_s"),
        ("RSS when ready, MB", "rss_mb"),
        ("pneumoscope --help, s", "help_s"),
    ]:
        vals = [r[key]["median"] if isinstance(r[key], dict) else r[key] for r in rows.values()]
        base = vals[names.index("full")]
        line = "".join(f"{v:14.2f}" for v in vals) + "".join(f"{v / base:19.3f}x" for v in vals)
        print(f"{label:24}{line}")
    print("torch installed: " + ", ".join(f"{n} {r['has_torch']}" for n, r in rows.items()))


if __name__ == "__main__":
    main()
