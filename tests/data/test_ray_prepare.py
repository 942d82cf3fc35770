"""`data prepare --engine ray`: the decode-and-hash stage as a Ray Data job on a local
cluster started here, giving the very cache the local engine gives (images, hashes,
manifest, rejected files and their reasons); without Ray, one line saying how to get it."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest

from pneumoscope.core.errors import UserError
from pneumoscope.data.config import DataConfig
from pneumoscope.data.prepare import prepare_data
from tests.helpers import linked_kaggle_slice

TABLES = ("manifest.csv", "rejected.csv", "excluded.csv", "dropped.csv", "duplicates.csv")


@pytest.fixture(scope="module")
def source(shared_data, tmp_path_factory):
    """40 real films in the Kaggle layout (links), a truncated JPEG and a text file named
    .png among them."""
    root = tmp_path_factory.mktemp("ray_src") / "chest_xray"
    return linked_kaggle_slice(shared_data / "chest_xray_224", root, {"train": 12, "test": 8}, 23)


def _prepare(source, out, **engine):
    dc = DataConfig(sources=[str(source)], img_size=64, val_fraction=0.2, seed=0)
    return prepare_data(dc, out, workers=1, progress=False, **engine)


@pytest.mark.realdata
def test_ray_engine_writes_the_local_engines_cache(source, ray_cluster, tmp_path):
    local = _prepare(source, tmp_path / "local")
    remote = _prepare(source, tmp_path / "ray", engine="ray")
    for name in TABLES:
        a = pd.read_csv(tmp_path / "local" / name, dtype=str)
        b = pd.read_csv(tmp_path / "ray" / name, dtype=str)
        pd.testing.assert_frame_equal(a, b, obj=name)  # paths, hashes, splits, reasons
    a = np.load(tmp_path / "local" / "images.npy")
    b = np.load(tmp_path / "ray" / "images.npy")
    assert a.shape == (40, 64, 64) and np.array_equal(a, b)
    assert len(local.manifest) == 40 and local.manifest["sha1"].str.len().eq(40).all()
    rejected = dict(zip(remote.rejected["path"], remote.rejected["reason"], strict=True))
    assert sorted(p.rsplit("/", 1)[1] for p in rejected) == [
        "person9001_bacteria_1.jpeg",
        "person9002_bacteria_1.png",
    ]
    assert all(reason for reason in rejected.values())
    assert not list((tmp_path / "ray").glob(".images*"))  # the partial array moved into place


def test_ray_engine_without_ray_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails
    with pytest.raises(UserError) as err:
        _prepare(tmp_path / "nowhere", tmp_path / "out", engine="ray")
    assert "pip install 'pneumoscope[ray]'" in str(err.value) and "\n" not in str(err.value)


def test_unknown_engine_and_stray_address_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="--engine must be one of local, ray, got 'spark'"):
        _prepare(tmp_path, tmp_path / "out", engine="spark")
    with pytest.raises(UserError, match="--ray-address goes with --engine ray"):
        _prepare(tmp_path, tmp_path / "out", ray_address="127.0.0.1:6379")
