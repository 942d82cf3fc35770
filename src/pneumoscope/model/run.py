"""A loaded run: its card, calibration, batched inference and, when asked for, its network.

Everything predict and evaluate need is read from the run folder (through
``model.contract``), so the preprocessing and normalisation used at training time are
repeated exactly. The PyTorch network (``model.network``) is loaded on first use: a run
scored by ONNX Runtime never needs it, and the serving install has no torch at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pneumoscope.core.errors import UserError
from pneumoscope.data.preprocess import PreprocessConfig
from pneumoscope.model.calibration import TemperatureScaler, sigmoid
from pneumoscope.model.contract import InputSpec, ModelCard, RunFiles, read_card
from pneumoscope.model.tta import TestTimeAugmentation, with_tta

__all__ = ["LoadedRun", "check_compatible", "load_run", "row_batches", "sigmoid", "torch_missing"]

TORCH_HINT = (
    "install the training extra (pip install 'pneumoscope[train]'), or score with an "
    "exported run: --backend onnx or onnx-int8 after 'pneumoscope export'"
)


def torch_missing(what: str) -> UserError | None:
    """A one-line error when PyTorch is not installed (the serving install), else None."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return UserError(f"{what} needs PyTorch, which this install does not have: {TORCH_HINT}")
    return None


def row_batches(
    images: np.ndarray, rows: np.ndarray | None, batch_size: int
) -> Iterator[tuple[int, np.ndarray]]:
    """(start, contiguous uint8 chunk) of ``images[rows]`` batch by batch, so a large
    (memory-mapped) split is never loaded whole; ``rows`` None means every image."""
    rows = np.arange(len(images)) if rows is None else np.asarray(rows)
    for start in range(0, len(rows), batch_size):
        yield start, np.ascontiguousarray(images[rows[start : start + batch_size]])


class LoadedRun:
    """A run folder in memory: its files, card, calibration (when calibrated) and network.

    ``model`` is the PyTorch network, loaded from the weights on first use.
    """

    def __init__(
        self,
        files: RunFiles,
        card: ModelCard,
        model: Any = None,
        calibration: TemperatureScaler | None = None,
    ):
        self.files = files
        self.card = card
        self._model = model
        self.calibration = calibration

    @property
    def model(self):
        """The PyTorch network (``torch.nn.Module``), loaded from the weights once."""
        if self._model is None:
            problem = torch_missing(f"the torch model of {self.files.root}")
            if problem:
                raise problem
            from pneumoscope.model.network import load_network

            self._model = load_network(self.files, self.card)
        return self._model

    def without_network(self) -> LoadedRun:
        """The same run with its network left out (what travels to remote workers)."""
        return LoadedRun(self.files, self.card, None, self.calibration)

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

    def scorer(self, runner=None, views=None):
        """``runner`` (default: this run's torch model) as every command scores with it:
        wrapped in the calibration's test-time augmentation when it has it (``views``: its
        transforms as an export recorded them; drawn with torch when None)."""
        return with_tta(self if runner is None else runner, self.tta, views)

    @property
    def in_chans(self) -> int:
        return self.spec.in_chans

    @property
    def eval_crop(self) -> float:
        """Evaluation resize factor before the centre crop (1.0: none)."""
        return self.spec.eval_crop

    def model_input(self, x_uint8):
        """uint8 tensor (B,1,S,S) -> exactly what the network saw at validation time."""
        from pneumoscope.model.network import model_input, spec_tensors

        mean, std = spec_tensors(self.spec)
        return model_input(x_uint8, mean, std, self.in_chans, self.eval_crop)

    def inference_net(self):
        """The network with its input path: uint8 (B,1,S,S) -> (logits, features)."""
        from pneumoscope.model.network import InferenceNet, spec_tensors

        mean, std = spec_tensors(self.spec)
        return InferenceNet(self.model, mean, std, self.in_chans, self.eval_crop).eval()

    def logits_and_features(
        self, images: np.ndarray, batch_size: int = 64, rows: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Logits (N,) and penultimate features (N, D) of preprocessed uint8 images (torch)."""
        import torch

        net = self.inference_net()
        logits, feats = [], []
        with torch.inference_mode():
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
    """A run folder's card and calibration; its network loads on first use (``model``).

    calibration.json is used when present and fitted on these very weights.
    """
    files = RunFiles.of(run)
    card = read_card(files)
    if not files.weights.is_file():
        raise UserError(f"cannot load {files.weights}: no such file")
    calibration = TemperatureScaler.load(files) if use_calibration else None
    return LoadedRun(files, card, None, calibration)


def check_compatible(cache, loaded: LoadedRun, data: str | Path) -> None:
    """A cache prepared with other preprocessing than the run's would give wrong numbers."""
    if cache.preprocess != loaded.preprocess:
        raise UserError(
            f"{data} was prepared with {cache.preprocess.to_dict()} but the run expects "
            f"{loaded.preprocess.to_dict()}; prepare the data again with the run's --img-size "
            "and --clahe settings"
        )
