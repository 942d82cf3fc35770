"""Hostile files and clients against `pneumoscope serve` and `pneumoscope predict`.

Prints a table (payload, HTTP status or predict row, seconds, peak RSS growth) and writes
JSON: what each hostile payload costs the server and the batch command, and whether
slow and idle clients can lock others out.

Method. The payloads come from ``bench/hostile_payloads.py`` (bombs of every format, RLE
and deflated DICOMs, polyglots, corrupt files), all made in memory. The server is the
real command in a subprocess on 127.0.0.1 with the run given (default: the committed
v0.1 run in tests/fixtures/run_v1); a thread samples the resident memory of the server
and all its child processes (decoding workers) from /proc every 20 ms, and a payload's
"peak growth" is the highest sum during its request minus the sum just before it. Each
payload is sent alone, one after the other, as the body of POST /v1/predict with a
120 s client limit. `predict` runs once per payload in its own process (the payload
written to a file), and its growth is that process's peak RSS (wait4) minus the peak of
the same command on one real film. Each server answers one real film before it is
measured (its workers started). The lockout part opens 300 idle connections and 32
uploads that send their body at 1 byte per second, then times /healthz and one real
prediction on a fresh connection five times over 6 s. The server log's size, its
tracebacks and any request data in it (payload names, the DICOM patient name the
payloads carry) are counted at the end. ``--src DIR`` runs another checkout's package
(PYTHONPATH), for a before/after table in one session.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import record  # noqa: E402
from bench.hostile_payloads import PATIENT_MARKER, all_payloads  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "chest_xray_224" / "test" / "NORMAL"
FILM = SHARED / "IM-0001-0001.jpeg"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, default=REPO / "tests" / "fixtures" / "run_v1")
    p.add_argument("--src", type=Path, default=None, help="another checkout's src/ to run")
    p.add_argument("--label", default="after", help="name of this run in the JSON")
    p.add_argument("--skip-predict", action="store_true", help="server parts only")
    p.add_argument("--idle", type=int, default=300, help="idle connections")
    p.add_argument("--slow", type=int, default=32, help="uploads at 1 byte per second")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "hostile.json")
    return p.parse_args(argv)


# --- memory of a process tree -----------------------------------------------------------


def tree_rss(root: int) -> int:
    """Resident bytes of ``root`` and every descendant, from /proc."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    members, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        kids = [c for c, p in parents.items() if p == pid and c not in members]
        members.update(kids)
        frontier += kids
    return sum(rss.get(pid, 0) for pid in members)


class Sampler:
    """Samples ``tree_rss(pid)`` every 20 ms; ``window()`` measures one stretch."""

    def __init__(self, pid: int):
        self.pid = pid
        self.peak = 0
        self.now = tree_rss(pid)
        self._stop = threading.Event()
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while not self._stop.wait(0.02):
            self.now = tree_rss(self.pid)
            self.peak = max(self.peak, self.now)

    @contextmanager
    def window(self):
        """Yields a dict that holds, afterwards, the growth in MiB over the stretch."""
        time.sleep(0.3)  # settle: a worker that was ended is replaced
        base = self.now
        self.peak = base
        out: dict = {}
        yield out
        time.sleep(0.1)
        out["peak_growth_mib"] = round((self.peak - base) / 2**20, 1)

    def stop(self) -> None:
        self._stop.set()


# --- the server ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_for(args: argparse.Namespace) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if args.src:
        env["PYTHONPATH"] = str(args.src.resolve())
    return env


@contextmanager
def server(args: argparse.Namespace, log_path: Path, audit: Path):
    port = free_port()
    cmd = [sys.executable, "-m", "pneumoscope", "serve", "--run", str(args.run)]
    cmd += ["--port", str(port), "--audit-log", str(audit)]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, env=env_for(args), stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"the server stopped: {log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        yield proc, base, port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def send(base: str, data: bytes, timeout: float = 120) -> tuple[str, float, str]:
    start = time.perf_counter()
    try:
        r = httpx.post(f"{base}/v1/predict", content=data, timeout=timeout)
        status = str(r.status_code)
        try:
            message = r.json().get("error") or r.json().get("status", "")
        except ValueError:
            message = r.text[:120]
    except httpx.HTTPError as exc:
        status, message = "no answer", type(exc).__name__
    return status, time.perf_counter() - start, str(message)[:160]


