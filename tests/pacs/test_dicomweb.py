"""DICOMweb against a real PACS (Orthanc, see conftest.py): find studies (QIDO-RS), fetch a
study's radiographs into a private folder (WADO-RS) with the pixels intact, store a result
back (STOW-RS) per instance, and every failure as one readable UserError line."""

from __future__ import annotations

import http.server
import re
import socket
import stat
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import highdicom as hd
import numpy as np
import pydicom
import pytest
import requests
from pydicom.filebase import DicomBytesIO
from pydicom.uid import generate_uid

from pneumoscope.core.errors import UserError
from pneumoscope.data.dicom import decode_dicom, is_dicom
from pneumoscope.pacs.dicomweb import (
    Credentials,
    DicomwebServer,
    InstanceInfo,
    Limits,
    connect,
    fetched_study,
    load_credentials,
    parse_date_range,
    parse_modalities,
)
from tests.helpers import CT_IMAGE, chest_xray_dataset, dicom_dataset

pytestmark = pytest.mark.realdata

NORMAL = "chest_xray_224/test/NORMAL/IM-0001-0001.jpeg"
PNEUMONIA = "chest_xray_224/test/PNEUMONIA/person100_bacteria_475.jpeg"
ADULT = "chest_xray_224/test/NORMAL/IM-0003-0001.jpeg"


def _upload(orthanc, ds) -> None:
    """Load the PACS through Orthanc's own REST API, independent of the code under test."""
    buf = DicomBytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    answer = requests.post(f"{orthanc.url}/instances", data=buf.getvalue(), auth=orthanc.auth)
    assert answer.ok, answer.text


def _gray(shared_data: Path, rel: str) -> np.ndarray:
    img = cv2.imread(str(shared_data / rel), cv2.IMREAD_GRAYSCALE)
    assert img is not None and img.shape == (224, 224)
    return img


@pytest.fixture(scope="module")
def pacs(orthanc, shared_data) -> SimpleNamespace:
    """Study A (2024-01-15): two frontal CR films (8-bit, and 12-bit in 16) and a CT slice;
    study B (2024-02-20): one DX film."""
    a, b = generate_uid(), generate_uid()
    normal, pneumonia = _gray(shared_data, NORMAL), _gray(shared_data, PNEUMONIA)
    deep = pneumonia.astype(np.uint16) * 16
    cr_series = generate_uid()
    cr1 = chest_xray_dataset(normal, a, cr_series, "CR", "20240115", 1)
    cr2 = chest_xray_dataset(deep, a, cr_series, "CR", "20240115", 2, "AP", bits_stored=12)
    ct = dicom_dataset(
        np.zeros((32, 32), np.int16) + 40,
        sop_class=CT_IMAGE,
        Modality="CT",
        PatientID="PAT-001",
        StudyInstanceUID=a,
        StudyDate="20240115",
        SeriesInstanceUID=generate_uid(),
        InstanceNumber=1,
    )
    dx = chest_xray_dataset(_gray(shared_data, ADULT), b, generate_uid(), "DX", "20240220")
    for ds in (cr1, cr2, ct, dx):
        _upload(orthanc, ds)
    pixels = {str(d.SOPInstanceUID): d.pixel_array for d in (cr1, cr2)}
    return SimpleNamespace(a=a, b=b, pixels=pixels, ct=str(ct.SOPInstanceUID), dx=dx)


@pytest.fixture
def server(orthanc, pacs):
    creds = Credentials("basic", orthanc.password, orthanc.user)
    with connect(orthanc.dicomweb, credentials=creds, timeout=(3, 30)) as srv:
        yield srv


def _ours(studies, pacs) -> list[str]:
    """The UIDs of this module's studies among the results, in result order."""
    return [s.study_uid for s in studies if s.study_uid in (pacs.a, pacs.b)]


# --- QIDO-RS ------------------------------------------------------------------------------


def test_orthanc_starts_quickly(orthanc):
    assert orthanc.start_seconds < 10


