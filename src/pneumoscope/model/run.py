"""A loaded run: its card, weights (safetensors), calibration, and batched inference.

Everything predict and evaluate need is read from the run folder (through
``model.contract``), so the preprocessing and normalisation used at training time are
repeated exactly. ``model_input`` is the one function from cached uint8 pixels to the
network's input (scale, evaluation crop, channels, normalisation), used by validation
during training and by every inference path (``InferenceNet``, hence predict, evaluate,
calibrate, export); a run's parameters for it come from its ``InputSpec``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from pneumoscope.core.errors import UserError
from pneumoscope.core.io import atomic_write
from pneumoscope.data.preprocess import PreprocessConfig
from pneumoscope.model.architectures import build_model
from pneumoscope.model.calibration import TemperatureScaler, sigmoid
from pneumoscope.model.contract import InputSpec, ModelCard, RunFiles, read_card
from pneumoscope.model.tta import TestTimeAugmentation, with_tta


def save_weights(model: torch.nn.Module, path: Path) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}

    def write(tmp: str) -> None:
        mode = os.stat(tmp).st_mode  # safetensors recreates the file owner-only; keep the mode
        save_file(state, tmp)
        os.chmod(tmp, mode)

    atomic_write(path, write)


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
    """uint8 images (B, 1, S, S) -> (logits (B,), features (B, D)).

    Normalisation and channel expansion live inside, so this module (and its ONNX export)
    needs nothing but the preprocessed pixels.
    """

    def __init__(
        self,
        net: nn.Module,
        mean: torch.Tensor,
        std: torch.Tensor,
        in_chans: int,
        eval_crop: float = 1.0,
    ):
        super().__init__()
        self.net = net
        self.in_chans = in_chans
        self.eval_crop = float(eval_crop)
        self.register_buffer("mean", mean.clone().float())
        self.register_buffer("std", std.clone().float())
        self._features, self._fc = split_head(net)

    def forward(self, x_uint8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = model_input(x_uint8, self.mean, self.std, self.in_chans, self.eval_crop)
        f = self._features(x)
        return self._fc(f).squeeze(1), f


def row_batches(
    images: np.ndarray, rows: np.ndarray | None, batch_size: int
) -> Iterator[tuple[int, np.ndarray]]:
    """(start, contiguous uint8 chunk) of ``images[rows]`` batch by batch, so a large
    (memory-mapped) split is never loaded whole; ``rows`` None means every image."""
    rows = np.arange(len(images)) if rows is None else np.asarray(rows)
    for start in range(0, len(rows), batch_size):
        yield start, np.ascontiguousarray(images[rows[start : start + batch_size]])


def spec_tensors(spec: InputSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalisation's (mean, std) as float32 tensors, for ``model_input``."""
    norm = spec.normalization
    return (
        torch.tensor(norm.mean, dtype=torch.float32),
        torch.tensor(norm.std, dtype=torch.float32),
    )


