"""Model builders: the Keras design's 5-block CNN ("seed_cnn") and any timm backbone.

Every model takes (B, C, S, S) float input and returns one logit per image.
"""

from __future__ import annotations

import difflib

import torch
from torch import nn

from .errors import UserError

SEED_CNN = "seed_cnn"


class SeedCNN(nn.Module):
    """Five conv blocks (Conv-BN-ReLU x2, MaxPool, Dropout), Flatten, Dense, dropout 0.3, logit."""

    def __init__(self, in_chans: int = 1, img_size: int = 150, widths=(32, 64, 128, 256, 256)):
        super().__init__()
        layers: list[nn.Module] = []
        c, s = in_chans, img_size
        for i, w in enumerate(widths):
            layers += [
                nn.Conv2d(c, w, 3, padding=1, bias=False),
                nn.BatchNorm2d(w),
                nn.ReLU(inplace=True),
                nn.Conv2d(w, w, 3, padding=1, bias=False),
                nn.BatchNorm2d(w),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
                nn.Dropout(0.1 if i < 2 else 0.2),
            ]
            c, s = w, s // 2
        if s < 1:
            raise UserError(f"seed_cnn needs an image size of at least 32 px, got {img_size}")
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c * s * s, 128),
            nn.ReLU(inplace=True),
            nn.Dropout(0.3),
            nn.Linear(128, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_model(name: str, in_chans: int, img_size: int, pretrained: bool = False) -> nn.Module:
    """Build ``name`` with a one-logit head; unknown names get close matches suggested."""
    if name == SEED_CNN:
        return SeedCNN(in_chans=in_chans, img_size=img_size)
    import timm

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=4, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UserError(
            f"unknown model '{name}': use '{SEED_CNN}' or a timm model name such as "
            f"resnet18 or efficientnet_b0.{hint}"
        )
    return timm.create_model(name, pretrained=pretrained, num_classes=1, in_chans=in_chans)
