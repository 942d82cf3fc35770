"""End to end on a small slice of the real pediatric X-rays in ../shared/data (read in place)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from pneumoscope.data.cache import open_cache
from pneumoscope.data.prepare import prepare
from pneumoscope.data.preprocess import PreprocessConfig
from pneumoscope.evaluation.evaluate import evaluate
from pneumoscope.inference.predict import predict_to_csv
from pneumoscope.model.run import load_run
from pneumoscope.training.train import TrainConfig, train

pytestmark = pytest.mark.realdata


def _slice(shared_data, tmp_path, per_class: dict[str, int]):
    """Symlinks to the first N real images per split and class: ~100 images, nothing copied."""
    src = shared_data / "chest_xray_224"
    root = tmp_path / "slice"
    for split, n in per_class.items():
        for label in ("NORMAL", "PNEUMONIA"):
            d = root / split / label
            d.mkdir(parents=True)
            for f in sorted((src / split / label).iterdir())[:n]:
                (d / f.name).symlink_to(f)
    return root


def test_real_slice_end_to_end(shared_data, tmp_path):
    root = _slice(shared_data, tmp_path, {"train": 40, "test": 10})  # 100 images
    res = prepare(
        root,
        tmp_path / "data",
        PreprocessConfig(img_size=64),
        val_fraction=0.2,
        seed=0,
        workers=2,
        progress=False,
    )
    assert len(res.rejected) == 0 and len(res.manifest) == 100
    cache = open_cache(tmp_path / "data")
    tr, va = cache.split("train"), cache.split("val")
    assert set(tr["patient"]).isdisjoint(va["patient"])
    assert cache.images.shape == (100, 64, 64)
    assert 20 < cache.images.mean() < 230  # real pixels, not an empty array

    card = train(
        TrainConfig(
            data=str(tmp_path / "data"),
            out=str(tmp_path / "run"),
            model="resnet10t",
            epochs=2,
            batch_size=16,
            seed=0,
        ),
        progress=False,
    )
    assert card.training_data.counts["test"]["total"] == 20
    m = evaluate(tmp_path / "run", tmp_path / "data", "test")
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["n"] == 20

    # predict from the original JPEGs agrees with evaluation from the cache
    counts = predict_to_csv(tmp_path / "run", [str(root / "test")], tmp_path / "p.csv")
    assert counts.ok == 20 and counts.failed == 0
    df = pd.read_csv(tmp_path / "p.csv")
    test = cache.split("test")
    p_cache = load_run(tmp_path / "run").predict_proba(cache.images, rows=test["index"].to_numpy())
    # evaluate scored the test split's films with the run: its AUROC is theirs
    assert m["auroc"] == pytest.approx(roc_auc_score(test["label"], p_cache), abs=1e-9)
    by_name = dict(zip(df["path"].map(lambda p: p.split("/")[-1]), df["probability"], strict=True))
    for name, p in zip(test["path"].map(lambda p: p.split("/")[-1]), p_cache, strict=True):
        assert abs(by_name[name] - p) < 1e-5

    # Grad-CAM on real X-rays: one finite, non-constant heatmap per image
    from pneumoscope.inference.explain import explain_files
    from pneumoscope.inference.gradcam import gradcam

    files = sorted(str(f) for f in (root / "test").rglob("*.jpeg"))[:4]
    rows = explain_files(tmp_path / "run", files, tmp_path / "heat")
    assert [r["status"] for r in rows] == ["ok"] * 4
    assert all(Path(r["heatmap"]).stat().st_size > 1000 for r in rows)
    heat = gradcam(load_run(tmp_path / "run"), cache.images[test["index"].to_numpy()[:4]])
    assert np.isfinite(heat).all() and (heat.reshape(4, -1).std(axis=1) > 0).any()
