"""predict on everything a hospital has, and the out-of-distribution guard."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pandas as pd
import pytest

from pneumoscope.core.errors import UserError
from pneumoscope.inference.predict import predict_to_csv
from pneumoscope.inference.scoring import CSV_COLUMNS
from pneumoscope.model.contract import RunFiles
from pneumoscope.model.ood import OodGuard
from tests.helpers import dicom_dataset, png_header_only, write_dicom


def _foreign_images(folder, n: int = 6):
    """Things that are not frontal chest X-rays: colour photos, documents, CT-like discs."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        cv2.imwrite(str(folder / f"photo_{i}.png"), rng.integers(0, 255, (90, 120, 3), np.uint8))
        doc = np.full((90, 120), 255, np.uint8)
        cv2.putText(doc, f"REPORT {i}", (5, 50), cv2.FONT_HERSHEY_SIMPLEX, 0.8, 0, 2)
        cv2.imwrite(str(folder / f"document_{i}.png"), doc)
        ct = np.zeros((96, 96), np.uint8)
        cv2.circle(ct, (48, 48), 40, 90, -1)
        cv2.circle(ct, (48, 48), 40, 220, 3)
        cv2.imwrite(str(folder / f"ct_{i}.png"), ct)
    return folder


def test_ood_guard_is_fitted_at_calibration_and_documented(run_dir):
    card = json.loads((run_dir / "ood.json").read_text())
    assert "Mahalanobis" in card["method"] and card["threshold"] > 0
    assert card["val_flag_rate"] <= 0.15  # 99% quantile of validation distances
    assert card["weights_sha256"] == RunFiles(run_dir).weights_sha256()
    assert OodGuard.load(RunFiles(run_dir)) is not None


@pytest.fixture(scope="module")
def timm_run(data_dir, tmp_path_factory):
    """A small timm backbone: its pooled conv features are what the guard measures best
    (the seed CNN's 128 post-ReLU dense features barely register a photo or a document)."""
    from pneumoscope.training.train import TrainConfig, train

    out = tmp_path_factory.mktemp("r10")
    train(
        TrainConfig(
            data=str(data_dir),
            out=str(out),
            model="resnet10t",
            epochs=4,
            batch_size=16,
            lr=3e-3,
            seed=0,
        ),
        progress=False,
    )
    return out


def test_ood_flags_foreign_images_not_the_test_xrays(timm_run, synthetic_source, tmp_path):
    # the guard alone: the population check would refuse these synthetic and foreign images
    age = ("age",)
    predict_to_csv(timm_run, [str(synthetic_source / "test")], tmp_path / "in.csv", allow=age)
    foreign = [str(_foreign_images(tmp_path / "foreign"))]
    predict_to_csv(timm_run, foreign, tmp_path / "out.csv", allow=age)
    inside = pd.read_csv(tmp_path / "in.csv")
    outside = pd.read_csv(tmp_path / "out.csv")
    assert inside["ood"].mean() <= 0.15, inside["ood_score"].describe()
    assert outside["ood"].mean() >= 0.9, outside[["path", "ood_score"]]
    assert (outside["ood_score"] >= 1).equals(outside["ood"])


