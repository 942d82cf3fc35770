"""A run scored at another size than it was trained at (`calibrate --refit-size`): batch
norms refitted on training films at that size, weights and card rewritten, the trained
weights kept, and every command then preparing films at the new size."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from pneumoscope.core.errors import UserError
from pneumoscope.data.cache import open_cache
from pneumoscope.model.contract import RunFiles, file_sha256
from pneumoscope.model.run import load_run
from pneumoscope.training.eval_size import network_at, refit_norms, refit_size
from tests.helpers import run_cli


@pytest.fixture
def run(resnet_run, tmp_path) -> RunFiles:
    shutil.copytree(resnet_run, tmp_path / "run")
    return RunFiles(tmp_path / "run")


def test_refit_recomputes_the_batch_norm_statistics_at_the_new_size(resnet_run, data48):
    loaded = load_run(resnet_run, use_calibration=False)
    images = open_cache(data48).images[:48]  # 3 equal batches: their mean is the mean
    net = copy.deepcopy(loaded.model)
    assert refit_norms(loaded, net, images, None, batch_size=16) == 20  # ResNet-18's
    x = loaded.model_input(torch.from_numpy(np.array(images)).unsqueeze(1))
    with torch.no_grad():
        feats = net.conv1(x)  # the stem's batch norm sees these at 48 px
    np.testing.assert_allclose(
        net.bn1.running_mean, feats.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5
    )
    assert not torch.equal(net.bn1.running_mean, loaded.model.bn1.running_mean)
    assert not net.training and net.bn1.momentum is None
    for name, p in net.named_parameters():  # only statistics change, never a weight
        assert torch.equal(p, dict(loaded.model.named_parameters())[name]), name


def test_refit_size_rewrites_the_card_and_weights_and_keeps_the_trained_ones(run, data48):
    trained_sha = file_sha256(run.weights)
    trained = load_file(str(run.weights))
    record = refit_size(run.root, data48, films=32)
    card = json.loads(run.card.read_text())
    assert card["img_size"] == card["preprocess"]["img_size"] == 48
    assert card["size_refit"] == record
    assert record["trained_img_size"] == 32 and record["films"] == 32
    assert record["batch_norms"] == 20 and record["trained_weights_sha256"] == trained_sha
    assert file_sha256(run.trained_weights) == trained_sha
    now = load_file(str(run.weights))
    changed = {k for k in now if not torch.equal(now[k], trained[k])}
    assert changed and all(
        k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in changed
    )
    loaded = load_run(run.root)
    assert loaded.preprocess.img_size == 48
    assert loaded.calibration is None  # fitted on the old weights: removed, with the guard
    assert not run.calibration.exists() and not run.ood_card.exists()
    # a second refit, back to 32 px, still names the size training used
    again = refit_size(run.root, open_cache_root(data48, run), films=16)
    assert again["trained_img_size"] == 32 and again["img_size"] == 32


def open_cache_root(data48: Path, run: RunFiles) -> Path:
    """The 32 px cache the run was trained on, named in its card."""
    return Path(json.loads(run.card.read_text())["training_data"]["cache"])


def test_what_cannot_take_another_size_is_refused_in_one_line(run, run_dir, data_dir, data48):
    seed_cnn = load_run(run_dir, use_calibration=False)  # flattens a map whose size is fixed
    with pytest.raises(UserError, match="seed_cnn cannot score at 64 px"):
        network_at(seed_cnn, 64)  # 2x2 at the end, where training's 32 px left 1x1
    with pytest.raises(UserError, match="at the run's own size"):
        refit_size(run.root, data_dir)
    with pytest.raises(UserError, match="at least one training film"):
        refit_size(run.root, data48, films=0)
    assert not (run.trained_weights).exists()


def test_a_cache_whose_splits_differ_is_refused(run, synthetic_source, tmp_path):
    """Other split settings put some of the run's training films in validation or test:
    refitting or calibrating on them would leak; the same holds when only counts are left."""
    from pneumoscope.data.prepare import prepare
    from pneumoscope.data.preprocess import PreprocessConfig

    other = tmp_path / "other48"
    prepare(synthetic_source, other, PreprocessConfig(img_size=48), val_fraction=0.4, seed=3,
            workers=2, progress=False)  # fmt: skip
    with pytest.raises(UserError, match="same train/val/test splits"):
        refit_size(run.root, other)
    card = json.loads(run.card.read_text())
    card["training_data"]["cache"] = str(tmp_path / "gone")
    run.card.write_text(json.dumps(card))
    with pytest.raises(UserError, match="same train/val/test splits"):
        refit_size(run.root, other)
    assert json.loads(run.card.read_text())["img_size"] == 32


def test_a_cache_at_another_size_names_the_way_out(run, data48):
    from pneumoscope.evaluation.evaluate import evaluate

    with pytest.raises(UserError, match="--refit-size"):
        evaluate(run.root, data48, "test", n_boot=0)


def test_cli_refit_size_then_every_command_scores_at_the_new_size(
    run, data48, synthetic_source, tmp_path
):
    r = run_cli("calibrate", "--run", str(run.root), "--data", str(data48), "--refit-size")
    assert r.returncode == 0, r.stderr
    assert "trained at 32 px, now scores films at 48 px" in r.stdout
    calibration = json.loads(run.calibration.read_text())
    assert calibration["weights_sha256"] == file_sha256(run.weights)
    assert json.loads(run.ood_card.read_text())["weights_sha256"] == file_sha256(run.weights)
    # evaluate (48 px cache) and predict (the files, prepared by the run's card) agree
    ev = tmp_path / "ev"
    r = run_cli("evaluate", "--run", str(run.root), "--data", str(data48), "--split", "test",
                "--out", str(ev), "--bootstrap", "0")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "trained at 32 px" in (ev / "report.html").read_text()
    by_eval = pd.read_csv(ev / "predictions_test.csv").set_index("path")["probability"]
    files = sorted((synthetic_source / "test").rglob("*.*"))[:5]
    r = run_cli(
        "predict", "--run", str(run.root), *map(str, files), "--out", str(tmp_path / "p.csv")
    )
    assert r.returncode == 0, r.stderr
    pred = pd.read_csv(tmp_path / "p.csv")
    eval_by_name = {Path(p).name: v for p, v in by_eval.items()}
    for path, prob in zip(pred["path"], pred["probability"], strict=True):
        assert prob == pytest.approx(eval_by_name[Path(path).name], abs=1e-5)


def test_cli_refit_size_refuses_no_ood_in_one_line(run, data48):
    r = run_cli("calibrate", "--run", str(run.root), "--data", str(data48), "--refit-size",
                "--no-ood")  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "drop --no-ood" in r.stderr
    assert json.loads(run.card.read_text())["img_size"] == 32
