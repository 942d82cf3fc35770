"""`pneumoscope data download` and the no-argument quickstart as a user meets them: the real
command in a subprocess against a local HTTP server, one-line failures offline, fast."""

from __future__ import annotations

import socket
import subprocess
import time

import pytest

from tests.helpers import REPO, FileServer, medmnist_npz, mendeley_zip, run_cli

ZIP = "ChestXRay2017.zip"


@pytest.fixture(autouse=True)
def env(tmp_path, monkeypatch):
    """The subprocesses inherit a cache of the test's own and no proxy for 127.0.0.1."""
    monkeypatch.setenv("PNEUMOSCOPE_CACHE", str(tmp_path / "cache"))
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    for name in ("PNEUMOSCOPE_DOWNLOAD_BASE_URL", "PNEUMOSCOPE_DATA", "QUICK", "IMG_SIZE"):
        monkeypatch.delenv(name, raising=False)


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def one_error_line(r: subprocess.CompletedProcess, *fragments: str) -> str:
    assert r.returncode != 0, (r.stdout, r.stderr)
    assert "Traceback" not in r.stdout + r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def test_download_then_prepare_reads_the_folder_as_it_is(tmp_path, monkeypatch):
    with FileServer({ZIP: mendeley_zip(tmp_path / ZIP, {"train": 20, "test": 4})}) as srv:
        monkeypatch.setenv("PNEUMOSCOPE_DOWNLOAD_BASE_URL", srv.url)
        out = tmp_path / "pediatric"
        r = run_cli("data", "download", "pediatric", "--out", str(out), "--no-progress")
        assert r.returncode == 0, r.stderr
        assert r.stdout == f"{out}\n"  # the folder, alone on stdout, for scripts
        assert f"next: pneumoscope data prepare --source {out}" in r.stderr
        again = run_cli("data", "download", "pediatric", "--out", str(out))
        assert again.stdout == r.stdout and "already there" in again.stderr
        assert len(srv.requests) == 1
    work = tmp_path / "work"
    r = run_cli("data", "prepare", "--source", str(out), "--out", str(work), "--img-size", "32")
    assert r.returncode == 0, r.stderr
    md = (work / "data_report.md").read_text()
    assert "Licence: CC BY 4.0. Cite: Kermany D, Zhang K, Goldbaum M (2018)" in md
    assert "Grouping it allows: by patient" in md


def test_offline_download_is_one_line_within_seconds(monkeypatch):
    monkeypatch.setenv("PNEUMOSCOPE_DOWNLOAD_BASE_URL", closed_port_url())
    t0 = time.monotonic()
    r = run_cli("data", "download", "pneumoniamnist", "--size", "128")
    assert time.monotonic() - t0 < 20
    one_error_line(
        r,
        "refused the connection",
        "pneumoniamnist_128.npz by hand",
        "pneumoscope data download pneumoniamnist --size 128 --from FILE",
    )
    assert r.returncode == 2 and r.stdout == ""


def test_a_refusing_proxy_is_one_line(monkeypatch):
    with FileServer({}) as proxy:  # answers CONNECT with 501: the tunnel is refused
        for name in ("https_proxy", "HTTPS_PROXY"):
            monkeypatch.setenv(name, proxy.url)
        monkeypatch.setenv("PNEUMOSCOPE_DOWNLOAD_BASE_URL", "https://files.example.invalid")
        r = run_cli("data", "download", "pediatric")
    one_error_line(r, "the proxy refused the connection to files.example.invalid", "by hand")


def test_a_checksum_mismatch_is_one_line(tmp_path, monkeypatch):
    name = "pneumoniamnist_64.npz"
    with FileServer({name: medmnist_npz(tmp_path / name, px=64)}) as srv:
        monkeypatch.setenv("PNEUMOSCOPE_DOWNLOAD_BASE_URL", srv.url)
        r = run_cli("data", "download", "pneumoniamnist", "--no-progress")
    one_error_line(r, "checksum mismatch for pneumoniamnist_64.npz", "never used")


def test_rsna_prints_the_kaggle_steps_and_the_layout():
    r = run_cli("data", "download", "rsna")
    assert r.returncode == 0, r.stderr
    assert "kaggle competitions download -c rsna-pneumonia-detection-challenge -p " in r.stdout
    assert "stage_2_train_images/<patientId>.dcm" in r.stdout


def test_download_help_has_examples():
    r = run_cli("data", "download", "--help")
    assert r.returncode == 0 and "Example" in r.stdout
    assert "pneumoscope data download pneumoniamnist --size 128" in r.stdout


@pytest.mark.parametrize("quick", ["", "1"], ids=["pediatric", "quick"])
def test_quickstart_without_data_or_network_fails_in_one_line(tmp_path, monkeypatch, quick):
    monkeypatch.setenv("PNEUMOSCOPE_DOWNLOAD_BASE_URL", closed_port_url())
    monkeypatch.setenv("PNEUMOSCOPE_NO_SETUP", "1")  # the environment is already installed
    monkeypatch.setenv("QUICK", quick)
    t0 = time.monotonic()
    r = subprocess.run(
        ["bash", str(REPO / "scripts" / "quickstart.sh")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert time.monotonic() - t0 < 20
    name = "pneumoniamnist_64.npz" if quick else ZIP
    one_error_line(r, f"download {name} by hand", "--from FILE")
    assert r.stdout == ""  # nothing ran after the download
