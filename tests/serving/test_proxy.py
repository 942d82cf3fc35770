"""deploy/haproxy.cfg for real: Debian's HAProxy terminating TLS in front of two
`python -m pneumoscope serve` processes, as a hospital would run it (docs/deploy.md).

One test, because starting two services and a proxy is most of its cost: health checks on
/readyz, the same answer through the proxy as direct, both services used, the client's
address carried by X-Forwarded-For and believed only from the proxy, uploads over the cap
refused, nothing of a URL's query in the proxy's log, and a service killed without the
clients noticing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import httpx
import pytest

from tests.helpers import REPO
from tests.serving.conftest import RUN_V1
from tests.serving.test_server_process import _free_port

CONFIG = REPO / "deploy" / "haproxy.cfg"
HAPROXY = Path("/usr/sbin/haproxy")
CLIENT = "127.0.0.5"  # a second loopback address: a client the proxy is not
SPOOFED = "203.0.113.9"  # what a lying client claims to be (TEST-NET-3)
MAX_UPLOAD_MB = 1  # small, so the oversized bodies are quick to send


@pytest.fixture
def haproxy() -> str:
    """The HAProxy binary; missing is a failure, not a skip: CI must test the config."""
    found = str(HAPROXY) if HAPROXY.is_file() else shutil.which("haproxy")
    if not found:
        pytest.fail(
            "haproxy is not installed (/usr/sbin/haproxy): .ci/run installs it through "
            "scripts/test.sh (apt-get install haproxy), or run: sudo apt-get install haproxy"
        )
    return found


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for localhost and 127.0.0.1: (the certificate, the PEM HAProxy
    reads: certificate then key)."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is not installed: sudo apt-get install openssl")
    cert, key, pem = folder / "cert.pem", folder / "key.pem", folder / "haproxy.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    pem.write_bytes(cert.read_bytes() + key.read_bytes())
    pem.chmod(0o600)
    return cert, pem


def _serve(port: int, audit: Path, log: Path) -> subprocess.Popen:
    """One service as a hospital runs it behind the proxy; its own process group, so a
    kill takes its decoding workers too (a host that dies)."""
    cmd = [sys.executable, "-m", "pneumoscope", "serve", "--run", str(RUN_V1),
           "--port", str(port), "--trusted-proxy", "127.0.0.1", "--allowed-host", "localhost",
           "--max-upload-mb", str(MAX_UPLOAD_MB), "--audit-log", str(audit)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with log.open("wb") as out:
        return subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _haproxy_env(https: int, http: int, pem: Path, backends: list[int]) -> dict[str, str]:
    env = {
        **os.environ,
        "PNEUMOSCOPE_HTTPS_BIND": f"127.0.0.1:{https}",
        "PNEUMOSCOPE_HTTP_BIND": f"127.0.0.1:{http}",
        "PNEUMOSCOPE_TLS_PEM": str(pem),
        "PNEUMOSCOPE_SERVER_1": f"127.0.0.1:{backends[0]}",
        "PNEUMOSCOPE_SERVER_2": f"127.0.0.1:{backends[1]}",
        "PNEUMOSCOPE_HOST_NAME": "localhost",
        "PNEUMOSCOPE_MAX_BODY_BYTES": str(MAX_UPLOAD_MB * 1024 * 1024),
    }
    if os.geteuid() != 0:  # chroot and the change of user need root
        env["PNEUMOSCOPE_UNPRIVILEGED"] = "1"
    return env


def _wait(predicate, what: str, logs: list[Path], procs=(), seconds: float = 60.0) -> None:
    """Until ``predicate()``; a process of ``procs`` that ends, or the time running out,
    fails with the logs' ends."""
    deadline = time.monotonic() + seconds
    while not predicate():
        ended = [p.args[1:4] for p in procs if p.poll() is not None]
        if ended or time.monotonic() > deadline:
            tails = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in logs)
            why = f"{ended} ended" if ended else "timed out"
            raise AssertionError(f"{why} waiting for {what}\n{tails}")
        time.sleep(0.3)


