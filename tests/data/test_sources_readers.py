"""Source readers: the Covid-19 & Pneumonia layout, CSV listings, RSNA, detection, specs."""

from __future__ import annotations

import os
import warnings
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from pneumoscope.core.errors import UserError
from pneumoscope.data.layouts.covid import COVID_EXCLUDED
from pneumoscope.data.sources import LAYOUTS, detect_layout, parse_source_spec, read_source
from tests.helpers import (
    dicom_dataset,
    dicom_ramp,
    fake_xray,
    scan_class_folders,
    write_dicom,
    write_kaggle_layout,
)


def _img(path: Path, pneumonia: bool = False, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), fake_xray(np.random.default_rng(seed), pneumonia, 32))
    return path


def _covid_layout(root: Path, with_data_level: bool = True) -> Path:
    """train: 2 COVID19, 3 NORMAL, 4 PNEUMONIA; test: 1, 1, 2 (folder names in odd case)."""
    base = root / "Data" if with_data_level else root
    counts = {"train": (2, 3, 4), "test": (1, 1, 2)}
    names = {
        "train": ("COVID19", "NORMAL", "PNEUMONIA"),
        "test": ("Covid19", "normal", "Pneumonia"),
    }
    for split, ns in counts.items():
        for cls, n in zip(names[split], ns, strict=True):
            for i in range(n):
                _img(base / split / cls / f"{cls.upper()}({i}).jpg", cls.lower() != "normal", i)
    return root


# --- Covid-19 & Pneumonia -----------------------------------------------------------------


def test_covid_layout_leaves_covid_out_by_default(tmp_path):
    root = _covid_layout(tmp_path / "covid")
    assert detect_layout(root) == "covid19-pneumonia"
    read = read_source("covid", root)
    assert read.layout == "covid19-pneumonia"
    counts = Counter((r.split, r.label) for r in read.rows)
    assert counts == {("train", 0): 3, ("train", 1): 4, ("test", 0): 1, ("test", 1): 2}
    assert len(read.excluded) == 3
    assert {e.reason for e in read.excluded} == {COVID_EXCLUDED}
    assert all("COVID19(" in e.path and e.source == "covid" for e in read.excluded)
    assert {r.age_group for r in read.rows} == {"child"}  # the pediatric copies
    assert all(Path(r.path).is_absolute() and r.source == "covid" for r in read.rows)
    # names carry no patient: every file is its own group, even NORMAL(0) vs PNEUMONIA(0)
    assert len({r.patient for r in read.rows}) == len(read.rows)
    assert any("COVID19" in n for n in read.notes)


def test_covid_layout_with_covid_as_pneumonia(tmp_path):
    root = _covid_layout(tmp_path / "covid", with_data_level=False)
    assert detect_layout(root) == "covid19-pneumonia"
    read = read_source("c", root, covid_as="pneumonia")
    assert not read.excluded
    covid = [r for r in read.rows if "COVID19(" in r.path]
    assert len(covid) == 3 and {(r.label, r.age_group) for r in covid} == {(1, "adult")}
    assert {r.age_group for r in read.rows if r not in covid} == {"child"}
    assert len(read.rows) == 13  # 9 train + 4 test


def test_covid_layout_read_as_class_folders_notes_the_unread_folder(tmp_path):
    root = _covid_layout(tmp_path / "covid")
    read = read_source("c", root, layout="class-folders")
    assert len(read.rows) == 10 and not read.excluded
    assert any("COVID19" in n and "not read" in n for n in read.notes)


# --- class folders -------------------------------------------------------------------------


def test_class_folders_age_group_default_and_pediatric_patients(tmp_path):
    root = write_kaggle_layout(tmp_path / "cx", {"train": 4, "test": 2})
    assert detect_layout(root) == "class-folders"
    read = read_source("ped", root)
    assert read.layout == "class-folders" and len(read.rows) == 12
    assert {r.age_group for r in read.rows} == {"child"}  # the pediatric set's names
    assert any("age group child" in n and "--age-group ped=adult" in n for n in read.notes)
    adult = read_source("ped", root, default_age_group="adult")
    assert {r.age_group for r in adult.rows} == {"adult"}  # told otherwise
    other = tmp_path / "other"
    for k, f in enumerate(sorted((root / "train" / "NORMAL").iterdir())):
        (other / "NORMAL").mkdir(parents=True, exist_ok=True)
        (other / "NORMAL" / f"film{k}.jpeg").write_bytes(f.read_bytes())
    assert {r.age_group for r in read_source("o", other).rows} == {""}  # unknown unless told
    assert all(r.patient.startswith(("person", "im-")) for r in read.rows)
    child = read_source("ped", root, default_age_group="child")
    assert {r.age_group for r in child.rows} == {"child"}
    assert [r.path for r in child.rows] == [r.path for r in scan_class_folders(root)]


