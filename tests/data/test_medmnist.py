"""The MedMNIST layout: PneumoniaMNIST's .npz read by `data prepare` end to end, its official
splits kept, its pixels unchanged, and the report saying grouping is by duplicates only."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pneumoscope.core.errors import UserError
from pneumoscope.data.layouts.medmnist import NOTE
from pneumoscope.data.prepare import prepare
from pneumoscope.data.preprocess import PreprocessConfig
from pneumoscope.data.public import catalog
from pneumoscope.data.sources import detect_layout, read_source
from tests.helpers import medmnist_npz

SPLIT_SIZES = {"train": 40, "val": 100, "test": 20}  # val >= 100 is kept as given


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PNEUMOSCOPE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_prepare_keeps_the_official_splits_and_the_pixels(tmp_path):
    npz = tmp_path / "pneumoniamnist.npz"
    medmnist_npz(npz, SPLIT_SIZES, px=32, seed=3)
    out = tmp_path / "data"
    prepare(npz, out, PreprocessConfig(img_size=32, clahe=False), workers=1, progress=False)
    m = pd.read_csv(out / "manifest.csv")
    assert m["split"].value_counts().to_dict() == SPLIT_SIZES
    assert (m["split"] == m["source_split"]).all()
    images = np.load(out / "images.npy")
    with np.load(npz) as z:
        for row in m.itertuples():
            split, i = row.split, int(row.path.rsplit("_", 1)[1][:-4])
            assert np.array_equal(images[row.index], z[f"{split}_images"][i]), row.path
            assert row.label == z[f"{split}_labels"][i, 0]
    assert m["patient"].is_unique and (m["age_group"] == "child").all()
    report = json.loads((out / "data_report.json").read_text())
    assert report["sources"][0]["layout"] == "medmnist"
    assert f"pneumoniamnist: {NOTE}" in report["warnings"]
    md = (out / "data_report.md").read_text()
    assert "Grouping it allows: by duplicates only: MedMNIST gives no patient ids" in md
    assert "Licence: CC BY 4.0" in md and "doi:10.1038/s41597-022-01721-8" in md


def test_the_folder_a_download_leaves_is_read_as_it_is(tmp_path):
    folder = tmp_path / "pneumoniamnist_64"
    folder.mkdir()
    medmnist_npz(folder / "pneumoniamnist_64.npz", px=64)
    (folder / catalog.MARKER).write_text(json.dumps({"dataset": "pneumoniamnist"}))
    assert detect_layout(folder) == "medmnist"
    assert detect_layout(folder / "pneumoniamnist_64.npz") == "medmnist"
    read = read_source("pm", folder)
    assert [sum(r.split == s for r in read.rows) for s in ("train", "val", "test")] == [8, 4, 4]
    assert sum(r.label for r in read.rows) == 8  # labels 0, 1, 0, 1, ...


def test_images_are_written_once_per_file_content(tmp_path, cache):
    npz = tmp_path / "pneumoniamnist_28.npz"
    medmnist_npz(npz, seed=1)
    first = read_source("pm", npz).rows
    stamp = {r.path: os.stat(r.path).st_mtime_ns for r in first}
    again = read_source("pm", npz).rows
    assert {r.path: os.stat(r.path).st_mtime_ns for r in again} == stamp
    medmnist_npz(npz, seed=2)  # other pixels: another folder
    other = read_source("pm", npz).rows
    assert {r.path for r in other}.isdisjoint(stamp)
    assert len(list((cache / "medmnist").iterdir())) == 2  # and nothing half-written


def test_what_is_not_pneumoniamnist_is_refused_in_one_line(tmp_path, cache):
    two = tmp_path / "two"
    two.mkdir()
    medmnist_npz(two / "pneumoniamnist_28.npz")
    medmnist_npz(two / "pneumoniamnist_64.npz", px=64)
    with pytest.raises(UserError, match="found pneumoniamnist_28.npz, pneumoniamnist_64.npz"):
        read_source("pm", two)
    breast = tmp_path / "breastmnist.npz"
    medmnist_npz(breast)
    with pytest.raises(UserError, match="not PneumoniaMNIST"):
        read_source("b", breast)
    other = tmp_path / "pneumoniamnist_other.npz"
    np.savez(other, images=np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(UserError, match="is a file but not a .csv"):  # no layout takes it
        detect_layout(other)
    with pytest.raises(UserError, match="not a MedMNIST file"):
        read_source("o", other, layout="medmnist")


def test_labels_that_are_not_0_or_1_stop_before_anything_is_kept(tmp_path, cache):
    npz = tmp_path / "pneumoniamnist.npz"
    medmnist_npz(npz)
    arrays = dict(np.load(npz))
    arrays["test_labels"] = arrays["test_labels"] + 1  # 1 and 2
    np.savez(npz, **arrays)
    with pytest.raises(UserError, match="test_labels are not binary"):
        read_source("pm", npz)
    assert not (cache / "medmnist").exists() or not any((cache / "medmnist").iterdir())


def test_a_device_or_other_non_folder_source_is_one_line():
    """Not a folder, not a regular file (a character device): the same one-line refusal."""
    with pytest.raises(UserError, match="is a file but not a .csv or .npz"):
        detect_layout(Path("/dev/null"))