def _ready(url: str, **client) -> bool:
    try:
        with httpx.Client(trust_env=False, timeout=2, **client) as c:
            return c.get(url).status_code == 200
    except httpx.TransportError:
        return False


def _refused(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _audit(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _client_of(request_id: str, audits: list[Path]) -> str:
    (line,) = [x for p in audits for x in _audit(p) if x["request_id"] == request_id]
    return line["client"]


def _stop(proc: subprocess.Popen, group: bool) -> None:
    if proc.poll() is not None:
        return
    if group:
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL) if group else proc.kill()
        proc.wait(timeout=30)


@dataclass
class Service:
    port: int
    proc: subprocess.Popen
    audit: Path
    log: Path


@pytest.fixture
def two_services(tmp_path, haproxy):
    """Two services as a hospital runs them behind the proxy, ready (once HAProxy is known
    to be there: no minutes of loading for a test that would fail)."""
    services: list[Service] = []
    try:
        for i in (1, 2):
            port = _free_port()
            audit, log = tmp_path / f"audit{i}.jsonl", tmp_path / f"serve{i}.log"
            services.append(Service(port, _serve(port, audit, log), audit, log))
        for s in services:
            # Loading torch and the model: seconds on an idle machine, minutes on a busy one.
            ready = partial(_ready, f"http://127.0.0.1:{s.port}/readyz")
            _wait(ready, "a service", [s.log], [s.proc], seconds=900)
        yield services
    finally:
        for s in services:
            _stop(s.proc, group=True)


def test_haproxy_in_front_of_two_services(films, tmp_path, haproxy, two_services):
    cert, pem = _self_signed(tmp_path)
    services = [s.proc for s in two_services]
    ports = [s.port for s in two_services]
    audits = [s.audit for s in two_services]
    serve_logs = [s.log for s in two_services]
    https, http = _free_port(), _free_port()
    proxy_log = tmp_path / "haproxy.log"
    env = _haproxy_env(https, http, pem, ports)

    check = subprocess.run([haproxy, "-c", "-f", str(CONFIG)], env=env, capture_output=True)
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()

    proxy = None
    tls = ssl.create_default_context(cafile=str(cert))
    try:
        with proxy_log.open("wb") as out:
            proxy = subprocess.Popen(
                [haproxy, "-db", "-f", str(CONFIG)], env=env, stdout=out, stderr=subprocess.STDOUT
            )
        base = f"https://localhost:{https}"
        logs = [*serve_logs, proxy_log]
        _wait(lambda: _ready(f"{base}/readyz", verify=tls), "the proxy", logs, [proxy])
        c = httpx.Client(base_url=base, verify=tls, trust_env=False, timeout=60)

        # /readyz through the proxy, over TLS; the service knows the client used HTTPS
        # (X-Forwarded-Proto from its trusted proxy) and sends HSTS.
        r = c.get("/readyz")
        assert r.status_code == 200 and r.json()["status"] == "ready"
        assert r.headers["strict-transport-security"].startswith("max-age=")

        # Plain HTTP: a browser is redirected, an upload refused.
        plain = httpx.Client(base_url=f"http://127.0.0.1:{http}", trust_env=False, timeout=10)
        r = plain.get("/")
        assert r.status_code == 301 and r.headers["location"].startswith("https://")
        r = plain.post("/v1/predict", content=b"x")
        assert r.status_code == 403 and "https" in r.json()["error"]

        # A real film: the same answer through the proxy as straight from a service.
        data = films[0].read_bytes()
        direct = httpx.post(f"http://127.0.0.1:{ports[0]}/v1/predict", content=data, timeout=60)
        proxied = c.post("/v1/predict", content=data)
        assert direct.status_code == proxied.status_code == 200
        fields = ("status", "probability", "label", "threshold", "model_id", "ood", "sha256")
        assert {k: proxied.json()[k] for k in fields} == {k: direct.json()[k] for k in fields}

        # Spread over both services.
        before = [len(_audit(a)) for a in audits]
        answers = [c.post("/v1/predict", content=films[i % 4].read_bytes()) for i in range(6)]
        assert {r.status_code for r in answers} == {200}
        gained = [len(_audit(a)) - n for a, n in zip(audits, before, strict=True)]
        assert sum(gained) == 6 and min(gained) >= 1, gained

        # The client's address. From another loopback address with a forged
        # X-Forwarded-For: the proxy drops the forgery and names the real client, and the
        # services believe the proxy (127.0.0.1, --trusted-proxy).
        def from_client(url: str) -> httpx.Client:
            transport = httpx.HTTPTransport(verify=tls, local_address=CLIENT)
            return httpx.Client(base_url=url, transport=transport, trust_env=False, timeout=60)

        forged = {"X-Forwarded-For": SPOOFED, "X-Real-IP": SPOOFED, "Forwarded": f"for={SPOOFED}"}
        with from_client(f"https://127.0.0.1:{https}") as other:
            r = other.post("/v1/predict", content=data, headers=forged)
        assert r.status_code == 200
        assert _client_of(r.json()["request_id"], audits) == CLIENT
        # Straight to a service from that address: it is no trusted proxy, so the forgery
        # is not believed.
        with from_client(f"http://127.0.0.1:{ports[0]}") as other:
            r = other.post("/v1/predict", content=data, headers=forged)
        assert _client_of(r.json()["request_id"], audits) == CLIENT
        # From the proxy's own address it would be: that is why the services must be
        # reachable by the proxy only (docs/deploy.md).
        r = httpx.post(f"http://127.0.0.1:{ports[0]}/v1/predict", content=data, headers=forged)
        assert _client_of(r.json()["request_id"], audits) == SPOOFED

        # Uploads over the cap. Announced (Content-Length): the proxy refuses it and no
        # service sees it. Sent in chunks, of unknown size: the service refuses it.
        big = b"\0" * (MAX_UPLOAD_MB * 1024 * 1024 + 1)
        before = [len(_audit(a)) for a in audits]
        r = c.post("/v1/predict", content=big)
        assert r.status_code == 413 and "proxy" in r.json()["error"]
        assert [len(_audit(a)) for a in audits] == before
        chunks = (big[i : i + 65536] for i in range(0, len(big), 65536))
        r = c.post("/v1/predict", content=chunks)
        assert r.status_code == 413 and "--max-upload-mb" in r.json()["error"]
        refused = [x for a, n in zip(audits, before, strict=True) for x in _audit(a)[n:]]
        assert [x["http_status"] for x in refused] == [413]  # audited by the service

        # The proxy's log: the route, never a query string or a path that is no route.
        assert c.get("/readyz?patient=DOE%5EJOHN").status_code == 200
        assert c.get("/v1/DOE_JOHN").status_code == 404
        _wait(lambda: "GET other" in proxy_log.read_text(), "the log", logs, [proxy])
        text = proxy_log.read_text()
        assert "DOE" not in text and "POST /v1/predict HTTP" in text
        assert films[0].name not in text

        # A service dies (its whole process group, as a host would). Requests go on being
        # answered: before the health check notices (a refused connection is retried on
        # the other service) and after (it is out of the rotation). The requests start once
        # its port refuses connections: for a moment after the kill, the kernel can still
        # accept them for the dying process, and a request caught there is lost (as one in
        # flight is: docs/deploy.md).
        os.killpg(services[0].pid, signal.SIGKILL)
        services[0].wait(timeout=30)
        _wait(partial(_refused, ports[0]), "the dead service's port to refuse", logs)
        before = len(_audit(audits[1]))
        assert all(c.post("/v1/predict", content=data).status_code == 200 for _ in range(4))
        _wait(lambda: "app1 is DOWN" in proxy_log.read_text(), "the check", logs, [proxy])
        assert c.get("/readyz").status_code == 200
        assert all(c.post("/v1/predict", content=data).status_code == 200 for _ in range(6))
        assert len(_audit(audits[1])) - before == 10
        c.close()
    finally:
        if proxy is not None:
            _stop(proxy, group=False)
    for log in serve_logs:
        assert films[0].name not in log.read_text()  # the services' logs name no upload