def test_dicom_headers_fill_age_sex_view_but_not_the_patient(tmp_path):
    root = write_kaggle_layout(tmp_path / "cx", {"train": 2})
    attrs = dict(PatientID="ANON", PatientAge="045Y", PatientSex="F", ViewPosition="AP")
    for i in range(2):
        ds = dicom_dataset(dicom_ramp(0, 255, np.uint8, 32, 32), bits_stored=8, **attrs)
        write_dicom(ds, root / "train" / "NORMAL" / f"scan{i}.dcm")
    read = read_source("h", root, default_age_group="child")
    dcm = [r for r in read.rows if r.path.endswith(".dcm")]
    assert [(r.age, r.age_group, r.sex, r.view) for r in dcm] == [(45.0, "adult", "F", "AP")] * 2
    assert len({r.patient for r in dcm}) == 2  # a shared anonymised PatientID merges nothing
    assert {r.age_group for r in read.rows if r not in dcm} == {"child"}


# --- CSV ---------------------------------------------------------------------------------


def _csv_tree(tmp_path: Path) -> Path:
    for i in range(4):
        _img(tmp_path / "imgs" / f"x{i}.png", i % 2 == 1, i)
    return tmp_path


def test_csv_relative_paths_text_labels_and_metadata(tmp_path):
    _csv_tree(tmp_path)
    absolute = tmp_path / "imgs" / "x3.png"
    (tmp_path / "list.csv").write_text(
        "Path,Label,PatientID,Age,Sex,View Position,Split\n"
        "imgs/x0.png,NORMAL,p1,7,female,pa,train\n"
        "imgs/x1.png,1,p1,45,M,AP,validation\n"
        "imgs/x2.png,normal,,058Y,,,test\n"
        f"{absolute},Pneumonia,p3,,X,,\n"
        "\n"
        "imgs/missing.png,0,p4,200,,,train\n"
    )
    assert detect_layout(tmp_path / "list.csv") == "csv"
    read = read_source("lst", tmp_path / "list.csv")
    assert read.layout == "csv" and not read.excluded
    rows = {Path(r.path).name: r for r in read.rows}
    assert set(rows) == {"x0.png", "x1.png", "x2.png", "x3.png", "missing.png"}
    assert rows["x0.png"].path == str(tmp_path.resolve() / "imgs" / "x0.png")
    x0, x1, x2, x3 = (rows[f"x{i}.png"] for i in range(4))
    assert (x0.label, x0.patient, x0.age, x0.age_group, x0.sex, x0.view, x0.split) == (
        0, "p1", 7.0, "child", "F", "PA", "train"
    )  # fmt: skip
    assert (x1.label, x1.age_group, x1.sex, x1.split) == (1, "adult", "M", "val")
    assert (x2.label, x2.age, x2.age_group, x2.split) == (0, 58.0, "adult", "test")
    assert x2.patient  # no patient column value: the file is its own patient
    assert (x3.label, x3.sex, x3.age_group, x3.path) == (1, "", "", str(absolute))
    missing = rows["missing.png"]  # not on disk: stays a row, the decoder rejects it
    assert missing.age is None and missing.age_group == ""  # age 200 is implausible
    assert any("ages not understood" in n for n in read.notes)


def test_csv_bad_lines_become_exclusions_with_line_numbers(tmp_path):
    _csv_tree(tmp_path)
    (tmp_path / "l.csv").write_text(
        "path,label,split\n"
        "imgs/x0.png,0,\n"
        "imgs/x1.png,covid,\n"
        ",1,\n"
        "imgs/x2.png,1,holdout\n"
        "imgs/x3.png,,\n"
    )
    read = read_source("l", tmp_path / "l.csv", default_age_group="adult")
    assert [Path(r.path).name for r in read.rows] == ["x0.png"]
    assert read.rows[0].age_group == "adult"
    reasons = [e.reason for e in read.excluded]
    assert len(reasons) == 4  # 5 listed = 1 row + 4 excluded: nothing vanishes
    assert "line 3" in reasons[0] and "'covid'" in reasons[0]
    assert "line 4" in reasons[1] and "empty path" in reasons[1]
    assert "line 5" in reasons[2] and "'holdout'" in reasons[2]
    assert "line 6" in reasons[3] and "label ''" in reasons[3]