def test_predict_columns_csv_lists_dicom_and_awkward_paths(run_dir, synthetic_source, tmp_path):
    weird = tmp_path / "Röntgen bilder 胸部"
    weird.mkdir()
    src = sorted((synthetic_source / "test" / "NORMAL").iterdir())[0]
    img = cv2.imread(str(src), cv2.IMREAD_GRAYSCALE)
    cv2.imencode(".png", img)[1].tofile(str(weird / "patient 1 ü.png"))
    write_dicom(dicom_dataset(img.astype(np.uint16) * 16, bits_stored=12), weird / "scan.dcm")
    mono1 = dicom_dataset(
        (4095 - img.astype(np.uint16) * 16), photometric="MONOCHROME1", bits_stored=12
    )
    write_dicom(mono1, weird / "scan_mono1.dcm")
    write_dicom(dicom_dataset(None), weird / "nopixels.dcm")
    (weird / "empty.jpg").write_bytes(b"")
    from PIL import Image

    Image.fromarray(img).convert("RGBA").save(weird / "rgba.png")
    Image.fromarray(img).convert("CMYK").save(weird / "cmyk.jpg")
    cv2.imwrite(str(weird / "sixteen.png"), img.astype(np.uint16) * 257)
    (weird / "bomb.png").write_bytes(png_header_only(60_000, 60_000))
    (weird / "notes.png").write_text("not an image")
    jpeg = cv2.imencode(".jpg", img)[1].tobytes()
    (weird / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    listing = tmp_path / "list.csv"
    pd.DataFrame(
        {"path": ["Röntgen bilder 胸部/patient 1 ü.png", str(weird / "scan.dcm"), "missing.png"]}
    ).to_csv(listing, index=False)
    counts = predict_to_csv(
        run_dir,
        [str(weird), str(listing)],
        tmp_path / "p.csv",
        batch_size=2,
        workers=2,
        allow=("age",),  # synthetic films are nobody's: the population check would refuse them
    )
    df = pd.read_csv(tmp_path / "p.csv", keep_default_na=False)
    assert list(df.columns) == CSV_COLUMNS
    truncated_ok = (df["path"].str.endswith("truncated.jpg") & (df["status"] == "ok")).sum()
    assert len(df) == 11 + 3  # every input has its row
    # readable: the PNG and scan.dcm (each twice: folder and list), MONOCHROME1, RGBA, CMYK,
    # 16-bit; failing: empty, bomb, text, missing, truncated (unless libjpeg pads); skipped:
    # the DICOM without pixels, which is no image
    assert counts.ok == 8 + truncated_ok and counts.failed == 5 - truncated_ok
    assert counts.skipped == 1 and counts.out_of_scope == 0
    assert df["model_id"].nunique() == 1 and df["model_id"][0].endswith(
        RunFiles(run_dir).weights_sha256()[:12]
    )
    by_name = df.set_index(df["path"].map(lambda p: p.split("/")[-1]))
    assert "DICOM without pixel data" in by_name.loc["nopixels.dcm", "error"]
    assert by_name.loc["nopixels.dcm", "status"] == "skipped"
    p_png = float(by_name.loc["patient 1 ü.png", "probability"].iloc[0])
    assert "empty" in by_name.loc["empty.jpg", "error"]
    assert "too large" in by_name.loc["bomb.png", "error"]
    assert "not a readable image" in by_name.loc["notes.png", "error"]
    for name in ("rgba.png", "cmyk.jpg", "sixteen.png"):
        assert by_name.loc[name, "status"] == "ok", name
    # RGBA and 16-bit hold the same picture as the PNG: same prediction
    assert float(by_name.loc["rgba.png", "probability"]) == pytest.approx(p_png, abs=1e-6)
    assert float(by_name.loc["sixteen.png", "probability"]) == pytest.approx(p_png, abs=0.02)
    # the PNG and the DICOM of the same pixels (and its MONOCHROME1 inverse) agree
    assert float(by_name.loc["scan.dcm", "probability"].iloc[0]) == pytest.approx(p_png, abs=0.02)
    assert float(by_name.loc["scan_mono1.dcm", "probability"]) == pytest.approx(p_png, abs=0.02)
    ok = df[df["status"] == "ok"]
    assert set(ok["ood"]) <= {"true", "false"} and (ok["ood_score"].astype(float) > 0).all()


def test_predict_bad_backend_and_bad_list(run_dir, tmp_path):
    with pytest.raises(UserError, match="--backend"):
        predict_to_csv(run_dir, [str(tmp_path)], tmp_path / "p.csv", backend="tpu")
    (tmp_path / "empty.csv").write_text("path\n")
    with pytest.raises(UserError, match="no rows"):
        predict_to_csv(run_dir, [str(tmp_path / "empty.csv")], tmp_path / "p.csv")
