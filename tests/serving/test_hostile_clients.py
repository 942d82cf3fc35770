"""The real server against hostile clients: idle sockets, slow uploads, a client that goes
away mid-upload, a forged X-Forwarded-For, and hostile files (bombs, polyglots) from
``bench/hostile_payloads.py``, each answered 4xx with bounded memory while the server
keeps serving, and nothing of the requests in its log. Also TLS."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from bench.hostile import Sampler
from bench.hostile_payloads import PATIENT_MARKER, all_payloads
from tests.helpers import REPO
from tests.serving.conftest import RUN_V1

GIB = 2**30
ANSWER_S = 10  # every hostile request is answered within this (the client's time limit)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def _server(tmp: Path, *flags: str, scheme: str = "http", verify=True):
    port = _free_port()
    log = tmp / f"server-{port}.log"
    cmd = [sys.executable, "-m", "pneumoscope", "serve", "--run", str(RUN_V1)]
    cmd += ["--port", str(port), "--audit-log", str(tmp / "audit.jsonl"), *flags]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=out)
    base = f"{scheme}://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"{base}/readyz", timeout=2, verify=verify).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.2)
        yield proc, base, port, log
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture(scope="module")
def hostile_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    flags = ("--header-timeout", "3", "--body-timeout", "4")
    with _server(tmp, *flags) as (proc, base, port, log):
        yield proc, base, port, log, tmp


async def _idle(port: int, n: int) -> list:
    return [await asyncio.open_connection("127.0.0.1", port) for _ in range(n)]


async def _slow_upload(port: int, seconds: float) -> bytes:
    """Headers, then a 100 kB body at one byte per second; what the server answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /v1/predict HTTP/1.1\r\nHost: localhost\r\n"
        b"Content-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n"
    )
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end and not reader.at_eof():
            writer.write(b"\xff")
            await writer.drain()
            await asyncio.sleep(1.0)
    except ConnectionError:
        pass
    answer = await reader.read(200)
    writer.close()
    return answer


async def _lockout(base: str, port: int, film: bytes) -> dict:
    idle = await _idle(port, 300)
    slow = [asyncio.create_task(_slow_upload(port, 6)) for _ in range(32)]
    await asyncio.sleep(1.0)
    async with httpx.AsyncClient(timeout=ANSWER_S) as c:
        health = await c.get(f"{base}/healthz")
        predicted = await c.post(f"{base}/v1/predict", content=film)
    answers = await asyncio.gather(*slow)
    await asyncio.sleep(1.0)  # past the 3 s header deadline since they connected
    closed = sum(reader.at_eof() for reader, _ in idle)
    for _, writer in idle:
        writer.close()
    return {"health": health, "predicted": predicted, "answers": answers, "closed": closed}


def test_slow_and_idle_clients_lock_no_one_out(hostile_server, films):
    _, base, port, log, _ = hostile_server
    got = asyncio.run(_lockout(base, port, films[0].read_bytes()))
    assert got["health"].status_code == 200
    assert got["predicted"].status_code == 200 and got["predicted"].json()["status"] == "ok"
    assert all(a.startswith(b"HTTP/1.1 408") for a in got["answers"])  # body deadline: 4 s
    assert got["closed"] == 300  # header deadline: 3 s


def test_a_client_leaving_mid_upload_is_one_line(hostile_server):
    _, base, port, log, tmp = hostile_server

    async def leave() -> None:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /v1/predict HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5000\r\n\r\n"
        )
        writer.write(b"\xff" * 100)
        await writer.drain()
        await asyncio.sleep(0.3)
        writer.close()

    asyncio.run(leave())
    time.sleep(0.5)
    assert httpx.get(f"{base}/healthz").status_code == 200
    text = log.read_text()
    assert text.count("client disconnected during the upload") == 1
    assert "Traceback" not in text
    assert json.loads((tmp / "audit.jsonl").read_text().splitlines()[-1])["http_status"] == 499


def test_forwarded_for_is_not_believed_without_a_trusted_proxy(hostile_server, films):
    _, base, _, _, tmp = hostile_server
    r = httpx.post(
        f"{base}/v1/predict",
        content=films[1].read_bytes(),
        headers={"X-Forwarded-For": "10.66.66.66"},
        timeout=ANSWER_S,
    )
    assert r.status_code == 200
    last = json.loads((tmp / "audit.jsonl").read_text().splitlines()[-1])
    assert last["client"] == "127.0.0.1"


@pytest.mark.parametrize("payload", all_payloads(), ids=lambda p: p.name)
def test_hostile_files_are_refused_with_bounded_memory(hostile_server, payload, films):
    proc, base, _, _, _ = hostile_server
    sampler = Sampler(proc.pid)
    try:
        with sampler.window() as mem:
            r = httpx.post(f"{base}/v1/predict", content=payload.data, timeout=ANSWER_S)
    finally:
        sampler.stop()
    if payload.decodes:
        assert r.status_code == 200, r.text
    else:
        assert 400 <= r.status_code < 500, r.text
        assert r.json()["error"], r.text  # one clear reason
    assert mem["peak_growth_mib"] * 2**20 < GIB
    ok = httpx.post(f"{base}/v1/predict", content=films[0].read_bytes(), timeout=ANSWER_S)
    assert ok.status_code == 200  # and it keeps serving


def test_the_log_holds_no_request_data(hostile_server):
    """Runs after the others in this module: the whole corpus has been through."""
    _, _, _, log, _ = hostile_server
    text = log.read_text()
    assert "Traceback" not in text and PATIENT_MARKER not in text
    assert not any(p.name in text for p in all_payloads())


def test_tls(tmp_path, films):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    tls = ("--tls-cert", str(cert), "--tls-key", str(key))
    with _server(tmp_path, *tls, scheme="https", verify=False) as (_, base, _, _):
        r = httpx.get(f"{base}/healthz", verify=False)
        assert r.status_code == 200 and "max-age" in r.headers["strict-transport-security"]
        with pytest.raises(httpx.TransportError):
            httpx.get(base.replace("https", "http") + "/healthz", timeout=5)