def test_csv_semicolons_and_a_folder_with_one_csv(tmp_path):
    _csv_tree(tmp_path)
    (tmp_path / "l.csv").write_text("file;class\nimgs/x0.png;0\nimgs/x1.png;1\n")
    read = read_source("l", tmp_path, layout="csv")
    assert [(Path(r.path).name, r.label) for r in read.rows] == [("x0.png", 0), ("x1.png", 1)]


def test_csv_missing_columns_is_one_clear_error(tmp_path):
    (tmp_path / "l.csv").write_text("image_name,diagnosis_text\na.png,0\n")
    with pytest.raises(
        UserError, match=r"missing column 'path' and 'label' \(found: image_name, diagnosis_text\)"
    ):
        read_source("l", tmp_path / "l.csv")
    (tmp_path / "m.csv").write_text("path,age\na.png,3\n")
    with pytest.raises(UserError, match=r"missing column 'label' \(found: path, age\)"):
        read_source("m", tmp_path / "m.csv")
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(UserError, match="empty"):
        read_source("e", tmp_path / "e.csv")


def test_csv_covid_labels_follow_covid_as(tmp_path):
    _csv_tree(tmp_path)
    (tmp_path / "l.csv").write_text(
        "path,label\nimgs/x0.png,NORMAL\nimgs/x1.png,COVID-19\nimgs/x2.png,COVID19\n"
        "imgs/x3.png,covid\nimgs/x4.png,OTHER\n"
    )
    read = read_source("l", tmp_path / "l.csv")
    assert [(Path(r.path).name, r.label) for r in read.rows] == [("x0.png", 0)]
    reasons = [e.reason for e in read.excluded]
    assert all("--covid-as pneumonia" in r for r in reasons[:3]) and "'COVID19'" in reasons[1]
    assert "line 6" in reasons[3] and "'OTHER' is not" in reasons[3]
    assert any("3 COVID-19 lines left out" in n for n in read.notes)
    read = read_source("l", tmp_path / "l.csv", covid_as="pneumonia")
    got = [(Path(r.path).name, r.label) for r in read.rows]
    assert got == [("x0.png", 0), ("x1.png", 1), ("x2.png", 1), ("x3.png", 1)]
    assert [e.reason for e in read.excluded] == [reasons[3]]  # OTHER stays out, same reason


@pytest.mark.realdata
def test_adults_csv_counts_with_and_without_covid_as(shared_data):
    """adult_public/adults.csv: NORMAL 17, PNEUMONIA 92, COVID-19 210, OTHER 29 (its README)."""
    csv = shared_data / "adult_public" / "adults.csv"
    read = read_source("adults", csv)
    assert read.layout == "csv"
    assert Counter(r.label for r in read.rows) == {0: 17, 1: 92}
    why = Counter("--covid-as pneumonia" in e.reason for e in read.excluded)
    assert why == {True: 210, False: 29}
    read = read_source("adults", csv, covid_as="pneumonia")
    assert Counter(r.label for r in read.rows) == {0: 17, 1: 92 + 210}
    assert len(read.excluded) == 29 and all("'OTHER'" in e.reason for e in read.excluded)


# --- RSNA --------------------------------------------------------------------------------

_LABELS = (
    "patientId,x,y,width,height,Target\n"
    "p1,10,10,5,5,1\n"
    "p1,30,30,5,5,1\n"  # a second box: still one image
    "p2,,,,,0\n"
    "p3,,,,,0\n"
    "p4,,,,,0\n"  # listed, but its DICOM file is missing
)
_DETAIL = (
    "patientId,class\n"
    "p1,Lung Opacity\n"
    "p1,Lung Opacity\n"
    "p2,Normal\n"
    "p3,No Lung Opacity / Not Normal\n"
    "p4,Normal\n"
)


