"""Adults and children, as docs/data.md tells a user to train them: an RSNA-layout folder of
adult DICOMs and a pediatric Kaggle folder, prepared apart and together; a model trained on
the adults, fine-tuned on the children with `--weights RUN`; one trained on both, evaluated
per age group (the adults' ages come from their DICOM headers, the children's group is
given with --age-group). The RSNA set is small and made here: real pediatric films written as RSNA
DICOMs (adult ages, RSNA's labels files), so the pixels carry a real signal."""

from __future__ import annotations

import json
import warnings

import cv2
import pytest

from tests.helpers import film_dataset, linked_kaggle_slice, run_cli, write_dicom

SIZE = "48"
FAST = ["--model", "seed_cnn", "--epochs", "2", "--batch-size", "16", "--threads", "1",
        "--accelerator", "cpu", "--precision", "fp32", "--no-progress"]  # fmt: skip


def _rsna(src, root, n_per_class: int = 20):
    """``root`` in the RSNA challenge's layout: stage_2_train_images/*.dcm (adults aged
    30-69, PA), stage_2_train_labels.csv and stage_2_detailed_class_info.csv."""
    images = root / "stage_2_train_images"
    images.mkdir(parents=True)
    labels, detail = ["patientId,x,y,width,height,Target"], ["patientId,class"]
    for label, target, klass in (("NORMAL", 0, "Normal"), ("PNEUMONIA", 1, "Lung Opacity")):
        for k, f in enumerate(sorted((src / "train" / label).iterdir())[1::17][:n_per_class]):
            pid = f"{label[0].lower()}{k:03d}"
            gray = cv2.imread(str(f), cv2.IMREAD_GRAYSCALE)
            with warnings.catch_warnings():  # RSNA ages are bare numbers, not strict AS
                warnings.simplefilter("ignore", UserWarning)
                ds = film_dataset(gray, PatientID=f"RSNA-{pid}", PatientAge=str(30 + k * 2),
                                  ViewPosition="PA", PatientSex="F")  # fmt: skip
            write_dicom(ds, images / f"{pid}.dcm")
            box = "10,10,20,20" if target else ",,,"
            labels.append(f"{pid},{box},{target}")
            detail.append(f"{pid},{klass}")
    (root / "stage_2_train_labels.csv").write_text("\n".join(labels) + "\n")
    (root / "stage_2_detailed_class_info.csv").write_text("\n".join(detail) + "\n")
    return root


@pytest.fixture(scope="module")
def sources(shared_data, tmp_path_factory):
    base = tmp_path_factory.mktemp("adults_children")
    src = shared_data / "chest_xray_224"
    adults = _rsna(src, base / "rsna")
    children = linked_kaggle_slice(src, base / "chest_xray", {"train": 20, "test": 8}, 29)
    return adults, children


def _ok(*args: str) -> None:
    r = run_cli(*args)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]


@pytest.mark.realdata
def test_adult_model_fine_tuned_on_children_records_its_start(sources, tmp_path):
    adults, children = sources
    _ok("data", "prepare", "--source", f"adults={adults}", "--out", str(tmp_path / "a"),
        "--img-size", SIZE)  # fmt: skip
    manifest = (tmp_path / "a" / "manifest.csv").read_text()
    assert manifest.count(",adult,") == 40 and "RSNA-" in manifest
    _ok("train", "--data", str(tmp_path / "a"), "--out", str(tmp_path / "adults"), *FAST)
    _ok("data", "prepare", "--source", f"kids={children}", "--out", str(tmp_path / "c"),
        "--img-size", SIZE)  # fmt: skip
    _ok("train", "--data", str(tmp_path / "c"), "--out", str(tmp_path / "children"),
        "--weights", str(tmp_path / "adults"), "--lr", "3e-4", *FAST)  # fmt: skip
    card = json.loads((tmp_path / "children" / "model.json").read_text())
    init = card["training"]["initial_weights"]
    assert str(tmp_path / "adults") in init["source"]
    assert init["loaded"] == init["of"] and not init["skipped"]  # same model: every tensor
    ages = card["population"]["age_groups"]
    assert ages == ["child"] or set(ages) == {"child"}


@pytest.mark.realdata
def test_one_model_on_both_is_evaluated_per_age_group(sources, tmp_path):
    adults, children = sources
    _ok("data", "prepare", "--source", f"adults={adults}", "--source", f"kids={children}",
        "--age-group", "kids=child", "--out", str(tmp_path / "ac"), "--img-size", SIZE)  # fmt: skip
    _ok("train", "--data", str(tmp_path / "ac"), "--out", str(tmp_path / "both"), *FAST)
    _ok("evaluate", "--run", str(tmp_path / "both"), "--data", str(tmp_path / "ac"),
        "--split", "test", "--out", str(tmp_path / "eval"), "--bootstrap", "50")  # fmt: skip
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    groups = metrics["per_group"]
    assert {"adult", "child"} <= set(groups.get("age_group", {})), groups.keys()
    assert set(groups.get("source", {})) >= {"adults", "kids"}