def test_find_a_study_by_uid(server, pacs):
    study = server.study(pacs.a)
    assert study.study_uid == pacs.a
    assert study.study_date == "20240115"
    assert set(study.modalities) == {"CR", "CT"}
    assert (study.n_series, study.n_instances) == (2, 3)
    assert [s.study_uid for s in server.find_studies(study_uid=pacs.b)] == [pacs.b]


@pytest.mark.parametrize(
    ("date", "modality", "expected"),
    [
        ("20240101-20240131", "CR", ["a"]),
        ("20240115", "CT", ["a"]),
        ("20240101-20241231", "DX", ["b"]),
        ("20240101-20241231", "CR,DX", ["a", "b"]),
        ("20240201-", None, ["b"]),
        ("-20240131", None, ["a"]),
        ("20240115", "DX", []),
        ("20230101-20231231", None, []),
    ],
)
def test_find_studies_by_date_and_modality(server, pacs, date, modality, expected):
    found = server.find_studies(date=date, modality=modality)
    assert _ours(found, pacs) == [getattr(pacs, k) for k in expected]


def test_too_many_studies_asks_for_a_narrower_query(orthanc, pacs):
    creds = Credentials("basic", orthanc.password, orthanc.user)
    with (
        connect(orthanc.dicomweb, credentials=creds, limits=Limits(max_studies=1)) as srv,
        pytest.raises(UserError, match="more than 1 studies match; narrow"),
    ):
        srv.find_studies(date="20240101-20241231")


def test_find_instances_lists_every_modality(server, pacs):
    found = server.find_instances(pacs.a)
    assert {i.sop_uid for i in found} == {*pacs.pixels, pacs.ct}
    assert {i.sop_uid: i.modality for i in found}[pacs.ct] == "CT"


# --- WADO-RS ------------------------------------------------------------------------------


def test_fetched_study_holds_the_original_pixels_privately(server, pacs, tmp_path):
    with fetched_study(server, pacs.a, parent=tmp_path) as study:
        folder = study.folder
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert sorted(p.name for p in folder.iterdir()) == sorted(f"{u}.dcm" for u in pacs.pixels)
        for path in study.files:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            assert is_dicom(path)
            ds = pydicom.dcmread(path)
            assert ds.Modality == "CR" and ds.StudyInstanceUID == pacs.a
            np.testing.assert_array_equal(ds.pixel_array, pacs.pixels[path.stem])
            assert decode_dicom(path).shape == (224, 224)  # what `predict` will read
        assert [(s.sop_uid, s.reason) for s in study.skipped] == [
            (pacs.ct, "modality CT not fetched")
        ]
        assert study.study.study_uid == pacs.a
    assert not folder.exists()
    assert list(tmp_path.iterdir()) == []


def test_folder_is_removed_when_the_block_fails(server, pacs, tmp_path):
    with pytest.raises(RuntimeError), fetched_study(server, pacs.b, parent=tmp_path) as study:
        assert len(study.files) == 1
        raise RuntimeError("predict failed")
    assert list(tmp_path.iterdir()) == []


def test_iter_datasets_every_modality(server, pacs):
    got = {str(ds.SOPInstanceUID): ds for ds in server.iter_datasets(pacs.a, modalities=None)}
    assert set(got) == {*pacs.pixels, pacs.ct}
    assert got[pacs.ct].Modality == "CT"
    for uid, pixels in pacs.pixels.items():
        np.testing.assert_array_equal(got[uid].pixel_array, pixels)


def test_too_many_instances_are_refused_before_any_download(orthanc, pacs, tmp_path):
    creds = Credentials("basic", orthanc.password, orthanc.user)
    with connect(orthanc.dicomweb, credentials=creds, limits=Limits(max_instances=1)) as srv:
        with (
            pytest.raises(UserError, match="2 matching instances, more than the limit of 1"),
            fetched_study(srv, pacs.a, parent=tmp_path),
        ):
            pass
        with fetched_study(srv, pacs.b, parent=tmp_path) as study:  # one is within the limit
            assert len(study.files) == 1
    assert list(tmp_path.iterdir()) == []