def _rsna(root: Path, detail: bool = True, image_dir: str = "stage_2_train_images") -> Path:
    images = root / image_dir
    images.mkdir(parents=True)
    (root / "stage_2_train_labels.csv").write_text(_LABELS)
    if detail:
        (root / "stage_2_detailed_class_info.csv").write_text(_DETAIL)
    tags = {
        "p1": dict(PatientID="RSNA-1", PatientAge="058Y", PatientSex="F", ViewPosition="PA"),
        "p2": dict(PatientID="RSNA-2", PatientAge="7", PatientSex="M", ViewPosition="AP"),
        "p3": dict(PatientID="RSNA-3", PatientAge="148", PatientSex="O"),
    }
    for pid, attrs in tags.items():
        with warnings.catch_warnings():  # RSNA stores ages as bare numbers ('7'): not strict AS
            warnings.simplefilter("ignore", UserWarning)
            ds = dicom_dataset(dicom_ramp(0, 255, np.uint8, 32, 32), bits_stored=8, **attrs)
        write_dicom(ds, images / f"{pid}.dcm")
    (root / "stage_2_test_images").mkdir()
    write_dicom(
        dicom_dataset(dicom_ramp(0, 255, np.uint8, 32, 32), bits_stored=8),
        root / "stage_2_test_images" / "t1.dcm",
    )
    return root


def test_rsna_labels_boxes_classes_and_dicom_tags(tmp_path):
    root = _rsna(tmp_path / "rsna")
    assert detect_layout(root) == "rsna"
    read = read_source("rsna", root)
    assert read.layout == "rsna"
    rows = {Path(r.path).stem: r for r in read.rows}
    assert sorted(rows) == ["p1", "p2", "p4"]  # p1's two boxes are one image
    p1, p2, p4 = rows["p1"], rows["p2"], rows["p4"]
    assert (p1.label, p1.patient, p1.age, p1.age_group, p1.sex, p1.view, p1.split) == (
        1, "RSNA-1", 58.0, "adult", "F", "PA", ""
    )  # fmt: skip
    assert (p2.label, p2.age, p2.age_group, p2.sex, p2.view) == (0, 7.0, "child", "M", "AP")
    assert p4.label == 0 and not Path(p4.path).exists()  # rejected later: file not found
    assert p4.path == str(root.resolve() / "stage_2_train_images" / "p4.dcm")
    assert p4.patient == "p4" and p4.age_group == ""
    (ex,) = read.excluded
    assert Path(ex.path).stem == "p3" and "Not Normal" in ex.reason
    assert any("1 listed images have no DICOM" in n for n in read.notes)
    assert any("not in stage_2_train_labels.csv" in n for n in read.notes)  # t1.dcm
    labels_file = root / "stage_2_train_labels.csv"
    assert detect_layout(labels_file) == "rsna"
    assert read_source("rsna", labels_file).rows == read.rows


def test_rsna_not_normal_as_normal_and_implausible_age(tmp_path):
    root = _rsna(tmp_path / "rsna")
    read = read_source("rsna", root, rsna_not_normal="normal", default_age_group="adult")
    assert not read.excluded
    p3 = next(r for r in read.rows if Path(r.path).stem == "p3")
    assert (p3.label, p3.age, p3.age_group, p3.sex) == (0, None, "adult", "")  # age 148
    assert any("implausible" in n for n in read.notes)


def test_rsna_without_detail_file_labels_target0_normal_with_a_note(tmp_path):
    root = _rsna(tmp_path / "rsna", detail=False, image_dir="dicoms/train")
    read = read_source("rsna", root)
    assert not read.excluded
    assert sorted((Path(r.path).stem, r.label) for r in read.rows) == [
        ("p1", 1), ("p2", 0), ("p3", 0), ("p4", 0)
    ]  # fmt: skip
    assert Path(read.rows[0].path).parent.name == "train"  # DICOMs found in another folder
    assert any("detailed_class_info.csv not found" in n and "3 Target-0" in n for n in read.notes)


def test_rsna_bad_target_lines_and_missing_columns(tmp_path):
    root = _rsna(tmp_path / "rsna")
    (root / "stage_2_train_labels.csv").write_text(_LABELS + "p9,,,,,maybe\n")
    read = read_source("rsna", root, layout="rsna")
    bad = [e for e in read.excluded if "maybe" in e.reason]
    assert len(bad) == 1 and "line 7" in bad[0].reason
    (root / "stage_2_train_labels.csv").write_text("patientId,x,y\np1,1,1\n")
    with pytest.raises(UserError, match=r"missing column target \(found: patientId, x, y\)"):
        read_source("rsna", root)


