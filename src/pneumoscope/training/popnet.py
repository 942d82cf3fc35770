"""The population check's network: one logit, "adult", from a 1-channel square film.

``PopNet``: a plain small CNN (stem conv stride 2, four stages of two 3x3 convs with batch
norm and ReLU, stride 2 at each stage's first conv, global average pool, dropout, one
linear unit). Plain 3x3 convs rather than depthwise ones because on one CPU thread at
batch 1 a network this small is bound by per-layer overhead, not by FLOPs (measured in
experiments/population_check/cost.py against timm's ``mobilenetv3_small_050``).

Input (:func:`to_input`): uint8 pixels of the check's own preprocessing (the package's
``preprocess_gray`` at 128 px, CLAHE) scaled to [0, 1] and normalised with the fixed
``MEAN``/``STD`` that the check's card carries; the product applies the same transform in
NumPy before ONNX Runtime (:mod:`pneumoscope.model.population_check`).
"""

from __future__ import annotations

import torch
from torch import nn

MEAN, STD = 0.5, 0.25
WIDTHS = (16, 32, 48, 64, 96)
ARCHITECTURE = (
    "popnet: plain CNN, stem 3x3/2 then four stages of two 3x3 convs (16-32-48-64-96 "
    "channels, batch norm, ReLU), global average pool, one logit"
)


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
    """(N, 1, S, S) normalised films -> (N,) logits of "adult"."""

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


def to_input(batch_uint8: torch.Tensor) -> torch.Tensor:
    """(N, S, S) uint8 -> (N, 1, S, S) float normalised: the one input transform."""
    return (batch_uint8.float().unsqueeze(1) / 255.0 - MEAN) / STD


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())
