"""A real PACS for the tests: Orthanc with its DICOMweb plugin, started once per session.

Orthanc runs as a subprocess from a JSON config in a temporary folder (its database and
files there too), on a free HTTP port, with its DICOM (DIMSE) listener off, refusing
non-local clients and asking for a user and password. The Debian packages ``orthanc`` and
``orthanc-dicomweb`` provide it; a missing binary is a failure that says what to install,
never a skip. A system service the package may have started is left alone (other ports).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

_INSTALL = "apt-get install -y orthanc orthanc-dicomweb"
_PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc", "/usr/local/share/orthanc")
_START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Orthanc:
    """A running Orthanc: ``url`` is its REST root, ``dicomweb`` its DICOMweb root."""

    url: str
    dicomweb: str
    user: str
    password: str
    log: Path
    start_seconds: float

    @property
    def auth(self) -> tuple[str, str]:
        return (self.user, self.password)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _orthanc_binary() -> str:
    found = shutil.which("Orthanc") or next(
        (p for p in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc") if Path(p).is_file()), None
    )
    if not found:
        pytest.fail(f"Orthanc is not installed; the PACS tests need it: {_INSTALL}")
    return found


def _dicomweb_plugin() -> str:
    for folder in _PLUGIN_DIRS:
        hits = sorted(Path(folder).glob("libOrthancDicomWeb.so*")) if Path(folder).is_dir() else []
        if hits:
            return str(hits[0])
    pytest.fail(f"the Orthanc DICOMweb plugin is not installed: {_INSTALL}")


def _config(root: Path, http_port: int, password: str) -> dict:
    storage = root / "storage"
    storage.mkdir()
    return {
        "Name": "pneumoscope-tests",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "HttpPort": http_port,
        # Orthanc 1.10 has no HTTP bind-address option: it listens on every interface but
        # refuses any client that is not on this machine, and asks for a password.
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {"pneumoscope": password},
        "DicomServerEnabled": False,  # no DIMSE listener at all
        "DicomPort": _free_port(),
        "WebDavEnabled": False,
        "SaveJobs": False,
        "HttpCompressionEnabled": False,
        "Plugins": [_dicomweb_plugin()],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
    }


def _wait_until_up(proc: subprocess.Popen, url: str, auth, log: Path) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            if requests.get(f"{url}/system", auth=auth, timeout=1).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
    pytest.fail(f"Orthanc did not answer GET /system within {_START_TIMEOUT_S:g} s:\n{tail}")


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory) -> Iterator[Orthanc]:
    """A fresh, empty Orthanc for this test session, stopped at the end."""
    binary = _orthanc_binary()
    root = tmp_path_factory.mktemp("orthanc")
    port, password = _free_port(), "pw-" + root.name
    config = root / "orthanc.json"
    config.write_text(json.dumps(_config(root, port, password), indent=2))
    log = root / "orthanc.log"
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen([binary, str(config)], stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_until_up(proc, url, ("pneumoscope", password), log)
        yield Orthanc(
            url, f"{url}/dicom-web", "pneumoscope", password, log, time.monotonic() - started
        )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