def test_an_oversized_instance_is_refused_and_nothing_is_left(orthanc, pacs, tmp_path):
    creds = Credentials("basic", orthanc.password, orthanc.user)
    limits = Limits(max_instance_bytes=20_000)  # a 224 x 224 8-bit film is ~50 kB
    with connect(orthanc.dicomweb, credentials=creds, limits=limits) as srv:
        with (
            pytest.raises(UserError, match=r"larger than the limit of .* per instance") as err,
            fetched_study(srv, pacs.a, parent=tmp_path),
        ):
            pass
        assert any(uid in str(err.value) for uid in pacs.pixels)
        assert srv.find_instances(pacs.a)  # small answers still pass
    assert list(tmp_path.iterdir()) == []


class _ChunkedHandler(http.server.BaseHTTPRequestHandler):
    """Answers every GET with 1 MB in chunks and no Content-Length, as streaming PACS do."""

    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802 (the http.server API)
        self.send_response(200)
        self.send_header("Content-Type", 'multipart/related; type="application/dicom"; boundary=x')
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for _ in range(64):
                chunk = b"\0" * 16384
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass  # the client hung up at its limit, as it should

    def log_message(self, *args):
        pass


def test_a_streamed_answer_is_cut_at_the_limit():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ChunkedHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/dicom-web"
        uid = generate_uid()
        srv = DicomwebServer(url, limits=Limits(max_instance_bytes=100_000))
        with srv, pytest.raises(UserError, match=f"instance {uid} is larger than the limit"):
            srv.retrieve(InstanceInfo(generate_uid(), generate_uid(), uid, None, "CR", 1))
    finally:
        httpd.shutdown()
        httpd.server_close()


# --- STOW-RS ------------------------------------------------------------------------------


def _secondary_capture(ref: pydicom.Dataset, pixels: np.ndarray) -> hd.sc.SCImage:
    return hd.sc.SCImage.from_ref_dataset(
        ref_dataset=ref,
        pixel_array=pixels,
        photometric_interpretation="MONOCHROME2",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=generate_uid(),
        series_number=99,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="pneumoscope-tests",
        patient_orientation=("L", "F"),
    )


def test_store_a_secondary_capture_then_find_and_fetch_it(server, pacs):
    pixels = np.clip(pacs.dx.pixel_array.astype(int) + 30, 0, 255).astype(np.uint8)
    sc = _secondary_capture(pacs.dx, pixels)
    outcomes = server.store([sc], study_uid=pacs.b)
    assert [(o.sop_uid, o.ok) for o in outcomes] == [(sc.SOPInstanceUID, True)]
    listed = {i.sop_uid: i for i in server.find_instances(pacs.b)}
    assert listed[sc.SOPInstanceUID].modality == "OT"
    back = server.retrieve(listed[sc.SOPInstanceUID])
    np.testing.assert_array_equal(back.pixel_array, pixels)
    assert "OT" in server.study(pacs.b).modalities


def test_store_reports_each_instance(server, pacs):
    good = _secondary_capture(pacs.dx, np.full((64, 64), 128, np.uint8))
    stranger = chest_xray_dataset(np.zeros((64, 64), np.uint8), generate_uid(), generate_uid())
    outcomes = server.store([good, stranger], study_uid=pacs.b)
    assert [(o.sop_uid, o.ok) for o in outcomes] == [
        (good.SOPInstanceUID, True),
        (stranger.SOPInstanceUID, False),
    ]
    assert re.search(r"\(0x[0-9A-F]{4}\)$", outcomes[1].detail)  # the reason code the server gave
    assert stranger.SOPInstanceUID not in {i.sop_uid for i in server.find_instances(pacs.b)}


def test_store_when_every_instance_is_refused(server, pacs):
    stranger = chest_xray_dataset(np.zeros((64, 64), np.uint8), generate_uid(), generate_uid())
    outcomes = server.store([stranger], study_uid=pacs.b)
    assert [(o.sop_uid, o.ok) for o in outcomes] == [(stranger.SOPInstanceUID, False)]


# --- failures are one line ---------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_is_a_quick_user_error():
    url = f"http://127.0.0.1:{_closed_port()}/dicom-web"
    started = time.monotonic()
    with pytest.raises(UserError, match="cannot reach the DICOMweb server at .*connection refused"):
        connect(url)
    assert time.monotonic() - started < 5


