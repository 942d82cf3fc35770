"""POST /v1/predict?format=dicom: a DICOM upload answered with an SR and a secondary capture
in its study, as multipart/related; type="application/dicom"; anything else is refused."""

from __future__ import annotations

from io import BytesIO

import cv2
import numpy as np
import pydicom
import pytest

from pneumoscope.data.dicom import decode_dicom_bytes
from pneumoscope.data.preprocess import load_image_bytes
from pneumoscope.inference.gradcam import gradcam
from pneumoscope.pacs.results import ResultInfo, dicom_results
from tests.helpers import PATIENT, dciodvfy, sr_probability, write_dicom, xray_dicom

MULTIPART = 'multipart/related; type="application/dicom"'


def film_bytes(jpeg, tmp_path, **attrs) -> bytes:
    gray = cv2.resize(cv2.imread(str(jpeg), cv2.IMREAD_GRAYSCALE), (640, 560))
    return write_dicom(xray_dicom(gray, **attrs), tmp_path / "film.dcm").read_bytes()


def parts(response) -> list[bytes]:
    """The bodies of a multipart/related answer, in order."""
    content_type = response.headers["content-type"]
    assert content_type.startswith(MULTIPART + "; boundary=")
    boundary = content_type.rsplit("boundary=", 1)[1].encode()
    chunks = response.content.split(b"--" + boundary)
    assert chunks[0] == b"" and chunks[-1] == b"--\r\n"
    out = []
    for chunk in chunks[1:-1]:
        head, body = chunk.split(b"\r\n\r\n", 1)
        assert head.strip() == b"Content-Type: application/dicom"
        assert body.endswith(b"\r\n")
        out.append(body[:-2])
    return out


@pytest.mark.realdata
def test_dicom_upload_gets_sr_and_capture(client, engine, films, tmp_path):
    data = film_bytes(films[2], tmp_path)
    source = pydicom.dcmread(BytesIO(data))
    as_json = client.post("/v1/predict", content=data).json()
    r = client.post("/v1/predict?format=dicom", content=data)
    assert r.status_code == 200, r.text
    sr_bytes, sc_bytes = parts(r)
    sr, sc = pydicom.dcmread(BytesIO(sr_bytes)), pydicom.dcmread(BytesIO(sc_bytes))
    assert (sr.Modality, sc.Modality, sc.BurnedInAnnotation) == ("SR", "OT", "YES")
    assert sr_probability(sr) == as_json["probability"]
    for obj, name in ((sr, "sr.dcm"), (sc, "sc.dcm")):
        assert obj.StudyInstanceUID == source.StudyInstanceUID
        assert obj.SOPInstanceUID != source.SOPInstanceUID
        assert str(obj.PatientName) == PATIENT["PatientName"]
        (tmp_path / name).write_bytes(sr_bytes if obj is sr else sc_bytes)
        assert not [x for x in dciodvfy(tmp_path / name) if x.startswith("Error")]
    # the capture's heat is the engine's Grad-CAM (through its 8-bit picture)
    heat = gradcam(engine.loaded, load_image_bytes(data, engine.loaded.preprocess)[None])[0]
    info = ResultInfo(
        as_json["probability"],
        as_json["label"],
        as_json["threshold"],
        as_json["threshold_policy"],
        as_json["model_id"],
        as_json["ood"],
        as_json["ood_score"],
    )
    _, expected = dicom_results(source, decode_dicom_bytes(data), heat, info)
    diff = np.abs(sc.pixel_array.astype(int) - expected.pixel_array.astype(int))
    assert diff.mean() < 0.5 and diff.max() <= 3, (diff.mean(), diff.max())


@pytest.mark.realdata
def test_multipart_form_upload_works_too(client, films, tmp_path):
    data = film_bytes(films[0], tmp_path)
    r = client.post("/v1/predict?format=dicom", files={"file": ("film.dcm", data)})
    assert r.status_code == 200, r.text
    assert len(parts(r)) == 2


@pytest.mark.realdata
def test_non_dicom_upload_is_422(client, films):
    r = client.post("/v1/predict?format=dicom", content=films[0].read_bytes())
    assert r.status_code == 422
    assert "format=dicom needs a DICOM upload" in r.json()["error"]


@pytest.mark.realdata
def test_dicom_without_study_is_422(client, films, tmp_path):
    data = film_bytes(films[0], tmp_path)
    ds = pydicom.dcmread(BytesIO(data))
    del ds.StudyInstanceUID
    path = write_dicom(ds, tmp_path / "lost.dcm")
    r = client.post("/v1/predict?format=dicom", content=path.read_bytes())
    assert r.status_code == 422
    assert "no StudyInstanceUID" in r.json()["error"]
    assert PATIENT["PatientID"] not in r.text


def test_other_failures_keep_their_status(client):
    assert client.post("/v1/predict?format=dicom", content=b"").status_code == 400
    assert client.post("/v1/predict?format=dicom", content=b"hello").status_code == 415
    r = client.post("/v1/predict?format=xml", content=b"hello")
    assert r.status_code == 422 and "format" in r.json()["error"]


def test_format_is_documented(client):
    op = client.get("/openapi.json").json()["paths"]["/v1/predict"]["post"]
    assert "format=dicom" in op["summary"] or "DICOM" in op["summary"]
    assert MULTIPART in op["responses"]["200"]["content"]
    [param] = [p for p in op["parameters"] if p["name"] == "format"]
    assert "STOW-RS" in param["description"]
