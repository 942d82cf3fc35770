"""Starting weights: --pretrained offline fails with the way out; --weights loads timm
checkpoints (.pth via weights_only, .safetensors) and previous runs, adapting the stem
and dropping a foreign classifier the way timm does; pickled objects are refused."""

from __future__ import annotations

import os

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from pneumoscope.core.errors import UserError
from pneumoscope.model.architectures import build_model
from pneumoscope.model.weights import adapt_stem, load_into, read_state_dict
from pneumoscope.training.train import TrainConfig, train
from tests.helpers import run_cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def imagenet_resnet10t() -> torch.nn.Module:
    """What a timm ImageNet checkpoint holds: 3 input channels, 1000 classes."""
    torch.manual_seed(1)
    return timm.create_model("resnet10t", pretrained=False, num_classes=1000, in_chans=3)


def test_pretrained_offline_is_one_line_with_the_way_out(data_dir, tmp_path):
    env = {
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_CACHE": str(tmp_path / "hf" / "hub"),
        "TORCH_HOME": str(tmp_path / "torch"),
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        r = run_cli(
            "train",
            "--data",
            str(data_dir),
            "--out",
            str(tmp_path / "r"),
            "--model",
            "resnet10t",
            "--pretrained",
            "--no-progress",
        )
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for fragment in ("resnet10t", "--weights FILE", "HF_HOME", "HF_HUB_OFFLINE=1"):
        assert fragment in lines[0], fragment
    assert "Traceback" not in r.stderr


def test_seed_cnn_has_no_imagenet_weights():
    with pytest.raises(UserError, match="no ImageNet weights.*--weights RUN"):
        build_model("seed_cnn", 1, 32, pretrained=True)


def test_timm_pth_checkpoint_stem_summed_and_head_skipped(tmp_path):
    ref = imagenet_resnet10t()
    path = tmp_path / "resnet10t.pth"
    torch.save({"state_dict": ref.state_dict()}, path)  # a training script's wrapper
    state, source = read_state_dict(path)
    net = build_model("resnet10t", 1, 32)
    fresh_fc = net.fc.weight.detach().clone()
    report = load_into(net, state, source)
    assert report["adapted"] == ["conv1.0.weight (3 -> 1 input channels)"]
    assert [s.split(" ")[0] for s in report["skipped"]] == ["fc.weight", "fc.bias"]
    assert all("classifier" in s for s in report["skipped"])
    torch.testing.assert_close(net.conv1[0].weight, ref.conv1[0].weight.sum(1, keepdim=True))
    assert torch.equal(net.conv1[1].weight, ref.conv1[1].weight)
    assert torch.equal(net.layer4[0].conv1.weight, ref.layer4[0].conv1.weight)
    assert torch.equal(net.fc.weight, fresh_fc)  # the 1-logit head keeps its initialisation
    gray = torch.rand(2, 1, 32, 32)
    ref.eval(), net.eval()
    with torch.no_grad():  # a gray image meets the summed stem as RGB meets the original
        a = ref.forward_features(gray.expand(-1, 3, -1, -1))
        b = net.forward_features(gray)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_safetensors_checkpoint_for_three_channels(tmp_path):
    ref = imagenet_resnet10t()
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    net = build_model("resnet10t", 3, 32)
    report = load_into(net, *read_state_dict(path))
    assert report["adapted"] == [] and len(report["skipped"]) == 2
    assert torch.equal(net.conv1[0].weight, ref.conv1[0].weight)


def test_pickled_objects_and_foreign_files_are_refused(tmp_path):
    bad = tmp_path / "evil.pth"
    torch.save({"model": torch.nn.Linear(2, 2)}, bad)  # a pickled module, not tensors
    with pytest.raises(UserError, match="as plain tensors"):
        read_state_dict(bad)
    other = tmp_path / "other.safetensors"
    save_file({"whatever.weight": torch.zeros(3, 3)}, str(other))
    with pytest.raises(UserError, match="does not fit this model"):
        load_into(build_model("resnet10t", 1, 32), *read_state_dict(other))
    (tmp_path / "w.onnx").write_bytes(b"x")
    with pytest.raises(UserError, match="unknown format"):
        read_state_dict(tmp_path / "w.onnx")
    with pytest.raises(UserError, match="not found"):
        read_state_dict(tmp_path / "missing.pth")


def test_one_to_three_channel_stem_keeps_the_gray_response():
    w = torch.randn(8, 1, 3, 3)
    w3 = adapt_stem(w, 3)
    x = torch.rand(1, 1, 9, 9)
    torch.testing.assert_close(
        torch.nn.functional.conv2d(x.expand(-1, 3, -1, -1), w3), torch.nn.functional.conv2d(x, w)
    )


def test_train_from_a_timm_file_records_what_was_loaded(data_dir, tmp_path):
    path = tmp_path / "imagenet.pth"
    torch.save(imagenet_resnet10t().state_dict(), path)
    card = train(
        TrainConfig(
            data=str(data_dir),
            out=str(tmp_path / "r"),
            model="resnet10t",
            epochs=1,
            batch_size=16,
            weights=str(path),
            threads=1,
            accelerator="cpu",
        ),
        progress=False,
    )
    init = card.training.initial_weights
    assert init["source"] == str(path) and init["loaded"] == init["of"] - 2
    assert init["adapted"] and len(init["skipped"]) == 2


def test_fine_tune_from_a_previous_run(data_dir, tmp_path):
    """Pre-train on one set, fine-tune on another: the run folder is a weights source and
    every tensor, the head included, starts from it."""
    run_dir = tmp_path / "adults"
    cfg = TrainConfig(data=str(data_dir), out=str(run_dir), model="seed_cnn", epochs=1)
    cfg.batch_size, cfg.threads, cfg.accelerator = 16, 1, "cpu"
    train(cfg, progress=False)
    state, source = read_state_dict(run_dir)
    assert "pneumoscope run" in source and "seed_cnn" in source
    net = build_model("seed_cnn", 1, 32)
    report = load_into(net, state, source)
    assert report["loaded"] == report["of"] and not report["skipped"] and not report["missing"]
    saved = load_file(str(run_dir / "model.safetensors"))
    assert all(torch.equal(v, saved[k]) for k, v in net.state_dict().items())
    from typer.testing import CliRunner

    from pneumoscope.cli import app

    args = ["train", "--data", str(data_dir), "--out", str(tmp_path / "children")]
    args += ["--model", "seed_cnn", "--weights", str(run_dir), "--epochs", "1"]
    args += ["--batch-size", "16", "--lr", "1e-4", "--threads", "1", "--no-progress"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, (r.output, r.exception)
    assert "initial weights:" in r.output and "pneumoscope run" in r.output


def test_pretrained_from_a_prepopulated_hugging_face_cache(data_dir, tmp_path, monkeypatch):
    """The way out the offline error names: weights copied into the HF cache, used offline
    through timm's real download code."""
    import huggingface_hub.constants as hf

    ref = imagenet_resnet10t()
    commit = "0" * 40
    repo = tmp_path / "hub" / "models--timm--resnet10t.c3_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    state = {k: v.contiguous() for k, v in ref.state_dict().items()}
    save_file(state, str(repo / "snapshots" / commit / "model.safetensors"))
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hub"))
    card = train(
        TrainConfig(
            data=str(data_dir),
            out=str(tmp_path / "r"),
            model="resnet10t",
            epochs=1,
            batch_size=16,
            pretrained=True,
            threads=1,
            accelerator="cpu",
        ),
        progress=False,
    )
    init = card.training.initial_weights
    assert init["source"] == "timm ImageNet weights timm/resnet10t.c3_in1k"
    assert init["adapted"] == ["conv1.0.weight (3 -> 1 input channels)"]
    assert len(init["skipped"]) == 2 and init["loaded"] == init["of"] - 2
