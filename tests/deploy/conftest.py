"""What the deployment tests share: a run exported by the training install, real films."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import pytest

from pneumoscope.inference.export import export_onnx
from tests.helpers import REPO, SHARED_DATA, write_dicom, xray_dicom

FIXTURE = REPO / "tests" / "fixtures" / "run_v1"
# the run's calibration averages 2 augmented copies: the copies come from export.json
TTA = {"copies": 2, "seed": 0, "augment": {"rotation": 10.0, "crop": 0.3, "gamma": 0.2}}


@pytest.fixture(scope="session")
def exported(tmp_path_factory) -> Path:
    """run_v1 (an EfficientNet: global pooling + linear) at 96 px, with test-time
    augmentation in its calibration, exported by the training install."""
    run = tmp_path_factory.mktemp("torchfree") / "run"
    shutil.copytree(FIXTURE, run)
    card = json.loads((run / "model.json").read_text())
    card["img_size"] = card["preprocess"]["img_size"] = 96  # a 3x3 last map (32 px: 1x1)
    (run / "model.json").write_text(json.dumps(card))
    cal = json.loads((run / "calibration.json").read_text())
    (run / "calibration.json").write_text(json.dumps({**cal, "tta": TTA}))
    record = export_onnx(run)
    assert record["cam"] and record["tta_views"]["copies"] == 2
    return run


@pytest.fixture(scope="session")
def films(tmp_path_factory) -> Path:
    """Four real test films, and one of them as a DICOM (for the SR and the capture)."""
    folder = tmp_path_factory.mktemp("films")
    for label in ("NORMAL", "PNEUMONIA"):
        for src in sorted((SHARED_DATA / "chest_xray_224" / "test" / label).glob("*.jpeg"))[:2]:
            shutil.copy(src, folder / src.name)
    gray = cv2.imread(str(sorted(folder.glob("*.jpeg"))[0]), cv2.IMREAD_GRAYSCALE)
    write_dicom(xray_dicom(gray, PatientAge="003Y"), folder / "film.dcm")
    return folder


@pytest.fixture(scope="session")
def exported_int8(exported, films, tmp_path_factory) -> Path:
    """The same run exported again with its static int8 model, calibrated and checked on
    real films (preprocessed as the run does; any tolerance: the test compares installs)."""
    import numpy as np

    from pneumoscope.data.preprocess import load_image
    from pneumoscope.inference.fidelity import Tolerance
    from pneumoscope.model.run import load_run

    run = tmp_path_factory.mktemp("int8") / "run"
    shutil.copytree(exported, run)
    prep = load_run(run).preprocess
    imgs = np.stack([load_image(str(p), prep) for p in sorted(films.glob("*.jpeg"))] * 4)
    labels = np.array([0, 0, 1, 1] * 4)
    anything = Tolerance(auroc=1.0, max_prob_diff=1.0, flip_fraction=1.0)
    export_onnx(run, quantize=True, check_images=imgs, check_labels=labels, tolerance=anything)
    return run
