"""The Ray engine as a user runs it on a cluster: a head node started with `ray start --head`
(a separate process, as on a cluster's head machine), then `data prepare` and `predict`
from the command line with `--engine ray --ray-address HOST:PORT`. Both must give the local
engine's rows on real films, bad files included; the cluster is stopped afterwards.

Ray's processes listen on every interface (Ray offers no loopback-only mode: it replaces
127.0.0.1 by the machine's address); what guards them is Ray's token authentication, on
by default since Ray 2.59 for the clusters it starts: the head writes its token to
~/.ray/auth_token, and a driver given the address sends it only with RAY_AUTH_MODE=token,
as a user sets it. Without it, the connection is refused and the command says what to do
in one line."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers import REPO, linked_kaggle_slice, run_cli

RUN_V1 = REPO / "tests" / "fixtures" / "run_v1"
START_TIMEOUT_S = 90
TOKEN = {"RAY_AUTH_MODE": "token"}  # the head's token is in ~/.ray/auth_token


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), 1.0):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def head_node():
    """`ray start --head --block` on 127.0.0.1 in its own process group and temp folder;
    yields HOST:PORT; the group is terminated afterwards (no `ray stop`, which would stop
    every Ray process on the machine)."""
    ray_cli = Path(sys.executable).parent / "ray"
    assert ray_cli.exists(), "the ray extra is not installed: pip install -e '.[dev,ray]'"
    port = _free_port()
    temp = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray's socket paths are bounded
    log = open(Path(temp) / "head.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            str(ray_cli),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=2",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={temp}",
            f"--object-store-memory={300 * 2**20}",
        ],  # fmt: skip
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "RAY_ADDRESS": ""},
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _answers(port):
            assert proc.poll() is None, (Path(temp) / "head.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the Ray head node did not start"
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def films(shared_data, tmp_path_factory):
    """24 real films in the Kaggle layout (links), a truncated JPEG and a text file named
    .png among them."""
    root = tmp_path_factory.mktemp("head_src") / "chest_xray"
    return linked_kaggle_slice(shared_data / "chest_xray_224", root, {"train": 8, "test": 4}, 31)


def _cli_ok(*args: str) -> None:
    r = run_cli(*args, env=TOKEN)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]


@pytest.mark.realdata
def test_data_prepare_on_a_head_node_gives_the_local_cache(head_node, films, tmp_path):
    common = ["data", "prepare", "--source", str(films), "--img-size", "64", "--seed", "0"]
    _cli_ok(*common, "--out", str(tmp_path / "local"))
    _cli_ok(*common, "--out", str(tmp_path / "ray"), "--engine", "ray",
            "--ray-address", head_node)  # fmt: skip
    for table in ("manifest.csv", "rejected.csv", "duplicates.csv"):
        local, ray = tmp_path / "local" / table, tmp_path / "ray" / table
        assert local.exists() == ray.exists(), table
        if local.exists():
            pd.testing.assert_frame_equal(pd.read_csv(local), pd.read_csv(ray), obj=table)
    rejected = pd.read_csv(tmp_path / "ray" / "rejected.csv")
    assert len(rejected) == 2  # the truncated JPEG and the text file, with their reasons
    a = (tmp_path / "local" / "images.npy").read_bytes()
    assert a == (tmp_path / "ray" / "images.npy").read_bytes()


@pytest.mark.realdata
def test_predict_on_a_head_node_gives_the_local_rows(head_node, films, tmp_path):
    run = tmp_path / "run_v1"
    shutil.copytree(RUN_V1, run)
    common = ["predict", "--run", str(run), str(films), "--batch-size", "8", "--no-progress"]
    r_local = run_cli(*common, "--out", str(tmp_path / "local.csv"))
    r_ray = run_cli(*common, "--out", str(tmp_path / "ray.csv"), "--engine", "ray",
                    "--ray-address", head_node, env=TOKEN)  # fmt: skip
    assert r_local.returncode == r_ray.returncode == 1, r_ray.stderr[-3000:]  # 2 bad files
    local, ray = pd.read_csv(tmp_path / "local.csv"), pd.read_csv(tmp_path / "ray.csv")
    assert list(ray.columns) == list(local.columns)
    for col in ("path", "status", "error", "label"):
        assert ray[col].fillna("").tolist() == local[col].fillna("").tolist(), col
    assert (ray["probability"] - local["probability"]).abs().max() <= 1e-5
    assert (ray["status"] == "error").sum() == 2


@pytest.mark.realdata
def test_without_the_token_mode_the_refusal_is_one_line_saying_what_to_set(
    head_node, films, tmp_path
):
    r = run_cli("data", "prepare", "--source", str(films), "--out", str(tmp_path / "x"),
                "--engine", "ray", "--ray-address", head_node,
                env={"RAY_AUTH_MODE": "", "RAY_AUTH_TOKEN": ""})  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"cannot connect to the Ray cluster at {head_node}" in errors[0]
    assert "RAY_AUTH_MODE=token" in errors[0] and "ray get-auth-token" in errors[0]
    assert not (tmp_path / "x" / "manifest.csv").exists()
