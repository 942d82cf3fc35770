"""The population check's network: one logit, "adult", from a 1-channel square film.

``popnet``: a plain small CNN (stem conv stride 2, four stages of two 3x3 convs with
batch norm and ReLU, stride 2 at each stage's first conv, global average pool, dropout,
one linear unit). Plain 3x3 convs rather than depthwise ones because on one CPU thread at
batch 1 a network this small is bound by per-layer overhead, not by FLOPs (measured in
``cost.py`` against timm's ``mobilenetv3_small_050``). Input: uint8 pixels from
``load_image(path, PreprocessConfig(img_size=128))`` scaled to [0, 1] and normalised
with a fixed mean/std (``MEAN``/``STD``) that the card will carry.
"""

from __future__ import annotations

import torch
from torch import nn

MEAN, STD = 0.5, 0.25
WIDTHS = (16, 32, 48, 64, 96)


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class PopNet(nn.Module):
    def __init__(self, widths: tuple[int, ...] = WIDTHS, dropout: float = 0.2):
        super().__init__()
        stem = nn.Sequential(
            nn.Conv2d(1, widths[0], 3, 2, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        stages = [_block(a, b, 2) for a, b in zip(widths[:-1], widths[1:], strict=True)]
        self.features = nn.Sequential(stem, *stages)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(widths[-1], 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).squeeze(1)


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(x).squeeze(1)


def to_input(batch_uint8: torch.Tensor) -> torch.Tensor:
    """(N, S, S) uint8 -> (N, 1, S, S) float normalised: the one input transform."""
    return (batch_uint8.float().unsqueeze(1) / 255.0 - MEAN) / STD


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())
