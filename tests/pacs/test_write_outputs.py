"""`write_dicom_outputs`: a predict run's DICOM inputs get an SR and a capture each, in their
study's folder; other inputs are skipped and counted, a bad file never stops the others."""

from __future__ import annotations

import cv2
import numpy as np
import pydicom
import pytest

from pneumoscope.data.dicom import decode_dicom
from pneumoscope.data.preprocess import load_image
from pneumoscope.inference.gradcam import gradcam
from pneumoscope.inference.predict import predict_rows
from pneumoscope.inference.predictor import Predictor
from pneumoscope.model.run import load_run
from pneumoscope.pacs.results import ResultInfo, dicom_results, write_dicom_outputs
from tests.helpers import REPO, dciodvfy, sr_probability, write_dicom, xray_dicom

RUN_V1 = REPO / "tests" / "fixtures" / "run_v1"


@pytest.fixture(scope="module")
def loaded():
    return load_run(RUN_V1)


@pytest.fixture(scope="module")
def jpegs(shared_data):
    root = shared_data / "chest_xray_224" / "test"
    return (
        sorted((root / "PNEUMONIA").glob("*.jpeg"))[:2]
        + sorted((root / "NORMAL").glob("*.jpeg"))[:1]
    )


def film_dicom(jpeg, path, **attrs):
    """A real film as an 8-bit CR at 448 x 400 pixels."""
    gray = cv2.resize(cv2.imread(str(jpeg), cv2.IMREAD_GRAYSCALE), (448, 400))
    return write_dicom(xray_dicom(gray, **attrs), path)


@pytest.fixture
def inputs(jpegs, tmp_path):
    """Two films of one study, a JPEG, a DICOM without pixels and one without a study."""
    study = pydicom.uid.generate_uid()
    a = film_dicom(jpegs[0], tmp_path / "a.dcm", StudyInstanceUID=study)
    b = film_dicom(jpegs[2], tmp_path / "b.dcm", StudyInstanceUID=study)
    broken = write_dicom(xray_dicom(None), tmp_path / "broken.dcm")  # no pixel data
    lost = film_dicom(jpegs[1], tmp_path / "lost.dcm")
    ds = pydicom.dcmread(lost)
    del ds.StudyInstanceUID
    write_dicom(ds, lost)
    return [str(p) for p in (a, jpegs[1], broken, b, lost)], study


@pytest.mark.realdata
def test_writes_sr_and_capture_per_dicom_input(loaded, inputs, tmp_path, one_torch_thread):
    paths, study = inputs
    preds = list(predict_rows(Predictor.from_run(loaded), paths, batch_size=8, workers=1))
    assert [p.status == "ok" for p in preds] == [True, True, False, True, True]
    out = write_dicom_outputs(loaded, preds, tmp_path / "out")
    assert (out.images, len(out.written), out.not_dicom, out.no_result) == (2, 4, 1, 1)
    assert out.errors == [
        (paths[4], "the DICOM file has no StudyInstanceUID: there is no study to add results to")
    ]
    assert out.summary() == (
        "DICOM results: 4 files for 2 images; skipped 1 inputs that are not DICOM and "
        "1 without a prediction; 1 could not be converted"
    )
    assert all(p.parent == tmp_path / "out" / study for p in out.written)
    objs = [pydicom.dcmread(p) for p in out.written]
    assert [p.stem for p in out.written] == [o.SOPInstanceUID for o in objs]
    srs = [o for o in objs if o.Modality == "SR"]
    scs = [o for o in objs if o.Modality != "SR"]
    for group in (srs, scs):  # one series per kind for the study, numbered instances
        assert len({o.SeriesInstanceUID for o in group}) == 1
        assert [o.InstanceNumber for o in group] == [1, 2]
    by_source = {o.SourceImageSequence[0].ReferencedSOPInstanceUID: o for o in scs}
    assert len(by_source) == 2
    sr_files = [p for p, o in zip(out.written, objs, strict=True) if o.Modality == "SR"]
    for pred, sr in zip((preds[0], preds[3]), sr_files, strict=True):
        assert sr_probability(sr) == pytest.approx(pred.probability, abs=1e-12)
    for p in out.written:
        assert not [x for x in dciodvfy(p) if x.startswith("Error")]


@pytest.mark.realdata
def test_capture_uses_explain_gradcam_or_given_heat(loaded, inputs, tmp_path, one_torch_thread):
    paths, _ = inputs
    [pred] = predict_rows(Predictor.from_run(loaded), paths[:1], batch_size=1, workers=1)
    source, film = pydicom.dcmread(paths[0]), decode_dicom(paths[0])
    info = ResultInfo.from_prediction(pred, loaded.threshold_policy)
    heat = gradcam(loaded, load_image(paths[0], loaded.preprocess)[None])[0]
    _, expected = dicom_results(source, film, heat, info)
    computed = write_dicom_outputs(loaded, [pred], tmp_path / "a")
    assert np.array_equal(pydicom.dcmread(computed.written[1]).pixel_array, expected.pixel_array)
    given = np.zeros_like(heat)
    given[:, : given.shape[1] // 2] = 1.0
    _, expected = dicom_results(source, film, given, info)
    supplied = write_dicom_outputs(loaded, [pred], tmp_path / "b", heats={paths[0]: given})
    assert np.array_equal(pydicom.dcmread(supplied.written[1]).pixel_array, expected.pixel_array)


@pytest.mark.realdata
def test_our_own_results_fed_back_are_skipped_not_analysed(loaded, inputs, tmp_path):
    """A folder holding pneumoscope's SR and capture next to the film: predicting it again
    analyses the film only; the capture (a chest picture) is recognised as our own output."""
    paths, _ = inputs
    preds = list(predict_rows(Predictor.from_run(loaded), paths[:1], batch_size=8, workers=1))
    out = write_dicom_outputs(loaded, preds, tmp_path / "out")
    from pneumoscope.inference.intended_use import IntendedUse

    scope = IntendedUse.from_card(loaded.card)
    verdicts = {pydicom.dcmread(p).Modality: scope.screen(p) for p in out.written}
    assert set(verdicts) == {"SR", "OT"}
    assert all(v is not None and v.status == "skipped" for v in verdicts.values())
    assert "pneumoscope's own AI result" in verdicts["OT"].reason
    assert scope.screen(paths[0]) is None  # the film itself is analysed
