"""`pneumoscope ensemble`: trained runs merged into one run whose logit is the mean of the
members' logits, used by every command like any run (calibrate, evaluate, predict,
explain, export to one ONNX graph), and refused with one line where members do not fit."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from pneumoscope.cli.main import app
from pneumoscope.core.errors import UserError
from pneumoscope.data.cache import open_cache
from pneumoscope.model.architectures import build_model
from pneumoscope.model.ensemble import Ensemble, member_names
from pneumoscope.model.network import split_head
from pneumoscope.model.run import load_run
from pneumoscope.training.ensemble import merge_runs

runner = CliRunner()


def test_composed_head_is_the_mean_of_the_members_logits():
    torch.manual_seed(0)
    members = [build_model(n, 1, 32) for n in ("seed_cnn", "resnet18", "resnet18")]
    for m in members:
        m.eval()
    net = Ensemble(members)
    net.compose_head()
    net.eval()
    x = torch.randn(5, 1, 32, 32)
    with torch.no_grad():
        want = torch.stack([m(x).squeeze(1) for m in members]).mean(dim=0)
        got = net(x).squeeze(1)
        feats, fc = split_head(net)
        f = feats(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert f.shape == (5, net.num_features) == (5, 128 + 512 + 512)
    torch.testing.assert_close(fc(f).squeeze(1), want, atol=1e-5, rtol=1e-5)
    assert member_names("ensemble(seed_cnn,resnet18)") == ["seed_cnn", "resnet18"]
    with pytest.raises(UserError, match="at least two"):
        build_model("ensemble(resnet18)", 1, 32)
    with pytest.raises(UserError, match="unknown model"):
        build_model("ensemble(resnet18,resnet99x)", 1, 32)


def test_each_member_sees_the_film_normalised_with_its_own_statistics():
    torch.manual_seed(1)
    members = [build_model("resnet18", 1, 32).eval() for _ in range(2)]
    means, stds = [[0.55], [0.60]], [[0.25], [0.28]]
    net = Ensemble(members)
    net.set_normalisations(means, stds)
    net.compose_head()
    net.eval()
    pixels = torch.rand(4, 1, 32, 32)
    with torch.no_grad():
        got = net((pixels - means[0][0]) / stds[0][0]).squeeze(1)
        own = [
            m((pixels - mu[0]) / sd[0]).squeeze(1)
            for m, mu, sd in zip(members, means, stds, strict=True)
        ]
    torch.testing.assert_close(got, torch.stack(own).mean(dim=0), atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def ensemble_run(run_dir, resnet_run, data_dir, tmp_path_factory):
    """seed_cnn and a ResNet-18, both trained on the shared tiny cache, merged and
    calibrated through the CLI."""
    out = tmp_path_factory.mktemp("ens") / "ens"
    done = runner.invoke(app, ["ensemble", str(run_dir), str(resnet_run), "--out", str(out)])
    assert done.exit_code == 0, done.output
    assert (
        "ensemble(seed_cnn,resnet18)" in done.output
        and "next: pneumoscope calibrate" in done.output
    )
    done = runner.invoke(app, ["calibrate", "--run", str(out), "--data", str(data_dir)])
    assert done.exit_code == 0, done.output
    return out


def test_merged_run_scores_as_the_mean_of_its_members(ensemble_run, run_dir, resnet_run, data_dir):
    ens = load_run(ensemble_run)
    x = open_cache(data_dir).images[:12]
    want = np.mean(
        [load_run(r, use_calibration=False).predict_logits(x) for r in (run_dir, resnet_run)],
        axis=0,
    )
    np.testing.assert_allclose(ens.predict_logits(x), want, atol=1e-4)
    card = json.loads((ensemble_run / "model.json").read_text())
    assert card["architecture"] == "ensemble(seed_cnn,resnet18)"
    members = card["ensemble"]["members"]
    assert [m["architecture"] for m in members] == ["seed_cnn", "resnet18"]
    assert all(len(m["weights_sha256"]) == 64 for m in members)
    spent = [json.loads((r / "model.json").read_text())["training"]["train_seconds"]
             for r in (run_dir, resnet_run)]  # fmt: skip
    assert card["training"]["train_seconds"] == pytest.approx(sum(spent))
    assert ens.calibration is not None and (ensemble_run / "ood.json").exists()


def test_every_command_takes_the_ensemble(ensemble_run, data_dir, synthetic_source, tmp_path):
    films = sorted((synthetic_source / "test").rglob("*.jpeg"))[:4]
    assert films
    done = runner.invoke(app, ["evaluate", "--run", str(ensemble_run), "--data", str(data_dir),
                               "--split", "test", "--out", str(tmp_path / "ev"),
                               "--bootstrap", "50"])  # fmt: skip
    assert done.exit_code == 0, done.output
    assert (tmp_path / "ev" / "metrics.json").exists()
    csv = tmp_path / "p.csv"
    done = runner.invoke(app, ["predict", "--run", str(ensemble_run), "--out", str(csv),
                               *map(str, films), "--allow", "age"])  # fmt: skip
    assert done.exit_code == 0, done.output
    assert len(csv.read_text().strip().splitlines()) == len(films) + 1
    # synthetic films are nobody's: the population check would refuse them (--allow age)
    done = runner.invoke(app, ["explain", "--run", str(ensemble_run), "--out",
                               str(tmp_path / "cam"), str(films[0]), "--allow", "age"])  # fmt: skip
    assert done.exit_code == 0, done.output
    assert list((tmp_path / "cam").glob("*.png"))


def test_ensemble_exports_to_one_onnx_graph(ensemble_run, data_dir, tmp_path):
    import onnxruntime as ort

    run = tmp_path / "run"
    shutil.copytree(ensemble_run, run)
    done = runner.invoke(app, ["export", "--run", str(run), "--no-int8"])
    assert done.exit_code == 0, done.output
    x = open_cache(data_dir).images[:6]
    sess = ort.InferenceSession(str(run / "model.onnx"), providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x[:, None]}
    logits = sess.run(None, feed)[0].reshape(-1)
    np.testing.assert_allclose(logits, load_run(run).predict_logits(x), atol=1e-4)


def test_members_that_do_not_fit_are_refused(run_dir, resnet_run, tmp_path):
    with pytest.raises(UserError, match="at least two"):
        merge_runs([run_dir], tmp_path / "one")
    other = tmp_path / "other"
    shutil.copytree(resnet_run, other)
    card = json.loads((other / "model.json").read_text())
    card["training_data"]["counts"]["train"]["total"] += 1
    (other / "model.json").write_text(json.dumps(card))
    with pytest.raises(UserError, match="other films or another split"):
        merge_runs([run_dir, other], tmp_path / "ens")
    card["training_data"] = json.loads((run_dir / "model.json").read_text())["training_data"]
    card["img_size"] = card["preprocess"]["img_size"] = 48
    (other / "model.json").write_text(json.dumps(card))
    with pytest.raises(UserError, match="takes other input"):
        merge_runs([run_dir, other], tmp_path / "ens2")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    done = runner.invoke(app, ["ensemble", str(run_dir), str(resnet_run), "--out",
                               str(tmp_path / "full")])  # fmt: skip
    assert isinstance(done.exception, UserError) and "not empty" in str(done.exception)
