"""bench/eval_size.py: batch-norm statistics refitted at a larger size, validation AUROC per
size, the rule's decision, test figures only when a size is adopted."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.helpers import REPO

BENCH = REPO / "bench" / "eval_size.py"


@pytest.fixture(scope="module")
def resnet_run(data_dir, tmp_path_factory):
    """A one-epoch ResNet-18 at 32 px: global pooling, so it takes any size."""
    from pneumoscope.training.train import TrainConfig, train

    out = tmp_path_factory.mktemp("resnet")
    cfg = TrainConfig(data=str(data_dir), out=str(out), model="resnet18", epochs=1,
                      batch_size=16, precision="fp32", channels_last=False)  # fmt: skip
    train(cfg, progress=False)
    return out


@pytest.fixture(scope="module")
def data48(synthetic_source, tmp_path_factory):
    from pneumoscope.data.prepare import prepare
    from pneumoscope.data.preprocess import PreprocessConfig

    out = tmp_path_factory.mktemp("cache48")
    prepare(synthetic_source, out, PreprocessConfig(img_size=48), val_fraction=0.2, seed=0,
            workers=2, progress=False)  # fmt: skip
    return out


def test_refit_recomputes_the_batch_norm_statistics_at_the_new_size(resnet_run, data48):
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import eval_size
    finally:
        sys.path.remove(str(REPO / "bench"))
    from pneumoscope.data.cache import open_cache
    from pneumoscope.model.run import load_run

    loaded = load_run(resnet_run, use_calibration=False)
    images = open_cache(data48).images[:48]  # 3 equal batches: their mean is the mean
    net = eval_size.refit_bn(loaded, images, batch_size=16)
    bn = net.bn1  # the stem's: its statistics are those of its inputs at 48 px
    x = eval_size._input(loaded, torch.from_numpy(np.ascontiguousarray(images)))
    with torch.no_grad():
        feats = net.conv1(x)
    np.testing.assert_allclose(bn.running_mean, feats.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert not torch.equal(bn.running_mean, loaded.model.bn1.running_mean)
    assert not net.training and bn.momentum is None


def test_bench_eval_size_writes_the_rules_decision(resnet_run, data_dir, data48, tmp_path):
    out = tmp_path / "size.json"
    cmd = [sys.executable, str(BENCH), "--run", str(resnet_run), "--data", str(data_dir),
           "--at", str(data48), "--n-train", "32", "--out", str(out)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    [row] = report["val"].values()
    assert sorted(row) == ["32", "48"] and all(0 <= v <= 1 for v in row.values())
    gain = report["decision"]["by_size"]["48"]["mean_gain"]
    assert gain == pytest.approx(row["48"] - row["32"])
    adopted = report["decision"]["adopted"]
    assert adopted == ("48" if gain >= 0.002 else None)
    assert ("test" in report) == (adopted is not None)
    assert "decision:" in done.stdout
