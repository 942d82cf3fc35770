"""`data download`'s real code against a local HTTP server started by the test: resume after
a dropped connection, checksums, server errors, offline, ``--from``, idempotence, and an
unpack that is all or nothing. Nothing here reaches the internet."""

from __future__ import annotations

import dataclasses
import json
import re
import socket
import time
import zipfile
from pathlib import Path

import pytest

from pneumoscope.core.errors import UserError
from pneumoscope.data.public import catalog, fetch
from pneumoscope.data.public.download import download, kaggle_steps
from pneumoscope.data.public.fetch import md5_of
from pneumoscope.data.sources import detect_layout, read_source
from tests.helpers import FileServer, medmnist_npz, mendeley_zip

ZIP = "ChestXRay2017.zip"
NPZ = "pneumoniamnist_64.npz"


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """A cache of the test's own; the local server is never reached through a proxy."""
    monkeypatch.setenv("PNEUMOSCOPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.delenv("PNEUMOSCOPE_DOWNLOAD_BASE_URL", raising=False)
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("published")
    return {ZIP: mendeley_zip(d / ZIP), NPZ: medmnist_npz(d / NPZ, px=64)}


@pytest.fixture
def server(files):
    with FileServer(files) as srv:
        yield srv


@pytest.fixture
def published_md5(files, monkeypatch) -> str:
    """The catalog lists the test's .npz as PneumoniaMNIST at 64 px (its MD5 published)."""
    md5 = md5_of_bytes(files[NPZ])
    ps = catalog.SETS["pneumoniamnist"]
    rf = dataclasses.replace(ps.files["64"], md5=md5)
    monkeypatch.setitem(
        catalog.SETS, ps.name, dataclasses.replace(ps, files={**ps.files, "64": rf})
    )
    return md5


def md5_of_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.md5(data).hexdigest()


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens: connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and text
    return text


def test_pediatric_lands_in_a_folder_prepare_reads_with_its_licence(server, files, cache):
    ready = download("pediatric", base_url=server.url, progress=False)
    assert ready.path == cache / "datasets" / "pediatric" and ready.fresh
    assert (cache / "downloads" / ZIP).read_bytes() == files[ZIP]
    assert detect_layout(ready.path) == "class-folders"
    read = read_source("pediatric", ready.path)
    assert len(read.rows) == 18  # 6 + 6 train, 3 + 3 test
    assert {r.split for r in read.rows} == {"train", "test"}
    assert not (ready.path / "__MACOSX").exists()  # macOS debris is not unpacked
    marker = json.loads((ready.path / catalog.MARKER).read_text())
    assert marker["licence"] == "CC BY 4.0" and "rscbjbr9sj.2" in marker["citation"]
    assert marker["md5"] == md5_of_bytes(files[ZIP])
    assert catalog.identify(ready.path / "chest_xray").name == "pediatric"


def test_a_dropped_connection_resumes_with_a_range_request(server, files, cache):
    server.drops[ZIP] = [1000]  # the first answer stops after 1000 bytes
    download("pediatric", base_url=server.url, progress=False)
    assert server.requests == [(ZIP, ""), (ZIP, "bytes=1000-")]
    assert (cache / "downloads" / ZIP).read_bytes() == files[ZIP]


def test_an_interrupted_download_keeps_its_part_and_the_next_call_resumes(server, files, cache):
    server.drops[ZIP] = [500] * fetch.ATTEMPTS  # every attempt of the first call is cut
    with pytest.raises(UserError) as exc:
        download("pediatric", base_url=server.url, progress=False)
    msg = one_line(exc)
    assert "interrupted" in msg and "run the command again to resume" in msg
    part = cache / "downloads" / (ZIP + ".part")
    assert part.read_bytes() == files[ZIP][: 500 * fetch.ATTEMPTS]
    assert not (cache / "downloads" / ZIP).exists()  # a partial file is never used
    assert not (cache / "datasets" / "pediatric").exists()
    ready = download("pediatric", base_url=server.url, progress=False)
    assert server.requests[-1] == (ZIP, f"bytes={500 * fetch.ATTEMPTS}-")
    assert (cache / "downloads" / ZIP).read_bytes() == files[ZIP] and not part.exists()
    assert read_source("p", ready.path).rows


def test_a_server_that_ignores_range_sends_the_whole_file_again(server, files, cache):
    server.ignore_range = True
    server.drops[ZIP] = [700]
    download("pediatric", base_url=server.url, progress=False)
    assert server.requests == [(ZIP, ""), (ZIP, "bytes=700-")]
    assert (cache / "downloads" / ZIP).read_bytes() == files[ZIP]  # not 700 bytes twice


def test_a_checksum_mismatch_is_one_line_and_the_file_is_never_used(server, files, cache):
    # the test's .npz is not MedMNIST's: its MD5 differs from the one MedMNIST publishes
    with pytest.raises(UserError) as exc:
        download("pneumoniamnist", base_url=server.url, progress=False)
    msg = one_line(exc)
    assert "checksum mismatch" in msg and "8f4eceb4ccffa70c672198ea285246c6" in msg
    assert not (cache / "downloads" / NPZ).exists()
    assert (cache / "downloads" / (NPZ + ".mismatch")).read_bytes() == files[NPZ]
    assert not (cache / "datasets" / "pneumoniamnist_64").exists()
    with pytest.raises(UserError, match="checksum mismatch"):  # the next call starts afresh
        download("pneumoniamnist", base_url=server.url, progress=False)
    assert server.requests == [(NPZ, ""), (NPZ, "")]


def test_the_published_md5_lets_the_npz_in(server, published_md5, cache):
    ready = download("pneumoniamnist", size=64, base_url=server.url, progress=False)
    assert ready.path == cache / "datasets" / "pneumoniamnist_64"
    assert md5_of(ready.path / NPZ) == published_md5
    assert json.loads((ready.path / catalog.MARKER).read_text())["variant"] == "64"
    assert detect_layout(ready.path) == "medmnist"


@pytest.mark.parametrize("status", [404, 500])
def test_a_server_error_is_one_line_with_the_manual_way(server, cache, status):
    server.status[ZIP] = status
    with pytest.raises(UserError) as exc:
        download("pediatric", base_url=server.url, progress=False)
    msg = one_line(exc)
    assert f"answered HTTP {status}" in msg
    assert f"put it at {cache / 'downloads' / ZIP}" in msg and "--from FILE" in msg
    assert "https://data.mendeley.com/datasets/rscbjbr9sj/2" in msg
    assert not list((cache / "downloads").iterdir())


@pytest.mark.parametrize(
    "url, said",
    [
        (None, "refused the connection"),  # a closed local port
        ("http://nonexistent.invalid/", "cannot resolve nonexistent.invalid"),  # DNS failure
    ],
)
def test_offline_fails_fast_saying_what_to_fetch_by_hand(cache, url, said):
    t0 = time.monotonic()
    with pytest.raises(UserError) as exc:
        download("pediatric", base_url=url or closed_port_url(), progress=False)
    assert time.monotonic() - t0 < 20
    msg = one_line(exc)
    assert said in msg and "by hand" in msg and f"put it at {cache / 'downloads' / ZIP}" in msg


def test_a_silent_host_is_given_up_after_the_deadline(cache, monkeypatch):
    monkeypatch.setattr(fetch, "CONNECT_DEADLINE_S", 1.0)
    with socket.socket() as listener:  # accepts connections (the backlog), never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        t0 = time.monotonic()
        with pytest.raises(UserError) as exc:
            download("pediatric", base_url=url, progress=False)
    assert time.monotonic() - t0 < 5
    assert "no answer from 127.0.0.1" in one_line(exc)


def test_from_file_needs_no_network(files, tmp_path, cache):
    archive = tmp_path / "elsewhere.zip"
    archive.write_bytes(files[ZIP])
    ready = download("pediatric", tmp_path / "ped", from_file=archive, base_url=closed_port_url())
    assert ready.path == tmp_path / "ped" and read_source("p", ready.path).rows
    assert json.loads((ready.path / catalog.MARKER).read_text())["from"] == str(archive)
    assert not (cache / "downloads").exists()


def test_from_a_wrong_or_damaged_file_leaves_nothing_behind(files, tmp_path):
    npz = tmp_path / NPZ
    npz.write_bytes(files[NPZ])  # a zip too, but without the class folders
    with pytest.raises(UserError, match="is not the pediatric set: no NORMAL/ and PNEUMONIA/"):
        download("pediatric", tmp_path / "ped", from_file=npz, progress=False)
    cut = tmp_path / "cut.zip"
    cut.write_bytes(files[ZIP][: len(files[ZIP]) // 2])
    with pytest.raises(UserError, match="not a complete, undamaged zip"):
        download("pediatric", tmp_path / "ped", from_file=cut, progress=False)
    left = sorted(p.name for p in tmp_path.iterdir() if p.name != "cache")
    assert left == ["cut.zip", NPZ]  # no half-unpacked folder
    with pytest.raises(UserError, match="is a folder"):
        download("pediatric", tmp_path / "ped", from_file=tmp_path)


def test_a_damaged_member_is_caught_while_unpacking(files, tmp_path):
    with zipfile.ZipFile(tmp_path / "ok.zip", "w") as zf:  # one stored member to damage
        zf.writestr("chest_xray/train/NORMAL/IM-0001-0001.jpeg", b"x" * 4000)
    data = bytearray((tmp_path / "ok.zip").read_bytes())
    data[100] ^= 0xFF  # inside the stored member's bytes
    bad = tmp_path / "bad.zip"
    bad.write_bytes(bytes(data))
    with pytest.raises(UserError, match="Bad CRC-32"):
        download("pediatric", tmp_path / "ped", from_file=bad, progress=False)
    assert not (tmp_path / "ped").exists() and not (tmp_path / ".ped.unpacking").exists()


def test_from_the_npz_of_another_size_names_the_size(files, tmp_path, monkeypatch):
    npz = tmp_path / "some.npz"
    npz.write_bytes(files[NPZ])
    monkeypatch.setitem(catalog._MEDMNIST_MD5, "128", md5_of_bytes(files[NPZ]))
    with pytest.raises(UserError, match="PneumoniaMNIST at 128 px: add --size 128"):
        download("pneumoniamnist", from_file=npz, size=64)


def test_a_second_call_does_nothing_and_needs_no_network(server, files, cache):
    first = download("pediatric", base_url=server.url, progress=False)
    stamp = (first.path / catalog.MARKER).stat().st_mtime_ns
    again = download("pediatric", base_url=closed_port_url(), progress=False)
    assert again.path == first.path and not again.fresh
    assert len(server.requests) == 1
    assert (first.path / catalog.MARKER).stat().st_mtime_ns == stamp


def test_a_file_put_in_the_cache_by_hand_is_used(files, cache):
    (cache / "downloads").mkdir(parents=True)
    (cache / "downloads" / ZIP).write_bytes(files[ZIP])
    ready = download("pediatric", base_url=closed_port_url(), progress=False)
    assert read_source("p", ready.path).rows


def test_out_never_overwrites_a_folder_of_the_user(server, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="is not empty"):
        download("pediatric", mine, base_url=server.url, progress=False)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    (tmp_path / "empty").mkdir()  # an empty folder is fine
    assert download("pediatric", tmp_path / "empty", base_url=server.url, progress=False).fresh


def test_rsna_needs_kaggle_and_takes_the_competition_zip(tmp_path, cache):
    with pytest.raises(UserError) as exc:
        download("rsna")
    assert "kaggle competitions download -c rsna-pneumonia-detection-challenge" in one_line(exc)
    steps = kaggle_steps()
    assert f"-p {cache / 'downloads'}" in steps and "stage_2_train_labels.csv" in steps
    kaggle = tmp_path / "rsna-pneumonia-detection-challenge.zip"
    with zipfile.ZipFile(kaggle, "w") as zf:
        zf.writestr("stage_2_train_labels.csv", "patientId,x,y,width,height,Target\n")
        zf.writestr("stage_2_train_images/a.dcm", b"")
    ready = download("rsna", tmp_path / "rsna", from_file=kaggle)
    assert detect_layout(ready.path) == "rsna"
    assert catalog.identify(ready.path, "rsna").name == "rsna"


def test_unknown_names_and_sizes_are_one_line():
    with pytest.raises(UserError, match="unknown dataset 'mnist': choose one of pediatric"):
        download("mnist")
    with pytest.raises(UserError, match=re.escape("choose 28 | 64 | 128 | 224")):
        download("pneumoniamnist", size=100)
    with pytest.raises(UserError, match="--size applies to pneumoniamnist only"):
        download("pediatric", size=64)


def test_a_second_pneumoscope_fetching_the_same_file_is_told_to_wait(server, cache):
    with fetch.locked(cache / "locks" / f"{ZIP}.lock"), pytest.raises(UserError) as exc:
        download("pediatric", base_url=server.url, progress=False)
    assert "another pneumoscope is fetching this file" in one_line(exc)
    assert server.requests == []
    assert download("pediatric", base_url=server.url, progress=False).fresh  # lock released
