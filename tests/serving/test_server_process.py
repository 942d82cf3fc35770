"""The real command: `python -m pneumoscope serve` in a subprocess on a free local port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx

from tests.helpers import REPO, run_cli
from tests.serving.conftest import RUN_V1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(base: str, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("the server did not become ready")


def test_real_server_predicts_a_real_film(films, tmp_path):
    port = _free_port()
    cmd = [sys.executable, "-m", "pneumoscope", "serve", "--run", str(RUN_V1)]
    cmd += ["--port", str(port), "--audit-log", str(tmp_path / "audit.jsonl")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_ready(base, proc)
        r = httpx.post(f"{base}/v1/predict", content=films[0].read_bytes(), timeout=60)
        assert r.status_code == 200 and r.json()["status"] == "ok"
        assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert films[0].name.encode() not in err  # the server's log names no upload
    assert (tmp_path / "audit.jsonl").read_text().count("\n") == 1


def test_bad_run_folder_is_one_line(tmp_path):
    r = run_cli("serve", "--run", str(tmp_path / "nope"))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error:")
    assert "Traceback" not in r.stderr


def test_empty_token_file_is_one_line(tmp_path):
    (tmp_path / "token").write_text("  \n")
    r = run_cli("serve", "--run", str(RUN_V1), "--token-file", str(tmp_path / "token"))
    assert r.returncode == 2 and "token file" in r.stderr and "Traceback" not in r.stderr


def test_help_has_examples():
    r = run_cli("serve", "--help")
    assert r.returncode == 0 and "pneumoscope serve --run" in r.stdout
