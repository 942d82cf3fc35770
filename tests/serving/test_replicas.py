"""`serve --workers N`: replicas on one socket, each with its own model, supervised."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import httpx

from tests.helpers import REPO
from tests.serving.conftest import RUN_V1
from tests.serving.test_server_process import _free_port, _wait_ready


def _replica_pids(log: str) -> list[int]:
    return [int(p) for p in re.findall(r"Started server process \[(\d+)\]", log)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_for(predicate, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.3)


def test_two_replicas_answer_alike_and_a_dead_one_is_replaced(films, tmp_path):
    port = _free_port()
    log_path, audit = tmp_path / "serve.log", tmp_path / "audit.jsonl"
    cmd = [sys.executable, "-m", "pneumoscope", "serve", "--run", str(RUN_V1), "--port",
           str(port), "--workers", "2", "--audit-log", str(audit)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with log_path.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_ready(base, proc)
        _wait_for(lambda: len(_replica_pids(log_path.read_text())) == 2)
        first = _replica_pids(log_path.read_text())
        data = films[0].read_bytes()
        answers = [httpx.post(f"{base}/v1/predict", content=data, timeout=60) for _ in range(6)]
        assert {r.status_code for r in answers} == {200}
        assert len({r.json()["probability"] for r in answers}) == 1  # one model, N copies
        os.kill(first[0], signal.SIGKILL)
        _wait_for(lambda: len(_replica_pids(log_path.read_text())) == 3)
        assert (
            "replica 0 ended" in log_path.read_text()
            or "ended (exit code -9)" in log_path.read_text()
        )
        r = httpx.post(f"{base}/v1/predict", content=data, timeout=60)
        assert r.status_code == 200 and r.json()["probability"] == answers[0].json()["probability"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    replicas = _replica_pids(log_path.read_text())
    assert not any(_alive(p) for p in replicas)  # SIGTERM stopped every replica
    lines = [json.loads(x) for x in audit.read_text().splitlines()]
    assert len(lines) == 7 and {x["status"] for x in lines} == {"ok"}  # one audit log


def test_workers_must_be_at_least_one():
    from tests.helpers import run_cli

    r = run_cli("serve", "--run", str(RUN_V1), "--workers", "0")
    assert r.returncode == 2 and "--workers must be at least 1" in r.stderr
