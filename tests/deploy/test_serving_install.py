"""The serving install, built for real: the wheel with `[serve]` in a fresh virtual
environment, resolved from the package index (the versions of this environment as
constraints, so the two installs differ only in what the serving one leaves out). It has
no torch, and its service gives the training install's answers, heatmaps included."""

from __future__ import annotations

import base64
import importlib.metadata
import shutil
import socket
import subprocess
import sys
import time
import venv
from pathlib import Path

import httpx
import pytest

from tests.helpers import REPO

pytestmark = [pytest.mark.slow, pytest.mark.realdata]

TRAINING_ONLY = ("torch", "torchvision", "timm", "lightning", "pytorch_grad_cam", "onnxscript")


def _sh(*cmd, cwd: Path) -> subprocess.CompletedProcess:
    res = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=1200
    )
    assert res.returncode == 0, f"{cmd[:3]} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def _constraints(path: Path) -> Path:
    """This environment's versions, so the serving install resolves to the same ones."""
    pins = {
        d.metadata["Name"].lower(): d.version
        for d in importlib.metadata.distributions()
        if d.metadata["Name"] and d.metadata["Name"].lower() != "pneumoscope"
    }
    path.write_text("".join(f"{name}=={v}\n" for name, v in sorted(pins.items())))
    return path


@pytest.fixture(scope="module")
def serving_env(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("serving")
    tree = base / "tree"  # build from a copy: setuptools leaves build/ in the source folder
    ignore = shutil.ignore_patterns("*.egg-info", "__pycache__")
    shutil.copytree(REPO / "src", tree / "src", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, tree / name)
    _sh(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
        "-w", base / "dist", tree, cwd=base)  # fmt: skip
    [wheel] = (base / "dist").glob("pneumoscope-*.whl")
    env = base / "venv"
    venv.create(env, with_pip=True)
    _sh(env / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check",
        f"{wheel}[serve]", "-c", _constraints(base / "constraints.txt"), cwd=base)  # fmt: skip
    return env


def test_the_serving_install_has_no_training_stack(serving_env, tmp_path):
    for name in TRAINING_ONLY:
        res = subprocess.run([serving_env / "bin" / "python", "-c", f"import {name}"],
                             capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
        assert res.returncode != 0 and "ModuleNotFoundError" in res.stderr, name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(python: Path, run: Path, films: list[Path], backend: str, cwd: Path) -> list:
    """`pneumoscope serve` of ``python``'s install: each film's JSON answer with a heatmap."""
    port = _free_port()
    cmd = [python, "-m", "pneumoscope", "serve", "--run", run, "--backend", backend]
    proc = subprocess.Popen([str(c) for c in [*cmd, "--port", port]], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the server did not become ready"
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        url = f"{base}/v1/predict?heatmap=true"
        return [httpx.post(url, content=f.read_bytes(), timeout=120).json() for f in films]
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


@pytest.mark.parametrize("backend", ["onnx", "onnx-int8"])
def test_the_serving_install_answers_as_the_training_install(
    serving_env, exported_int8, films, backend, tmp_path
):
    jpegs = sorted(films.glob("*.jpeg"))
    full = _answers(Path(sys.executable), exported_int8, jpegs, backend, tmp_path)
    lean = _answers(serving_env / "bin" / "python", exported_int8, jpegs, backend, tmp_path)
    for a, b in zip(full, lean, strict=True):
        assert a["status"] == "ok" and a["heatmap_png"], a.get("error")
        a.pop("request_id"), b.pop("request_id")
        assert base64.b64decode(a.pop("heatmap_png")) == base64.b64decode(b.pop("heatmap_png"))
        assert a == b
