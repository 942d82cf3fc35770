"""The networks of the cost comparison: ``popnet`` (the population check, now in the package:
``pneumoscope.training.popnet``) or a timm model with one logit (``cost.py``)."""

from __future__ import annotations

from torch import nn

from pneumoscope.training.popnet import PopNet, n_params, to_input

__all__ = ["build", "n_params", "to_input"]


def build(name: str = "popnet") -> nn.Module:
    """``popnet`` (the one trained), or a timm model for the cost comparison."""
    if name == "popnet":
        return PopNet()
    import timm

    return _Squeeze(timm.create_model(name, pretrained=False, in_chans=1, num_classes=1))


class _Squeeze(nn.Module):
    def __init__(self, m: nn.Module):
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m(x).squeeze(1)