def serve_payloads(args, log_path: Path, audit: Path, payloads) -> list[dict]:
    """Each payload alone; a server that dies on one, or is still busy with it after the
    client gave up, is noted and started again, so that the next payload meets a
    server at rest."""
    rows, stack = [], None
    for p in payloads:
        if stack is None:
            stack = server(args, log_path, audit)
            proc, base, _ = stack.__enter__()
            send(base, FILM.read_bytes())  # warm: the measured requests find it ready
            sampler = Sampler(proc.pid)
        with sampler.window() as mem:
            status, seconds, message = send(base, p.data)
        died = proc.poll() is not None
        if died:
            status, message = f"server died ({proc.returncode})", "the server process ended"
        if died or status in ("504", "no answer"):  # dead or still busy: a fresh one next
            sampler.stop()
            stack.__exit__(None, None, None)
            stack = None
        rows.append(
            {"payload": p.name, "bytes": len(p.data), "status": status,
             "seconds": round(seconds, 2), **mem, "message": message}
        )
        print(f"  serve {p.name}: {status} {seconds:.2f} s {mem['peak_growth_mib']} MiB",
              flush=True)
    if stack is not None:
        sampler.stop()
        stack.__exit__(None, None, None)
    return rows


# --- slow and idle clients -----------------------------------------------------------------


async def _idle(port: int, n: int, hold: float) -> int:
    """n connections that send nothing; how many were still open at the end."""
    conns = []
    for _ in range(n):
        try:
            conns.append(await asyncio.open_connection("127.0.0.1", port))
        except OSError:
            break
    await asyncio.sleep(hold)
    open_ = sum(1 for _, w in conns if not w.is_closing() and not _peer_closed(w))
    for _, w in conns:
        w.close()
    return open_


def _peer_closed(writer) -> bool:
    reader_eof = getattr(writer, "_protocol", None)
    stream = getattr(reader_eof, "_stream_reader", None)
    return bool(stream and stream.at_eof())