def test_rsna_rows_go_through_the_cache(tmp_path):
    from pneumoscope.data.preprocess import PreprocessConfig
    from tests.helpers import build_cache

    read = read_source("rsna", _rsna(tmp_path / "rsna"))
    res = build_cache(read.rows, tmp_path / "cache", PreprocessConfig(32), "", 1, False)
    assert len(res.manifest) == 2 and len(res.rejected) == 1
    assert "cannot open" in res.rejected["reason"].iloc[0]


# --- detection and specs -------------------------------------------------------------------


def test_detect_ambiguous_and_unknown_folders(tmp_path):
    both = tmp_path / "both"
    write_kaggle_layout(both / "ped", {"train": 2})
    _covid_layout(both / "cov")
    with pytest.raises(UserError, match=r"several sources: cov/ \(covid19-pneumonia\), ped/ "):
        detect_layout(both)
    with pytest.raises(UserError, match="--layout"):
        read_source("x", both)
    (tmp_path / "odd" / "cats").mkdir(parents=True)
    (tmp_path / "odd" / "notes.txt").write_text("x")
    with pytest.raises(UserError, match=r"no known layout .*found: cats/, notes.txt.*--layout"):
        detect_layout(tmp_path / "odd")
    (tmp_path / "odd" / "labels.csv").write_text("path,label\n")
    with pytest.raises(UserError, match="give the file itself"):
        detect_layout(tmp_path / "odd")
    write_kaggle_layout(tmp_path / "odd" / "ped", {"train": 2})
    with pytest.raises(UserError, match="sub-folder ped/ looks like a class-folders source"):
        detect_layout(tmp_path / "odd")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(UserError, match="not a .csv"):
        detect_layout(tmp_path / "f.txt")
    with pytest.raises(UserError, match="not found"):
        detect_layout(tmp_path / "nope")


def test_rsna_wins_over_class_folders_and_zip_nesting_is_skipped(tmp_path):
    root = _rsna(tmp_path / "outer" / "rsna")
    write_kaggle_layout(root, {"train": 1})
    assert detect_layout(root) == "rsna"
    assert detect_layout(tmp_path / "outer") == "rsna"
    zipped = write_kaggle_layout(tmp_path / "z" / "chest_xray", {"train": 1})
    assert detect_layout(zipped.parent) == "class-folders"


def test_read_source_checks_its_options(tmp_path):
    root = write_kaggle_layout(tmp_path / "cx", {"train": 1})
    for kwargs, flag in [
        ({"layout": "folders"}, "--layout"),
        ({"covid_as": "normal"}, "--covid-as"),
        ({"rsna_not_normal": "drop"}, "--rsna-not-normal"),
        ({"default_age_group": "elderly"}, "age group"),
    ]:
        with pytest.raises(UserError, match=flag):
            read_source("x", root, **kwargs)
    with pytest.raises(UserError, match="not an RSNA folder"):
        read_source("x", root, layout="rsna")
    with pytest.raises(UserError, match="no class folders"):
        read_source("x", tmp_path / "cx" / "train" / "NORMAL", layout="covid19-pneumonia")
    assert set(LAYOUTS) == {"auto", "class-folders", "covid19-pneumonia", "csv", "medmnist", "rsna"}


def test_parse_source_spec(tmp_path, monkeypatch):
    assert parse_source_spec("ped=/data/chest_xray") == ("ped", Path("/data/chest_xray"))
    assert parse_source_spec(" adult-1 = data/x ") == ("adult-1", Path("data/x"))
    assert parse_source_spec("/data/chest_xray/") == ("chest_xray", Path("/data/chest_xray"))
    assert parse_source_spec("lists/labels.csv") == ("labels", Path("lists/labels.csv"))
    odd = tmp_path / "a=b"
    odd.mkdir()
    assert parse_source_spec(str(odd)) == ("a_b", odd)  # an existing path is taken whole
    monkeypatch.chdir(odd)
    assert parse_source_spec(".")[0] == "a_b"
    assert parse_source_spec("My X-rays (2)")[0] == "My_X-rays_2"
    assert parse_source_spec("~/x")[1] == Path(os.path.expanduser("~/x"))
    for bad in ("", "=data/x", "ped=", "my set=data/x", "-x=data"):
        with pytest.raises(UserError, match="--source|source name"):
            parse_source_spec(bad)