def test_credentials_missing_or_wrong_are_401(orthanc):
    with pytest.raises(UserError, match="needs credentials .*HTTP 401"):
        connect(orthanc.dicomweb)
    wrong = Credentials("basic", "wrong", orthanc.user)
    with pytest.raises(UserError, match="refused the credentials given .*HTTP 401") as err:
        connect(orthanc.dicomweb, credentials=wrong)
    assert "wrong" not in str(err.value)
    with pytest.raises(UserError, match="HTTP 401"):  # Orthanc takes no bearer tokens
        connect(orthanc.dicomweb, credentials=Credentials("bearer", "t0ken"))


def test_wrong_base_url_is_404(orthanc):
    creds = Credentials("basic", orthanc.password, orthanc.user)
    with pytest.raises(UserError, match="404 Not Found .*check the base URL"):
        connect(f"{orthanc.url}/not-dicom-web", credentials=creds)


def test_bad_study_uids_are_user_errors(server, pacs, tmp_path):
    with pytest.raises(UserError, match="not a valid Study Instance UID: 'PAT-001'"):
        server.study("PAT-001")
    with pytest.raises(UserError, match=r"has no study 1\.2\.3\.999"):
        server.study("1.2.3.999")
    with pytest.raises(UserError, match="has no study"), fetched_study(server, "1.2.3.999"):
        pass
    assert server.find_studies(study_uid="1.2.3.999") == []


@pytest.mark.parametrize(
    "url", ["ftp://host/dicom-web", "pacs.local/dicom-web", "http://u:p@host/dicom-web"]
)
def test_unusable_urls(url):
    with pytest.raises(UserError):
        DicomwebServer(url)


# --- settings ----------------------------------------------------------------------------


def test_load_credentials(tmp_path):
    token, basic = tmp_path / "token", tmp_path / "basic"
    token.write_text("abc.def.ghi\n")
    basic.write_text("radiology:s3cret:with:colons\n")
    assert load_credentials(token_file=token) == Credentials("bearer", "abc.def.ghi")
    assert load_credentials(basic_auth_file=basic) == Credentials(
        "basic", "s3cret:with:colons", "radiology"
    )
    assert "s3cret" not in repr(load_credentials(basic_auth_file=basic))
    env = {"PNEUMOSCOPE_DICOMWEB_USER": "u", "PNEUMOSCOPE_DICOMWEB_PASSWORD": "p"}
    assert load_credentials(environ=env) == Credentials("basic", "p", "u")
    assert load_credentials(environ={"PNEUMOSCOPE_DICOMWEB_TOKEN": "t"}).kind == "bearer"
    assert load_credentials(environ={}) is None


def test_bad_credential_files(tmp_path):
    empty, nocolon = tmp_path / "empty", tmp_path / "nocolon"
    empty.write_text("")
    nocolon.write_text("justauser\n")
    with pytest.raises(UserError, match="on one line"):
        load_credentials(token_file=empty)
    with pytest.raises(UserError, match="user:password"):
        load_credentials(basic_auth_file=nocolon)
    with pytest.raises(UserError, match="cannot read the token file"):
        load_credentials(token_file=tmp_path / "missing")
    with pytest.raises(UserError, match="not both"):
        load_credentials(token_file=empty, basic_auth_file=nocolon)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("20240115", "20240115"), (" 20240101-20240131 ", "20240101-20240131"), ("2024-", None)],
)
def test_parse_date_range(text, expected):
    if expected is None:
        with pytest.raises(UserError):
            parse_date_range(text)
    else:
        assert parse_date_range(text) == expected


@pytest.mark.parametrize("text", ["20241301", "20240131-20240101", "2024011", "-", "x", ""])
def test_parse_date_range_refuses(text):
    with pytest.raises(UserError):
        parse_date_range(text)


def test_parse_modalities():
    assert parse_modalities("cr, DX,cr") == ("CR", "DX")
    assert parse_modalities(["DX"]) == ("DX",)
    assert parse_modalities(None) == ()
    with pytest.raises(UserError, match="not a DICOM modality"):
        parse_modalities("C R")
