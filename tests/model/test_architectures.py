"""Every model answers timm's interface (features, head, classifier, pretrained_cfg), so the
code that splits, freezes, loads and explains models has no per-architecture branch; and
seed_cnn keeps the state-dict names its old runs were saved under."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pneumoscope.core.errors import UserError
from pneumoscope.model.architectures import (
    MODELS,
    SEED_CNN,
    build_model,
    check_model_name,
    head_module,
    stem_and_head_keys,
)
from pneumoscope.model.network import split_head


def _seed_cnn_keys() -> list[str]:
    """The names release 0.1.0 saved seed_cnn runs under (model.safetensors)."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = []
    for block in range(5):
        for conv, norm in ((0, 1), (3, 4)):
            keys.append(f"features.{8 * block + conv}.weight")
            keys += [f"features.{8 * block + norm}.{p}" for p in bn]
    return keys + [f"head.{i}.{p}" for i in (1, 4) for p in ("weight", "bias")]


def test_seed_cnn_state_dict_names_are_unchanged():
    net = build_model(SEED_CNN, 1, 48)
    assert list(net.state_dict()) == _seed_cnn_keys()


@pytest.mark.parametrize("name", [SEED_CNN, "resnet10t"])
def test_models_split_into_features_head_and_classifier(name):
    torch.manual_seed(0)
    net = build_model(name, 1, 64).eval()
    x = torch.randn(3, 1, 64, 64)
    with torch.no_grad():
        logits = net(x)
        maps = net.forward_features(x)
        pre = net.forward_head(maps, pre_logits=True)
        assert torch.equal(net.forward_head(maps), logits)
        assert torch.equal(net.get_classifier()(pre), logits)
        features, fc = split_head(net)
        assert torch.equal(features(x), pre) and fc is net.get_classifier()
    assert logits.shape == (3, 1) and maps.ndim == 4 and pre.ndim == 2
    assert maps.shape[1] == net.num_features
    cfg = net.pretrained_cfg
    assert net.get_submodule(cfg["classifier"]) is net.get_classifier()
    assert isinstance(net.get_submodule(cfg["first_conv"]), nn.Conv2d)


def test_seed_cnn_features_end_at_the_last_activation_and_head_keeps_the_dense_layers():
    net = build_model(SEED_CNN, 1, 150)
    x = torch.zeros(1, 1, 150, 150)
    # the last block's ReLU map (9x9 at 150 px), before its max-pool (4x4)
    assert net.forward_features(x).shape == (1, 256, 9, 9)
    assert net.forward_head(net.forward_features(x), pre_logits=True).shape == (1, 128)
    assert net.get_classifier() is net.head[-1]
    assert net.pretrained_cfg["input_size"] == (1, 150, 150)
    # frozen backbone: the Keras design trains its whole dense head, timm models their classifier
    assert head_module(net) is net.head
    timm_net = build_model("resnet10t", 1, 64)
    assert head_module(timm_net) is timm_net.get_classifier()


def test_stem_and_head_keys_come_from_pretrained_cfg_for_every_model():
    assert stem_and_head_keys(build_model(SEED_CNN, 1, 32)) == (
        ["features.0.weight"],
        ["head.4.weight", "head.4.bias"],
    )
    assert stem_and_head_keys(build_model("resnet10t", 1, 32)) == (
        ["conv1.0.weight"],
        ["fc.weight", "fc.bias"],
    )


def test_own_models_are_a_registry_and_unknown_names_say_what_to_use():
    assert SEED_CNN in MODELS
    check_model_name(SEED_CNN)
    with pytest.raises(UserError, match=r"unknown model 'seed_cn': use 'seed_cnn' or a timm"):
        check_model_name("seed_cn")
