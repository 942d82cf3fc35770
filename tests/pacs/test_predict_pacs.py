"""`pneumoscope predict` with a hospital's systems, through the real command line:
studies from a real PACS (Orthanc, DICOMweb) predicted and their SR and capture stored back
in the study; a local PACS export answered with DICOM results on disk."""

from __future__ import annotations

import csv
from io import BytesIO
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
import requests
from pydicom.uid import generate_uid

from tests.helpers import (
    CT_IMAGE,
    REPO,
    chest_xray_dataset,
    dciodvfy,
    dicom_dataset,
    run_cli,
    sr_probability,
)

pytestmark = pytest.mark.realdata
RUN_V1 = REPO / "tests" / "fixtures" / "run_v1"
DATE = "20250610"  # no other test module's study has this date
FILMS = ("NORMAL/IM-0001-0001.jpeg", "PNEUMONIA/person100_bacteria_475.jpeg")


def _films(shared_data: Path, study: str) -> list[pydicom.Dataset]:
    series = generate_uid()
    out = []
    for n, rel in enumerate(FILMS, 1):
        gray = cv2.imread(str(shared_data / "chest_xray_224" / "test" / rel), 0)
        out.append(chest_xray_dataset(gray, study, series, "CR", DATE, n))
    return out


def _ct(study: str) -> pydicom.Dataset:
    return dicom_dataset(
        np.zeros((32, 32), np.int16) + 40,
        sop_class=CT_IMAGE,
        Modality="CT",
        StudyInstanceUID=study,
        StudyDate=DATE,
        SeriesInstanceUID=generate_uid(),
    )


@pytest.fixture(scope="module")
def study(orthanc, shared_data):
    """One study on the PACS: two frontal CR films made from real X-rays and a CT slice."""
    uid = generate_uid()
    objects = [*_films(shared_data, uid), _ct(uid)]
    for ds in objects:
        buf = BytesIO()
        pydicom.dcmwrite(buf, ds, enforce_file_format=True)
        answer = requests.post(f"{orthanc.url}/instances", data=buf.getvalue(), auth=orthanc.auth)
        assert answer.ok, answer.text
    return uid, [str(d.SOPInstanceUID) for d in objects]


@pytest.fixture
def auth_file(orthanc, tmp_path) -> Path:
    path = tmp_path / "pacs-auth"
    path.write_text(f"{orthanc.user}:{orthanc.password}\n")
    return path


def _rows(path: Path) -> dict[str, dict]:
    with open(path, newline="") as fh:
        return {r["path"]: r for r in csv.DictReader(fh)}


def _instances(orthanc, uid: str) -> list[dict]:
    url = f"{orthanc.dicomweb}/studies/{uid}/instances"
    answer = requests.get(url, auth=orthanc.auth, headers={"Accept": "application/dicom+json"})
    answer.raise_for_status()
    return answer.json()


def _modality(item: dict) -> str:
    return item["00080060"]["Value"][0]


def test_predict_a_study_and_store_the_results_in_it(orthanc, study, auth_file, tmp_path):
    uid, (film1, film2, ct) = study
    out = tmp_path / "pacs.csv"
    r = run_cli(
        "pacs", "predict", "--run", str(RUN_V1), "--url", orthanc.dicomweb, "--study", uid,
        "--store", "--auth-file", str(auth_file), "--out", str(out),
        "--dicom-out", str(tmp_path / "results"),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    rows = _rows(out)
    assert set(rows) == {f"{uid}/{film1}", f"{uid}/{film2}", f"{uid}/{ct}"}
    assert [rows[f"{uid}/{f}"]["status"] for f in (film1, film2)] == ["ok", "ok"]
    assert rows[f"{uid}/{ct}"]["status"] == "skipped" and "CT" in rows[f"{uid}/{ct}"]["error"]
    assert "stored 4 DICOM results" in r.stdout
    after = _instances(orthanc, uid)
    assert sorted(_modality(i) for i in after) == ["CR", "CR", "CT", "OT", "OT", "SR", "SR"]
    kept = sorted((tmp_path / "results" / uid).glob("*.dcm"))
    assert len(kept) == 4
    srs = [pydicom.dcmread(p) for p in kept if pydicom.dcmread(p).Modality == "SR"]
    for sr in srs:
        source = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
        sop = source.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        assert sr_probability(sr) == pytest.approx(
            float(rows[f"{uid}/{sop}"]["probability"]), abs=1e-6
        )
    for path in kept:
        assert not [x for x in dciodvfy(path) if x.startswith("Error")]


def test_predict_studies_found_by_date_and_modality(orthanc, study, auth_file, tmp_path):
    uid, (film1, film2, _) = study
    out = tmp_path / "query.csv"
    r = run_cli(
        "pacs", "predict", "--run", str(RUN_V1), "--url", orthanc.dicomweb, "--date", DATE,
        "--modality", "CR", "--auth-file", str(auth_file), "--out", str(out),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "1 studies from" in r.stdout
    rows = _rows(out)
    assert {p for p, row in rows.items() if row["status"] == "ok"} == {
        f"{uid}/{film1}",
        f"{uid}/{film2}",
    }


def test_pacs_mistakes_are_one_line(orthanc, auth_file, tmp_path):
    out = ("--out", str(tmp_path / "p.csv"))
    cases = [
        ("--url", orthanc.dicomweb, "--auth-file", str(auth_file)),  # no study, no date
        ("--url", "http://127.0.0.1:9/dicom-web", "--study", "1.2.3"),  # nothing there
        ("--url", orthanc.dicomweb, "--study", "1.2.3"),  # no credentials: 401
    ]
    for extra in cases:
        r = run_cli("pacs", "predict", "--run", str(RUN_V1), *out, *extra)
        assert r.returncode == 2, (extra, r.stderr)
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    moved = run_cli("predict", "--run", str(RUN_V1), "--dicomweb", orthanc.dicomweb, *out)
    assert moved.returncode == 2 and "pneumoscope pacs predict" in moved.stderr
    assert moved.stderr.count("\n") == 1


def test_local_pacs_export_gets_dicom_results(shared_data, tmp_path):
    """An extensionless export folder: --dicom-out writes an SR and a capture per film."""
    folder = tmp_path / "export"
    folder.mkdir()
    uid = generate_uid()
    for n, ds in enumerate([*_films(shared_data, uid), _ct(uid)], 1):
        pydicom.dcmwrite(folder / f"IM{n:05d}", ds, enforce_file_format=True)
    r = run_cli(
        "predict", "--run", str(RUN_V1), str(folder), "--out", str(tmp_path / "p.csv"),
        "--dicom-out", str(tmp_path / "results"), "--no-progress",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "DICOM results: 4 files for 2 images" in r.stdout
    statuses = sorted(row["status"] for row in _rows(tmp_path / "p.csv").values())
    assert statuses == ["ok", "ok", "out_of_scope"]
    assert len(list((tmp_path / "results" / uid).glob("*.dcm"))) == 4