@dataclass
class LoadedRun:
    """A run folder in memory: its files, card, network and (when calibrated) calibration."""

    files: RunFiles
    card: ModelCard
    model: torch.nn.Module
    calibration: TemperatureScaler | None = None

    @property
    def root(self) -> Path:
        return self.files.root

    @property
    def spec(self) -> InputSpec:
        return self.card.input

    @property
    def preprocess(self) -> PreprocessConfig:
        return self.spec.preprocess

    @property
    def mean(self) -> torch.Tensor:
        return spec_tensors(self.spec)[0]

    @property
    def std(self) -> torch.Tensor:
        return spec_tensors(self.spec)[1]

    @property
    def temperature(self) -> float:
        return self.calibration.temperature_ if self.calibration else 1.0

    @property
    def threshold(self) -> float:
        """calibration.json's threshold when present, else the card's (Youden on validation)."""
        if self.calibration:
            return self.calibration.threshold_
        return float(self.card.threshold)

    @property
    def threshold_policy(self) -> str:
        if self.calibration:
            extra = self.calibration.tta_note()
            return f"{self.calibration.policy_} (calibrated, on validation{extra})"
        return self.card.threshold_policy

    @property
    def tta(self) -> TestTimeAugmentation | None:
        """The test-time augmentation the calibration was fitted with (None: plain films)."""
        return self.calibration.tta_ if self.calibration else None

    def scorer(self, runner=None):
        """``runner`` (default: this run's torch model) as every command scores with it:
        wrapped in the calibration's test-time augmentation when it has it."""
        return with_tta(self if runner is None else runner, self.tta)

    @property
    def in_chans(self) -> int:
        return self.spec.in_chans

    @property
    def eval_crop(self) -> float:
        """Evaluation resize factor before the centre crop (1.0: none)."""
        return self.spec.eval_crop

    def model_input(self, x_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 (B,1,S,S) -> exactly what the network saw at validation time."""
        mean, std = spec_tensors(self.spec)
        return model_input(x_uint8, mean, std, self.in_chans, self.eval_crop)

    def inference_net(self) -> InferenceNet:
        mean, std = spec_tensors(self.spec)
        return InferenceNet(self.model, mean, std, self.in_chans, self.eval_crop).eval()

    @torch.inference_mode()
    def logits_and_features(
        self, images: np.ndarray, batch_size: int = 64, rows: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Logits (N,) and penultimate features (N, D) of preprocessed uint8 images."""
        net = self.inference_net()
        logits, feats = [], []
        for _, chunk in row_batches(images, rows, batch_size):
            z, f = net(torch.from_numpy(chunk).unsqueeze(1))
            logits.append(z.float().numpy())
            feats.append(f.float().numpy())
        return np.concatenate(logits), np.concatenate(feats)

    def predict_logits(
        self, images: np.ndarray, batch_size: int = 64, rows: np.ndarray | None = None
    ) -> np.ndarray:
        """Logits for uint8 images (N, S, S) already preprocessed with ``self.preprocess``.

        ``rows`` selects images of a (memory-mapped) array batch by batch, so a large
        split is never loaded whole.
        """
        return self.logits_and_features(images, batch_size, rows)[0]

    def proba_from_logits(self, logits: np.ndarray) -> np.ndarray:
        """Probabilities of PNEUMONIA, temperature-scaled when the run is calibrated: the one
        place the temperature is applied, whichever backend computed the logits."""
        return sigmoid(np.asarray(logits, dtype=np.float64) / self.temperature)

    def predict_proba(
        self, images: np.ndarray, batch_size: int = 64, rows: np.ndarray | None = None
    ) -> np.ndarray:
        return self.proba_from_logits(self.predict_logits(images, batch_size, rows))


def load_run(run: str | Path, use_calibration: bool = True) -> LoadedRun:
    """Rebuild the model from its card and load the weights (safetensors: no pickle).

    calibration.json is used when present and fitted on these very weights.
    """
    files = RunFiles.of(run)
    card = read_card(files)
    spec = card.input
    model = build_model(card.architecture, spec.in_chans, spec.img_size, pretrained=False)
    try:
        state = load_file(str(files.weights))
        model.load_state_dict(state)
    except Exception as exc:  # corrupt or mismatched weights file
        raise UserError(f"cannot load {files.weights}: {exc}") from None
    model.eval()
    calibration = TemperatureScaler.load(files) if use_calibration else None
    return LoadedRun(files, card, model, calibration)


def check_compatible(cache, loaded: LoadedRun, data: str | Path) -> None:
    """A cache prepared with other preprocessing than the run's would give wrong numbers."""
    if cache.preprocess != loaded.preprocess:
        raise UserError(
            f"{data} was prepared with {cache.preprocess.to_dict()} but the run expects "
            f"{loaded.preprocess.to_dict()}; prepare the data again with the run's --img-size "
            "and --clahe settings"
        )
