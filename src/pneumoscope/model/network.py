"""The run's network in PyTorch: its weights, its input path and the module every torch
inference path runs (the training install only; an exported run scores without it).

``model_input`` is the one function from cached uint8 pixels to the network's input
(scale, evaluation crop, channels, normalisation), used by validation during training and
by every torch inference path (``InferenceNet``, hence evaluate, calibrate, export); a
run's parameters for it come from its ``InputSpec``. Its numpy twin for the ONNX graph is
the graph itself: the export puts ``InferenceNet`` whole into it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from pneumoscope.core.errors import UserError
from pneumoscope.core.io import atomic_write
from pneumoscope.model.architectures import build_model
from pneumoscope.model.contract import InputSpec, ModelCard, RunFiles


def save_weights(model: torch.nn.Module, path: Path) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}

    atomic_write(path, lambda tmp: save_file(state, tmp))  # it keeps the usual file mode


def normalize(x_uint8: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, in_chans: int):
    """uint8 (B,1,S,S) -> normalised float (B,in_chans,S,S); shared by training and inference."""
    x = x_uint8.float().div_(255.0)
    return normalize_float(x, mean, std, in_chans)


def normalize_float(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, in_chans: int):
    if in_chans != x.shape[1]:
        x = x.expand(-1, in_chans, -1, -1)
    return (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


def center_crop_resize(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Resize (B, C, S, S) to int(S * factor) then centre-crop S: torchvision's
    ``Resize(int(S * f))`` + ``CenterCrop(S)``, the PyTorch design's evaluation transform."""
    if factor == 1.0:
        return x
    s = x.shape[-1]
    big = int(s * factor)
    x = F.interpolate(x, size=(big, big), mode="bilinear", align_corners=False)
    top = int(round((big - s) / 2.0))
    return x[..., top : top + s, top : top + s]


def model_input(
    x_uint8: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    in_chans: int,
    eval_crop: float = 1.0,
) -> torch.Tensor:
    """uint8 (B,1,S,S) -> the network's input for evaluation and inference: pixel / 255,
    the evaluation crop (if any), channels, normalisation."""
    x = center_crop_resize(x_uint8.float().div_(255.0), eval_crop)
    return normalize_float(x, mean, std, in_chans)


def split_head(net: nn.Module) -> tuple[Callable, nn.Module]:
    """(features function, final linear layer) of a one-logit model.

    The features are the penultimate activations: what the OOD guard measures distances
    in, and what the last layer turns into the logit. Every model answers timm's
    interface, seed_cnn included.
    """
    return (lambda x: net.forward_head(net.forward_features(x), pre_logits=True)), (
        net.get_classifier()
    )


class InferenceNet(nn.Module):
    """uint8 images (B, 1, S, S) -> (logits (B,), features (B, D)), and with ``cam`` the
    class activation map (B, h, w) as a third output.

    Normalisation and channel expansion live inside, so this module (and its ONNX export)
    needs nothing but the preprocessed pixels. ``cam`` holds the head's weights (C,) when
    the head is global average pooling + linear (:func:`cam_weights`).
    """

    def __init__(
        self,
        net: nn.Module,
        mean: torch.Tensor,
        std: torch.Tensor,
        in_chans: int,
        eval_crop: float = 1.0,
        cam: torch.Tensor | None = None,
    ):
        super().__init__()
        self.net = net
        self.in_chans = in_chans
        self.eval_crop = float(eval_crop)
        self.register_buffer("mean", mean.clone().float())
        self.register_buffer("std", std.clone().float())
        self.with_cam = cam is not None
        if cam is not None:
            self.register_buffer("cam_weights", cam.detach().clone().float())
        self._features, self._fc = split_head(net)

    def forward(self, x_uint8: torch.Tensor):
        x = model_input(x_uint8, self.mean, self.std, self.in_chans, self.eval_crop)
        if not self.with_cam:
            f = self._features(x)
            return self._fc(f).squeeze(1), f
        fmap = self.net.forward_features(x)
        f = self.net.forward_head(fmap, pre_logits=True)
        cam = torch.einsum("bchw,c->bhw", fmap, self.cam_weights)
        return self._fc(f).squeeze(1), f, cam


def cam_weights(net: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """The head's weights (C,) when the logit is a linear layer of the global average of the
    last feature map, a map of more than one position (checked on ``x``, the network's
    input): there the class activation map is Grad-CAM's map. None for any other head."""
    fc = net.get_classifier()
    if not isinstance(fc, nn.Linear) or fc.out_features != 1:
        return None
    with torch.inference_mode():
        fmap = net.forward_features(x)  # an ensemble's: one map per member, no single head
        if not isinstance(fmap, torch.Tensor) or fmap.ndim != 4:
            return None
        if fmap.shape[1] != fc.in_features or fmap[0, 0].numel() < 2:
            return None  # not the head's input, or one position: Grad-CAM looks elsewhere
        pooled = net.forward_head(fmap, pre_logits=True)
        if pooled.shape != fmap.shape[:2] or not torch.allclose(
            pooled, fmap.mean(dim=(2, 3)), rtol=1e-4, atol=1e-5
        ):
            return None
    return fc.weight[0].detach().clone()


def spec_tensors(spec: InputSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalisation's (mean, std) as float32 tensors, for ``model_input``."""
    norm = spec.normalization
    return (
        torch.tensor(norm.mean, dtype=torch.float32),
        torch.tensor(norm.std, dtype=torch.float32),
    )


def load_network(files: RunFiles, card: ModelCard) -> nn.Module:
    """Rebuild the model from its card and load the weights (safetensors: no pickle)."""
    spec = card.input
    model = build_model(card.architecture, spec.in_chans, spec.img_size, pretrained=False)
    try:
        model.load_state_dict(load_file(str(files.weights)))
    except Exception as exc:  # corrupt or mismatched weights file
        raise UserError(f"cannot load {files.weights}: {exc}") from None
    return model.eval()
