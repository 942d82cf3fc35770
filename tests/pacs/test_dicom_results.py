"""The SR and the secondary capture for one DICOM film: valid DICOM (dciodvfy), in the
source's study with its patient module, new series and instances, and the result inside."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.uid import ComprehensiveSRStorage, SecondaryCaptureImageStorage

from pneumoscope.core import __version__
from pneumoscope.data.dicom import decode_dicom
from pneumoscope.pacs.capture import MAX_SIDE, fit_size, text_band
from pneumoscope.pacs.common import SourceError
from pneumoscope.pacs.results import ResultInfo, dicom_results, encode
from tests.helpers import PATIENT, dciodvfy, dicom_ramp, write_dicom, xray_dicom

PRIVATE = "Warning - Unrecognized defined term <99PNEUMOSCOPE>"  # our declared private codes
STUDY_KEYS = ("StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName", "StudyID")
HEAT = np.zeros((32, 32), np.float32)
HEAT[:, :16] = 1.0  # the left half hot, the right half cold
INFO = ResultInfo(
    probability=0.873123456789,
    label="PNEUMONIA",
    threshold=0.4123,
    threshold_policy="youden (calibrated, on validation)",
    model_id="run_v1@0123456789ab",
    ood=False,
    ood_score=3.21,
)


@pytest.fixture(scope="module")
def source_path(shared_data, tmp_path_factory):
    """A real pneumonia film stored as a 12-bit CR of 1400 x 1150 pixels."""
    jpeg = sorted((shared_data / "chest_xray_224" / "test" / "PNEUMONIA").glob("*.jpeg"))[0]
    gray = cv2.imread(str(jpeg), cv2.IMREAD_GRAYSCALE)
    pixels = cv2.resize(gray, (1400, 1150), interpolation=cv2.INTER_LINEAR).astype(np.uint16) * 16
    ds = xray_dicom(pixels, bits_stored=12, WindowCenter=2048, WindowWidth=4096)
    return write_dicom(ds, tmp_path_factory.mktemp("source") / "film.dcm")


@pytest.fixture(scope="module")
def results(source_path, tmp_path_factory):
    """(source, SR path, capture path): built, written, to be read back."""
    source = pydicom.dcmread(source_path)
    sr, sc = dicom_results(source, decode_dicom(source_path), HEAT, INFO)
    out = tmp_path_factory.mktemp("results")
    (out / "sr.dcm").write_bytes(encode(sr))
    (out / "sc.dcm").write_bytes(encode(sc))
    return source, out / "sr.dcm", out / "sc.dcm"


def content_items(ds):
    for item in ds.get("ContentSequence", []):
        yield item
        yield from content_items(item)


def named(sr, code: str) -> list:
    return [
        i
        for i in content_items(sr)
        if "ConceptNameCodeSequence" in i and i.ConceptNameCodeSequence[0].CodeValue == code
    ]


def number(sr, code: str) -> float:
    [item] = named(sr, code)
    value = item.MeasuredValueSequence[0]
    assert value.MeasurementUnitsCodeSequence[0].CodeValue == "1"
    return float(value.NumericValue)


def coded(sr, code: str) -> str:
    [item] = named(sr, code)
    return item.ConceptCodeSequence[0].CodeValue


def assert_valid(path, allowed: tuple[str, ...] = ()) -> list[str]:
    lines = dciodvfy(path)
    assert not [x for x in lines if x.startswith("Error")], lines
    assert all(x.startswith(allowed) for x in lines if x.startswith("Warning")), lines
    return lines


def assert_joins_study(result, source) -> None:
    assert result.StudyInstanceUID == source.StudyInstanceUID
    assert result.SeriesInstanceUID != source.SeriesInstanceUID
    assert result.SOPInstanceUID != source.SOPInstanceUID
    for keyword, value in PATIENT.items():
        assert str(result.get(keyword)) == value, keyword
    for keyword in STUDY_KEYS:
        assert str(result.get(keyword)) == str(source.get(keyword)), keyword
    assert result.Manufacturer == "pneumoscope"
    assert "AI" in result.SeriesDescription and "research use" in result.SeriesDescription


@pytest.mark.realdata
def test_sr_is_valid_and_reports_the_result(results):
    source, sr_path, _ = results
    lines = assert_valid(sr_path, (PRIVATE,))
    assert lines[0] == "ComprehensiveSR"
    sr = pydicom.dcmread(sr_path)
    assert sr.SOPClassUID == ComprehensiveSRStorage and sr.Modality == "SR"
    assert_joins_study(sr, source)
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert (sr.CompletionFlag, sr.VerificationFlag) == ("COMPLETE", "UNVERIFIED")
    assert coded(sr, "233604007") == "52101004"  # Pneumonia: Present
    assert number(sr, "122157") == pytest.approx(INFO.probability, abs=1e-9)
    assert number(sr, "122411") == pytest.approx(INFO.threshold, abs=1e-9)
    assert coded(sr, "OOD") == "373067005"  # No
    assert number(sr, "OODSCORE") == pytest.approx(3.21)
    # TID 4019 algorithm identification: in the group and in each measurement
    assert {i.TextValue for i in named(sr, "111001")} == {"pneumoscope"}
    assert {i.TextValue for i in named(sr, "111003")} == {__version__}
    params = {i.TextValue for i in named(sr, "111002")}
    assert "model_id=run_v1@0123456789ab" in params
    assert "threshold_policy=youden (calibrated, on validation)" in params
    refs = [i.ReferencedSOPSequence[0] for i in named(sr, "121112")]  # Source of Measurement
    assert refs and all(r.ReferencedSOPInstanceUID == source.SOPInstanceUID for r in refs)
    assert all(r.ReferencedSOPClassUID == source.SOPClassUID for r in refs)
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == source.StudyInstanceUID


@pytest.mark.realdata
def test_capture_is_valid_and_shows_the_film_heat_and_result(results, source_path):
    source, _, sc_path = results
    assert assert_valid(sc_path) == ["SCImage"]  # no warning at all
    sc = pydicom.dcmread(sc_path)
    assert sc.SOPClassUID == SecondaryCaptureImageStorage
    assert_joins_study(sc, source)
    assert sc.BurnedInAnnotation == "YES"
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert (sc.PhotometricInterpretation, sc.SamplesPerPixel, sc.BitsAllocated) == ("RGB", 3, 8)
    rgb = sc.pixel_array
    film_w, film_h = fit_size((1150, 1400))
    assert (film_w, sc.Columns) == (MAX_SIDE, MAX_SIDE)
    band, film = rgb[: sc.Rows - film_h], rgb[sc.Rows - film_h :].astype(int)
    assert band.shape[0] > 40 and (band == 24).mean() > 0.8  # a dark band...
    yellow = (band[..., 0] > 200) & (band[..., 1] > 150) & (band[..., 2] < 80)
    assert yellow.sum() > 100  # ... with the notice written in it
    gray = decode_dicom(source_path)
    expected = cv2.resize(gray, (film_w, film_h), interpolation=cv2.INTER_AREA)
    cold = slice(film_w * 3 // 4, None)  # far from the hot half: the film's own gray
    assert np.array_equal(film[:, cold, 0], expected[:, cold])
    assert np.array_equal(film[:, cold, 0], film[:, cold, 2])
    hot = film[:, : film_w // 4]
    assert np.abs(hot[..., 0] - hot[..., 2]).mean() > 40  # coloured where the heat is


@pytest.mark.realdata
def test_a_pacs_files_them_in_the_source_study(results, source_path, orthanc):
    """Stored by STOW-RS into a real PACS (Orthanc), listed in the film's study, retrieved
    intact."""
    from pneumoscope.pacs.dicomweb import Credentials, connect

    source, sr_path, sc_path = results
    objs = [pydicom.dcmread(p) for p in (source_path, sr_path, sc_path)]
    creds = Credentials("basic", orthanc.password, orthanc.user)
    with connect(orthanc.dicomweb, credentials=creds, timeout=(3, 30)) as server:
        outcomes = server.store(objs, study_uid=source.StudyInstanceUID)
        assert [(o.ok, o.detail) for o in outcomes] == [(True, "")] * 3
        listed = {i.sop_uid: i for i in server.find_instances(source.StudyInstanceUID)}
        assert [listed[o.SOPInstanceUID].modality for o in objs] == ["CR", "SR", "OT"]
        sr = server.retrieve(listed[objs[1].SOPInstanceUID])
        sc = server.retrieve(listed[objs[2].SOPInstanceUID])
    assert number(sr, "122157") == pytest.approx(INFO.probability, abs=1e-9)
    assert np.array_equal(sc.pixel_array, objs[2].pixel_array)


@pytest.mark.realdata
def test_sr_and_capture_are_two_series_of_the_study(results):
    source, sr_path, sc_path = results
    sr, sc = pydicom.dcmread(sr_path), pydicom.dcmread(sc_path)
    assert sr.StudyInstanceUID == sc.StudyInstanceUID == source.StudyInstanceUID
    assert len({sr.SeriesInstanceUID, sc.SeriesInstanceUID, source.SeriesInstanceUID}) == 3
    assert (sr.SeriesNumber, sc.SeriesNumber) == (9001, 9002)
    assert sr.SeriesDescription != sc.SeriesDescription


def test_absent_finding_and_a_run_without_ood_guard(tmp_path):
    source = xray_dicom(dicom_ramp(0, 4000, np.uint16), bits_stored=12)
    path = write_dicom(source, tmp_path / "ramp.dcm")
    info = ResultInfo(0.12, "NORMAL", 0.4123, "youden", "run_x@abc", ood=None, ood_score=None)
    sr, sc = dicom_results(source, decode_dicom(path), np.zeros((8, 8)), info)
    (tmp_path / "sr.dcm").write_bytes(encode(sr))
    (tmp_path / "sc.dcm").write_bytes(encode(sc))
    assert_valid(tmp_path / "sr.dcm")  # no private code used: no warning at all
    assert assert_valid(tmp_path / "sc.dcm") == ["SCImage"]
    back = pydicom.dcmread(tmp_path / "sr.dcm")
    assert coded(back, "233604007") == "272519000"  # Pneumonia: Absent
    assert number(back, "122157") == pytest.approx(0.12)
    assert named(back, "OOD") == [] and named(back, "OODSCORE") == []
    assert max(sc.Rows, sc.Columns) >= 512  # a small film is enlarged for legible text


@pytest.mark.realdata
def test_a_film_analysed_outside_the_intended_use_says_so(tmp_path):
    from pneumoscope.pacs.capture import result_lines

    source = xray_dicom(dicom_ramp(0, 4000, np.uint16), bits_stored=12)
    path = write_dicom(source, tmp_path / "ramp.dcm")
    note = (
        "outside the intended use, analysed because of --allow age: patient aged 45 years "
        "(from PatientAge), outside the training population (children aged 1-5 years)"
    )
    info = ResultInfo(0.7, "PNEUMONIA", 0.41, "youden", "run_x@abc", outside_note=note)
    sr, sc = dicom_results(source, decode_dicom(path), np.zeros((8, 8)), info)
    (tmp_path / "sr.dcm").write_bytes(encode(sr))
    assert_valid(tmp_path / "sr.dcm", (PRIVATE,))
    assert coded(pydicom.dcmread(tmp_path / "sr.dcm"), "OUTSIDEUSE") == "373066001"  # Yes
    text = " ".join(result_lines(info))
    assert "OUTSIDE THE INTENDED USE: patient aged 45 years" in text
    assert "children aged 1-5 years" in text
    plain = ResultInfo(0.7, "PNEUMONIA", 0.41, "youden", "run_x@abc")
    assert "OUTSIDE" not in " ".join(result_lines(plain))


def test_a_source_without_study_is_refused_without_patient_data():
    source = xray_dicom(dicom_ramp(0, 255, np.uint8))
    del source.StudyInstanceUID
    with pytest.raises(SourceError, match="StudyInstanceUID") as err:
        dicom_results(source, source.pixel_array, np.zeros((8, 8)), INFO)
    assert PATIENT["PatientID"] not in str(err.value)


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_a_uid_that_could_name_another_folder_is_refused():
    source = xray_dicom(dicom_ramp(0, 255, np.uint8), StudyInstanceUID="../../etc")
    with pytest.raises(SourceError, match="StudyInstanceUID is not a valid UID"):
        dicom_results(source, source.pixel_array, np.zeros((8, 8)), INFO)


def test_odd_patient_values_are_copied_verbatim_and_never_logged(tmp_path, caplog, recwarn):
    name = "Nobody Special"  # no caret: highdicom would log it as a doubtful name
    source = xray_dicom(dicom_ramp(0, 255, np.uint8), PatientName=name, PatientSex="X")
    path = write_dicom(source, tmp_path / "odd.dcm")
    with caplog.at_level(logging.DEBUG):
        sr, sc = dicom_results(source, decode_dicom(path), np.zeros((8, 8)), INFO)
    assert str(sr.PatientName) == str(sc.PatientName) == name
    assert sr.PatientSex == sc.PatientSex == "X"
    assert not [r for r in caplog.records if "Nobody" in r.getMessage()]
    assert not [w for w in recwarn if "Nobody" in str(w.message)]


def test_capture_size_and_text_fit():
    assert fit_size((224, 224)) == (512, 512)
    assert fit_size((3000, 2500)) == (853, 1024)
    assert fit_size((700, 900)) == (900, 700)
    long = ["AI RESULT", "policy: " + "a very long threshold policy " * 8, "model " + "x" * 90]
    band = text_band(long, 512)
    assert (band[:, -6:] == 24).all()  # wrapped: nothing runs off the right edge