async def _slow(port: int, hold: float) -> None:
    """An upload that announces 100 kB and sends one byte per second."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return
    head = (
        "POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n"
    )
    writer.write(head.encode())
    end = time.monotonic() + hold
    try:
        while time.monotonic() < end:
            writer.write(b"\xff")
            await writer.drain()
            await asyncio.sleep(1.0)
    except (ConnectionError, OSError):
        pass
    writer.close()


async def _probe(base: str, film: bytes, rounds: int = 5) -> list[dict]:
    out = []
    async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as c:
        for _ in range(rounds):
            row = {}
            for name, call in (
                ("healthz", lambda: c.get(f"{base}/healthz")),
                ("predict", lambda: c.post(f"{base}/v1/predict", content=film)),
            ):
                start = time.perf_counter()
                try:
                    status = (await call()).status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                row[name] = {"status": status, "seconds": round(time.perf_counter() - start, 2)}
            out.append(row)
            await asyncio.sleep(1.2)
    return out


async def lockout(base: str, port: int, args, film: bytes) -> dict:
    hold = 9.0
    idle = asyncio.create_task(_idle(port, args.idle, hold))
    slow = [asyncio.create_task(_slow(port, hold)) for _ in range(args.slow)]
    await asyncio.sleep(2.0)
    probes = await _probe(base, film)
    still_open = await idle
    await asyncio.gather(*slow)
    return {"idle": args.idle, "slow": args.slow, "idle_open_after_9s": still_open,
            "probes": probes}


# --- predict -------------------------------------------------------------------------------


def predict_one(args, path: Path, out: Path) -> tuple[dict, float, int]:
    cmd = [sys.executable, "-m", "pneumoscope", "predict", str(path), "--run", str(args.run)]
    cmd += ["--out", str(out), "--no-progress"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env_for(args), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    row = {"status": f"exit {os.waitstatus_to_exitcode(status)}", "error": ""}
    if out.exists():
        import csv

        with open(out, newline="") as fh:
            rows = list(csv.DictReader(fh))
        if rows:
            row = {"status": rows[0]["status"], "error": rows[0].get("error", "")}
    return row, seconds, usage.ru_maxrss * 1024


def predict_payloads(args, payloads, work: Path) -> list[dict]:
    _, _, base_rss = predict_one(args, FILM, work / "base.csv")
    rows = []
    for p in payloads:
        path = work / f"{p.name}{p.suffix}"
        path.write_bytes(p.data)
        row, seconds, rss = predict_one(args, path, work / f"{p.name}.csv")
        rows.append(
            {"payload": p.name, "status": row["status"], "error": row["error"][:160],
             "seconds": round(seconds, 2), "peak_growth_mib": round((rss - base_rss) / 2**20, 1)}
        )
        print(f"  predict {p.name}: {row['status']} {seconds:.1f} s "
              f"{rows[-1]['peak_growth_mib']} MiB", flush=True)
        path.unlink()
    return rows


# --- the log -------------------------------------------------------------------------------


def log_check(log_path: Path, payloads) -> dict:
    text = log_path.read_bytes()
    names = [p.name.encode() for p in payloads]
    return {
        "bytes": len(text),
        "lines": text.count(b"\n"),
        "tracebacks": text.count(b"Traceback"),
        "patient_marker": text.count(PATIENT_MARKER.encode()),
        "payload_names": sum(text.count(n) for n in names),
    }


def table(result: dict) -> str:
    lines = [f"## {result['label']} ({result['machine']['cpu_model']})", "",
             "| payload | bytes | serve status | s | peak growth MiB | predict row | s | "
             "peak growth MiB |", "|---|---:|---|---:|---:|---|---:|---:|"]
    pred = {r["payload"]: r for r in result.get("predict", [])}
    for r in result["serve"]:
        q = pred.get(r["payload"], {})
        lines.append(
            f"| {r['payload']} | {r['bytes']:,} | {r['status']} | {r['seconds']} | "
            f"{r['peak_growth_mib']} | {q.get('status', '-')} | {q.get('seconds', '-')} | "
            f"{q.get('peak_growth_mib', '-')} |"
        )
    lock = result["lockout"]
    worst = {k: max(p[k]["seconds"] for p in lock["probes"]) for k in ("healthz", "predict")}
    codes = {k: sorted({str(p[k]["status"]) for p in lock["probes"]}) for k in worst}
    lines += ["", f"With {lock['idle']} idle connections and {lock['slow']} uploads at "
              f"1 byte/s: /healthz {codes['healthz']} in at most {worst['healthz']} s, a real "
              f"prediction {codes['predict']} in at most {worst['predict']} s; idle connections "
              f"still open after 9 s: {lock['idle_open_after_9s']}; "
              f"{lock['log_bytes']:,} bytes of server log meanwhile.",
              f"Server log: {result['log']}"]
    return "\n".join(lines)


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU"
    names = [line.split(":", 1)[1].strip() for line in text.splitlines() if "model name" in line]
    return names[0] if names else "unknown CPU"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    load_before = os.getloadavg()
    payloads = all_payloads()
    film = FILM.read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        log_path = work / "server.log"
        serve_rows = serve_payloads(args, log_path, work / "audit.jsonl", payloads)
        with server(args, log_path, work / "audit.jsonl") as (_, base, port):
            send(base, film)  # warm
            logged = log_path.stat().st_size
            lock = asyncio.run(lockout(base, port, args, film))
            time.sleep(2)
            lock["log_bytes"] = log_path.stat().st_size - logged
        result = {
            "label": args.label,
            "machine": {**record.machine(load_before), "cpu_model": cpu_model()},
            "method": record.method(__doc__),
            "serve": serve_rows,
            "lockout": lock,
            "log": log_check(log_path, payloads),
        }
        if not args.skip_predict:
            result["predict"] = predict_payloads(args, payloads, work)
    print(table(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    previous[args.label] = result
    args.out.write_text(json.dumps(previous, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
