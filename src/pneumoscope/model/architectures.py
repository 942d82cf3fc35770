"""Model builders: the Keras design's 5-block CNN ("seed_cnn") and any timm backbone.

Every model takes (B, C, S, S) float input and returns one logit per image.
"""

from __future__ import annotations

import difflib
import logging

import torch
from torch import nn

from pneumoscope.core.errors import UserError

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


def check_model_name(name: str) -> None:
    """Unknown names get close matches suggested."""
    if name == SEED_CNN:
        return
    import timm

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=4, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UserError(
            f"unknown model '{name}': use '{SEED_CNN}' or a timm model name such as "
            f"resnet18 or efficientnet_b0.{hint}"
        )


def build_model(name: str, in_chans: int, img_size: int, pretrained: bool = False) -> nn.Module:
    """Build ``name`` with a one-logit head; unknown names get close matches suggested.

    ``pretrained`` loads timm's ImageNet weights (downloaded once, then cached); the
    1000-class head is dropped and the stem adapted to ``in_chans`` the way timm does.
    """
    check_model_name(name)
    if name == SEED_CNN:
        if pretrained:
            raise UserError(
                f"{SEED_CNN} has no ImageNet weights; drop --pretrained, or start from a "
                "previous seed_cnn run with --weights RUN"
            )
        return SeedCNN(in_chans=in_chans, img_size=img_size)
    import timm

    if not pretrained:
        return timm.create_model(name, pretrained=False, num_classes=1, in_chans=in_chans)
    if not timm.list_pretrained(name.split(".")[0] + ".*"):
        raise UserError(
            f"timm has no pretrained weights for {name}; drop --pretrained or give --weights FILE"
        )
    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)  # its retry warnings would bury the one-line error
    try:
        return timm.create_model(name, pretrained=True, num_classes=1, in_chans=in_chans)
    except Exception as exc:  # offline, a proxy, a firewall, a full disk: one clear line
        raise UserError(pretrained_failure(name, exc)) from None
    finally:
        hub_log.setLevel(level)


def pretrained_failure(name: str, exc: BaseException) -> str:
    """What failed and the ways out, in one line."""
    first = (str(exc).strip().splitlines() or [""])[0]
    first = first.split(". ")[0].rstrip(".")[:200]  # the first sentence says enough
    return (
        f"cannot get timm's ImageNet weights for {name} ({type(exc).__name__}: {first}); "
        "no internet here? Either give a local file with --weights FILE (.safetensors or "
        ".pth from timm/Hugging Face, or a previous pneumoscope run folder), or download the "
        "weights once on a connected machine into the Hugging Face cache and copy it here "
        "(HF_HOME or HF_HUB_CACHE, default ~/.cache/huggingface; older timm weights use "
        "TORCH_HOME), then set HF_HUB_OFFLINE=1"
    )


def head_module(net: nn.Module) -> nn.Module:
    """The part trained from scratch while the backbone is frozen: the classifier."""
    if isinstance(net, SeedCNN):
        return net.head
    return net.get_classifier()


def stem_and_head_keys(net: nn.Module) -> tuple[list[str], list[str]]:
    """State-dict keys of the first convolution's weight and of the classifier, the two
    places where a checkpoint made for other inputs or classes does not fit."""
    if isinstance(net, SeedCNN):
        return ["features.0.weight"], ["head.4.weight", "head.4.bias"]
    cfg = getattr(net, "pretrained_cfg", None) or {}
    first = cfg.get("first_conv") or []
    classifier = cfg.get("classifier") or []
    first = [first] if isinstance(first, str) else list(first)
    classifier = [classifier] if isinstance(classifier, str) else list(classifier)
    return [f"{f}.weight" for f in first], [
        f"{c}.{p}" for c in classifier for p in ("weight", "bias")
    ]
