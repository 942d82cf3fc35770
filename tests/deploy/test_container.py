"""deploy/Containerfile for real: the base image built from Debian's packages
(scripts/build_base_image.sh), the service image built on it with Podman, and a container
started as a hospital would run it (docs/deploy.md, "The container image"): root
filesystem read-only, the run mounted read-only, the token as a mounted secret, the port
published on 127.0.0.1 only, the image's own user.

One test, because building the image is most of its cost: the container becomes healthy
through the image's HEALTHCHECK, answers a real film with a probability (and refuses a
request without the token), runs as no root, holds no torch, and writes neither its root
filesystem nor the run. Podman or debootstrap missing is a failure, not a skip: CI installs
them through scripts/test.sh.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.helpers import REPO
from tests.serving.test_server_process import _free_port

pytestmark = [pytest.mark.slow, pytest.mark.realdata]

CONF = REPO / "deploy" / "containers.conf"  # runc, cgroupfs, no default ulimits
BASE_IMAGE = "localhost/pneumoscope-base:bookworm"
IMAGE = "localhost/pneumoscope:test"
RUN_V1 = REPO / "tests" / "fixtures" / "run_v1"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")  # pip's trust behind a TLS proxy
HEALTHY_WITHIN_S = 180


def _env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(CONF)}


def _podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["podman", *args], env=_env(), capture_output=True, text=True, timeout=timeout
    )


def _image_id(name: str) -> str | None:
    res = _podman("image", "inspect", "--format", "{{.Id}}", name)
    return res.stdout.strip() if res.returncode == 0 else None


@pytest.fixture(scope="module")
def image() -> str:
    """The base image (once per machine) and the service image, built from this checkout."""
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    missing = [t for t in ("podman", "debootstrap") if shutil.which(t, path=path) is None]
    if missing:
        pytest.fail(
            f"{' and '.join(missing)} not installed: .ci/run installs them through "
            "scripts/test.sh, or run: sudo apt-get install podman debootstrap runc"
        )
    base = subprocess.run(
        ["bash", str(REPO / "scripts" / "build_base_image.sh"), BASE_IMAGE],
        env=_env(), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert base.returncode == 0, base.stderr[-3000:]
    before = _image_id(IMAGE)
    # --layers=false: no cached intermediate images pile up from one run to the next.
    cmd = ["build", "--format", "docker", "--layers=false", "--build-arg", f"BASE={BASE_IMAGE}",
           "-f", str(REPO / "deploy" / "Containerfile"), "-t", IMAGE]  # fmt: skip
    if CA_BUNDLE.is_file():
        cmd += ["--secret", f"id=ca-bundle,src={CA_BUNDLE}"]
    if os.environ.get("PIP_INDEX_URL"):
        cmd += ["--build-arg", f"PIP_INDEX_URL={os.environ['PIP_INDEX_URL']}"]
    started = time.monotonic()
    built = _podman(*cmd, str(REPO), timeout=1800)
    assert built.returncode == 0, (built.stdout + built.stderr)[-5000:]
    print(f"image built in {time.monotonic() - started:.0f} s")
    if before and before != _image_id(IMAGE):
        _podman("rmi", before)  # the previous build, now untagged; in use: left alone
    return IMAGE


@pytest.fixture
def exported(tmp_path) -> Path:
    """The committed v1 run exported to ONNX float32 by the training install, readable by
    the image's user (the folder is mounted read-only as it is)."""
    from pneumoscope.inference.export import export_onnx

    run = tmp_path / "run"
    shutil.copytree(RUN_V1, run)
    export_onnx(run)
    run.chmod(0o755)
    for f in run.iterdir():
        f.chmod(0o644)
    return run


def _state(name: str) -> dict:
    res = _podman("inspect", "--format", "{{json .State}}", name)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def _logs(name: str) -> str:
    res = _podman("logs", name)
    return (res.stdout + res.stderr)[-4000:]


def _wait_healthy(name: str, seconds: float) -> None:
    """`podman healthcheck run` (the image's HEALTHCHECK, run now: a host without systemd
    has no timer that runs it) until it passes; the container ending fails at once."""
    deadline = time.monotonic() + seconds
    while True:
        state = _state(name)
        if state["Status"] != "running":
            raise AssertionError(f"the container ended ({state['Status']}):\n{_logs(name)}")
        check = _podman("healthcheck", "run", name, timeout=60)
        if check.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"not healthy within {seconds:.0f} s: {check.stdout}{check.stderr}\n{_logs(name)}"
            )
        time.sleep(0.5)


def test_the_image_serves_a_film_read_only_unprivileged_without_torch(
    image, exported, shared_data, tmp_path
):
    token = secrets.token_hex(32)
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o644)  # the file as mounted: readable by the image's user
    film = sorted((shared_data / "chest_xray_224" / "test" / "PNEUMONIA").glob("*.jpeg"))[0]
    port = _free_port()
    name = f"pneumoscope-test-{uuid.uuid4().hex[:12]}"
    run_before = {p.name: p.stat().st_mtime_ns for p in exported.iterdir()}
    cmd = ["run", "--detach", "--name", name, "--read-only",
           "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
           "--volume", f"{exported}:/model:ro",
           "--volume", f"{token_file}:/run/secrets/pneumoscope-token:ro",
           # configured both ways: a variable (the port) and a flag after the image
           "--env", "PNEUMOSCOPE_PORT=9000",
           "--publish", f"127.0.0.1:{port}:9000", image, "--max-queue", "8"]  # fmt: skip
    try:
        started = time.monotonic()
        res = _podman(*cmd)
        assert res.returncode == 0, res.stderr
        _wait_healthy(name, HEALTHY_WITHIN_S)
        print(f"healthy {time.monotonic() - started:.1f} s after podman run")
        assert _state(name)["Health"]["Status"] == "healthy"
        assert _podman("port", name).stdout.strip() == f"9000/tcp -> 127.0.0.1:{port}"

        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, trust_env=False, timeout=60) as c:
            r = c.post("/v1/predict", content=film.read_bytes(),
                       headers={"Authorization": f"Bearer {token}"})  # fmt: skip
            assert r.status_code == 200, r.text
            answer = r.json()
            assert answer["status"] == "ok" and 0.0 <= answer["probability"] <= 1.0
            assert answer["label"] in ("NORMAL", "PNEUMONIA")
            assert c.post("/v1/predict", content=film.read_bytes()).status_code == 401

        uid = _podman("exec", name, "id", "-u")
        assert uid.returncode == 0 and uid.stdout.strip() not in ("", "0"), uid
        torch = _podman("exec", name, "python", "-c", "import torch")
        assert torch.returncode != 0 and "No module named 'torch'" in torch.stderr
        for path in ("/opt/pneumoscope/x", "/model/x", "/x"):
            touch = _podman("exec", name, "touch", path)
            assert touch.returncode != 0 and "Read-only file system" in touch.stderr, path
        assert _podman("exec", name, "touch", "/tmp/x").returncode == 0  # the tmpfs
        assert {p.name: p.stat().st_mtime_ns for p in exported.iterdir()} == run_before
    finally:
        _podman("rm", "--force", "--time", "10", name, timeout=120)
