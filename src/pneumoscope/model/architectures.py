"""Model builders: the Keras design's 5-block CNN ("seed_cnn") and any timm backbone.

Every model takes (B, C, S, S) float input and returns one logit per image, and answers
timm's interface: ``forward_features``, ``forward_head(x, pre_logits)``, ``get_classifier``
and a ``pretrained_cfg`` naming ``first_conv`` and ``classifier``.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable

import torch
from torch import nn

from pneumoscope.core.errors import UserError
from pneumoscope.model.ensemble import Ensemble, is_ensemble_name, member_names

SEED_CNN = "seed_cnn"


class SeedCNN(nn.Module):
    """Five conv blocks (Conv-BN-ReLU x2, MaxPool, Dropout), Flatten, Dense, dropout 0.3, logit.

    It answers timm's model interface (``forward_features``, ``forward_head``,
    ``get_classifier``, ``pretrained_cfg``, ``num_features``), so the OOD features, Grad-CAM,
    ONNX export and weight loading treat it like any timm model.
    """

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
        self._pool_at = len(layers) - 2  # the last block's MaxPool and Dropout
        self.num_features = c  # channels of the forward_features map, as in timm
        # the state-dict names of the stem and the classifier, as timm models give them
        self.pretrained_cfg = {
            "architecture": SEED_CNN,
            "input_size": (in_chans, img_size, img_size),
            "first_conv": "features.0",
            "classifier": "head.4",
        }

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last conv block's activation map (B, C, H, W), before its pooling: the map
        Grad-CAM explains (it stays larger than 1x1 at any size this model accepts)."""
        return self.features[: self._pool_at](x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """The last block's pooling and dropout, then the dense head; ``pre_logits`` stops
        before the last layer (the 128 penultimate activations)."""
        x = self.features[self._pool_at :](x)
        return self.head[:-1](x) if pre_logits else self.head(x)

    def get_classifier(self) -> nn.Module:
        """The last layer, which turns the penultimate activations into the logit."""
        return self.head[-1]

    def trainable_head(self) -> nn.Module:
        """The layers the Keras design trains while the convolutions are frozen: the whole
        dense head (a timm model trains its classifier only)."""
        return self.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _seed_cnn(in_chans: int, img_size: int, pretrained: bool) -> nn.Module:
    if pretrained:
        raise UserError(
            f"{SEED_CNN} has no ImageNet weights; drop --pretrained, or start from a "
            "previous seed_cnn run with --weights RUN"
        )
    return SeedCNN(in_chans=in_chans, img_size=img_size)


# Models of this package, by name: (in_chans, img_size, pretrained) -> model. Any other name
# is a timm model.
MODELS: dict[str, Callable[[int, int, bool], nn.Module]] = {SEED_CNN: _seed_cnn}


def check_model_name(name: str) -> None:
    """Unknown names get close matches suggested."""
    if name in MODELS:
        return
    if is_ensemble_name(name):
        members = member_names(name)
        if len(members) < 2:
            raise UserError(f"an ensemble needs at least two members, got '{name}'")
        for member in members:
            check_model_name(member)
        return
    import timm

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=4, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        own = " or ".join(f"'{n}'" for n in MODELS)
        raise UserError(
            f"unknown model '{name}': use {own} or a timm model name such as "
            f"resnet18 or efficientnet_b0.{hint}"
        )


def build_model(name: str, in_chans: int, img_size: int, pretrained: bool = False) -> nn.Module:
    """Build ``name`` with a one-logit head; unknown names get close matches suggested.

    ``pretrained`` loads timm's ImageNet weights (downloaded once, then cached); the
    1000-class head is dropped and the stem adapted to ``in_chans`` the way timm does.
    """
    check_model_name(name)
    if name in MODELS:
        return MODELS[name](in_chans, img_size, pretrained)
    if is_ensemble_name(name):  # members of trained runs: their weights come with the run
        members = [build_model(m, in_chans, img_size) for m in member_names(name)]
        return Ensemble(members, in_chans)
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
    """The part trained from scratch while the backbone is frozen: the classifier, or the
    model's own ``trainable_head()`` where it has one (seed_cnn's dense head)."""
    own = getattr(net, "trainable_head", None)
    return own() if callable(own) else net.get_classifier()


def stem_and_head_keys(net: nn.Module) -> tuple[list[str], list[str]]:
    """State-dict keys of the first convolution's weight and of the classifier, the two
    places where a checkpoint made for other inputs or classes does not fit."""
    cfg = getattr(net, "pretrained_cfg", None) or {}
    first = cfg.get("first_conv") or []
    classifier = cfg.get("classifier") or []
    first = [first] if isinstance(first, str) else list(first)
    classifier = [classifier] if isinstance(classifier, str) else list(classifier)
    return [f"{f}.weight" for f in first], [
        f"{c}.{p}" for c in classifier for p in ("weight", "bias")
    ]
