"""Reading class-folder layouts, patient ids, and leak-free validation splits."""

from __future__ import annotations

import numpy as np
import pytest

from pneumoscope.core.errors import UserError
from pneumoscope.data.layouts.base import patient_from_name
from pneumoscope.data.splits import MIN_GIVEN_VAL, assign_splits, grouped_val_split
from tests.helpers import scan_class_folders, write_kaggle_layout


@pytest.mark.parametrize(
    "name, patient",
    [
        ("person1000_bacteria_2931.jpeg", "person1000_bacteria"),
        ("person1000_virus_1681.jpeg", "person1000_virus"),
        ("person1_virus_6_1.jpeg", "person1_virus"),
        ("IM-0115-0001.jpeg", "im-0115"),
        ("IM-0117-0001-0002.jpeg", "im-0117"),
        ("NORMAL2-IM-0381-0001.jpeg", "normal2-im-0381"),
        ("scan_42.png", None),
    ],
)
def test_patient_from_pediatric_names(name, patient):
    assert patient_from_name(name) == patient


def test_unknown_names_are_their_own_group_even_across_class_folders(tmp_path):
    for label in ("NORMAL", "PNEUMONIA"):
        (tmp_path / "src" / label).mkdir(parents=True)
        (tmp_path / "src" / label / "x0.png").write_bytes(b"x")
    rows = scan_class_folders(tmp_path / "src")
    assert len({r.patient for r in rows}) == 2


def test_scan_with_split_folders(tmp_path):
    root = write_kaggle_layout(tmp_path / "cx", {"train": 4, "test": 2})
    rows = scan_class_folders(root)
    assert len(rows) == 12
    assert {r.split for r in rows} == {"train", "test"}
    assert {r.label for r in rows if "NORMAL" in r.path} == {0}
    assert {r.label for r in rows if "PNEUMONIA" in r.path} == {1}
    assert all(r.path.startswith("/") for r in rows)  # absolute: valid from any folder


def test_scan_class_folders_without_splits_and_extra_nesting(tmp_path):
    root = write_kaggle_layout(tmp_path / "zip" / "chest_xray", {"train": 3})
    flat = tmp_path / "flat"
    (root / "train").rename(flat)
    rows = scan_class_folders(flat)
    assert len(rows) == 6 and {r.split for r in rows} == {""}
    nested = write_kaggle_layout(tmp_path / "outer" / "chest_xray", {"train": 2, "test": 2})
    assert len(scan_class_folders(nested.parent)) == 8  # Kaggle zip's extra folder level


def test_scan_errors_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        scan_class_folders(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty folder"):
        scan_class_folders(tmp_path / "empty")
    (tmp_path / "other" / "cats").mkdir(parents=True)
    (tmp_path / "other" / "dogs").mkdir(parents=True)
    with pytest.raises(UserError, match="expected NORMAL/ and PNEUMONIA/"):
        scan_class_folders(tmp_path / "other")
    (tmp_path / "noimg" / "NORMAL").mkdir(parents=True)
    with pytest.raises(UserError, match="no image files"):
        scan_class_folders(tmp_path / "noimg")


def test_grouped_val_split_keeps_patients_whole_and_stratifies():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(400), 2)
    labels = np.repeat((rng.random(400) < 0.75).astype(int), 2)
    mask = grouped_val_split(labels, groups, 0.1, seed=0)
    assert set(groups[mask]).isdisjoint(groups[~mask])
    assert 0.07 < mask.mean() < 0.13
    assert abs(labels[mask].mean() - labels.mean()) < 0.05
    np.testing.assert_array_equal(mask, grouped_val_split(labels, groups, 0.1, seed=0))
    assert not np.array_equal(mask, grouped_val_split(labels, groups, 0.1, seed=1))


def test_tiny_given_val_is_folded_into_train_and_rebuilt():
    n = 300
    splits = ["train"] * n + ["val"] * 16 + ["test"] * 50
    labels = [i % 2 for i in range(len(splits))]
    patients = [f"p{i // 2}" for i in range(len(splits))]
    out, note = assign_splits(splits, labels, patients, 0.1, seed=0)
    assert "folded into train" in note
    assert out[-50:] == ["test"] * 50  # the given test split is untouched
    val = {p for p, s in zip(patients, out, strict=True) if s == "val"}
    train = {p for p, s in zip(patients, out, strict=True) if s == "train"}
    assert val and val.isdisjoint(train)
    assert MIN_GIVEN_VAL > 16


def test_large_given_val_is_kept():
    splits = ["train"] * 300 + ["val"] * 120 + ["test"] * 50
    labels = [i % 2 for i in range(len(splits))]
    out, note = assign_splits(splits, labels, [str(i) for i in range(len(splits))], 0.1, 0)
    assert out == splits and "kept" in note


def test_no_split_folders_carves_test_and_val_by_patient():
    splits = [""] * 400
    labels = [i % 2 for i in range(400)]
    patients = [f"p{i // 4}" for i in range(400)]
    out, _ = assign_splits(splits, labels, patients, 0.1, seed=0)
    by_split = {
        s: {p for p, o in zip(patients, out, strict=True) if o == s}
        for s in ("train", "val", "test")
    }
    assert all(by_split.values())
    assert by_split["train"].isdisjoint(by_split["val"])
    assert by_split["train"].isdisjoint(by_split["test"])
    assert by_split["val"].isdisjoint(by_split["test"])


def test_real_pediatric_names_validation_never_shares_a_patient(shared_data):
    """On the full real file list (no decoding): no patient in both train and validation."""
    rows = scan_class_folders(shared_data / "chest_xray_224")
    assert len(rows) == 5840
    out, _ = assign_splits(
        [r.split for r in rows], [r.label for r in rows], [r.patient for r in rows], 0.1, seed=0
    )
    train = {r.patient for r, s in zip(rows, out, strict=True) if s == "train"}
    val = {r.patient for r, s in zip(rows, out, strict=True) if s == "val"}
    assert train.isdisjoint(val)
    n_val = sum(s == "val" for s in out)
    assert 450 < n_val < 600
    assert sum(s == "test" for s in out) == 624
    multi = [p for p in train | val if sum(r.patient == p for r in rows[:2000]) > 1]
    assert multi, "the real set has patients with several images; grouping must matter"
