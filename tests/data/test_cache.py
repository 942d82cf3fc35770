"""Building the cache: every readable image stored once, every unreadable one reported."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pneumoscope.core.errors import UserError
from pneumoscope.data.cache import open_cache
from pneumoscope.data.prepare import prepare
from pneumoscope.data.preprocess import PreprocessConfig, load_image
from tests.helpers import write_kaggle_layout


def _add_bad_files(root):
    d = root / "train" / "PNEUMONIA"
    (d / "person900_bacteria_1.jpeg").write_bytes(b"")
    (d / "person901_bacteria_1.jpeg").write_bytes(b"not an image at all")
    good = (root / "train" / "NORMAL").iterdir().__next__().read_bytes()
    (d / "person902_bacteria_1.jpeg").write_bytes(good[: len(good) // 4])
    Image.new("RGBA", (70, 60), (120, 120, 120, 255)).save(d / "person903_bacteria_1.png")
    Image.new("CMYK", (70, 60), (10, 20, 30, 40)).save(d / "person904_bacteria_1.jpeg")
    Image.fromarray(np.full((60, 70), 3000, np.uint16)).save(d / "person905_bacteria_1.png")
    (d / "notes.txt").write_text("reader's notes, not an image")
    (d / ".DS_Store").write_bytes(b"\x00\x01")  # hidden: not data, not reported
    (d / "__MACOSX").mkdir()
    (d / "__MACOSX" / "._person1_bacteria_1.jpeg").write_bytes(b"\x00\x05\x16\x07")
    return {"person900_bacteria_1.jpeg", "person901_bacteria_1.jpeg", "notes.txt"}


@pytest.mark.parametrize("workers", [1, 2])
def test_prepare_writes_cache_and_reports_bad_files(tmp_path, workers):
    root = write_kaggle_layout(tmp_path / "src", {"train": 30, "test": 6})
    must_fail = _add_bad_files(root)
    res = prepare(
        root,
        tmp_path / "out",
        PreprocessConfig(img_size=48),
        val_fraction=0.2,
        seed=0,
        workers=workers,
        progress=False,
    )
    cache = open_cache(tmp_path / "out")
    rejected = pd.read_csv(tmp_path / "out" / "rejected.csv")
    rejected_names = {p.split("/")[-1] for p in rejected["path"]}
    assert must_fail <= rejected_names  # empty and non-image always rejected
    assert all(isinstance(r, str) and r for r in rejected["reason"])
    total_files = 30 * 2 + 6 * 2 + 7  # the visible files
    assert len(cache.manifest) + len(rejected) == total_files  # nothing silently dropped
    assert cache.images.shape == (len(cache.manifest), 48, 48)
    names = {p.split("/")[-1] for p in cache.manifest["path"]}
    assert {
        "person903_bacteria_1.png",
        "person904_bacteria_1.jpeg",
        "person905_bacteria_1.png",
    } <= names  # RGBA, CMYK, 16-bit are read
    assert set(cache.manifest["split"]) == {"train", "val", "test"}
    assert res.manifest["patient"].notna().all()
    # The cached pixels are exactly what the shared preprocessing function returns.
    row = cache.manifest.iloc[5]
    np.testing.assert_array_equal(
        cache.images[row["index"]], load_image(row["path"], PreprocessConfig(img_size=48))
    )


def test_prepare_same_seed_same_cache(tmp_path):
    root = write_kaggle_layout(tmp_path / "src", {"train": 20, "test": 4})
    for name in ("a", "b"):
        prepare(root, tmp_path / name, PreprocessConfig(img_size=32), workers=2, progress=False)
    a, b = open_cache(tmp_path / "a"), open_cache(tmp_path / "b")
    pd.testing.assert_frame_equal(a.manifest, b.manifest)
    np.testing.assert_array_equal(np.asarray(a.images), np.asarray(b.images))


def test_prepare_all_unreadable_is_a_user_error(tmp_path):
    for label in ("NORMAL", "PNEUMONIA"):
        d = tmp_path / "src" / label
        d.mkdir(parents=True)
        for i in range(12):
            (d / f"x{i}.png").write_bytes(b"garbage")
    with pytest.raises(UserError, match="none of the 24"):
        prepare(tmp_path / "src", tmp_path / "out", PreprocessConfig(img_size=32), progress=False)


def test_open_cache_on_a_wrong_folder(tmp_path):
    with pytest.raises(UserError, match="data prepare"):
        open_cache(tmp_path)


def test_an_old_cache_json_reads_with_defaults(tmp_path):
    """cache.json from an older release lacks counts, split note and data: typed defaults."""
    import json

    from pneumoscope.data.cache import CacheInfo

    info = CacheInfo.from_dict(json.loads(json.dumps({"preprocess": {"img_size": 64}})))
    assert info.preprocess.img_size == 64
    assert (info.counts, info.split_note, info.n_rejected, info.data) == ({}, "", 0, {})
