"""The population check: whose film is this, a young child's or an adult's?

A small network, separate from the pneumonia model, reads the decoded film and estimates
p(adult). It ships inside the package (``model/population/``: an ONNX file of 1 MB and its
card, ``population_check.json``: training data, licences, threshold and the rule that
chose it, validation figures, the command that retrains it), so every run gets it without
a download. A run can carry its own (``RUN/population_check/``, written by
``pneumoscope population retrain --run RUN``), which then replaces the shipped one.

The film is decoded once; the check preprocesses it its own way (its card's ``input``:
128 px, CLAHE) beside the pneumonia model's preprocessing. ONNX Runtime on one thread, no
torch: about 0.5 ms a film on a 2-core CPU.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from pneumoscope.core.errors import UserError
from pneumoscope.data.preprocess import PreprocessConfig, preprocess_gray

CARD_NAME = "population_check.json"
ONNX_NAME = "population_check.onnx"
RUN_FOLDER = "population_check"  # inside a run: the run's own check, when it has one
GROUPS = ("child", "adult")
_SESSIONS: dict[str, PopulationCheck] = {}
_LOCK = threading.Lock()


@dataclass(frozen=True)
class PopulationEstimate:
    """The check's answer for one film: ``group`` (child or adult) from p(adult) against
    the check's threshold."""

    group: str
    adult_probability: float
    threshold: float

    def describe(self) -> str:
        """One line for people, naming where the estimate comes from."""
        if self.group == "adult":
            looks = "looks like an adult's (or an older child's) film"
        else:
            looks = "looks like a young child's film"
        return (
            f"{looks}: estimated from the image by the population check, p(adult) = "
            f"{self.adult_probability:.3f} (threshold {self.threshold:.3f})"
        )


def shipped_folder() -> Path:
    """The folder of the check shipped in the package."""
    return Path(str(resources.files("pneumoscope.model") / "population"))


def check_folder(run_folder: str | Path | None = None) -> Path:
    """The check a run uses: its own ``RUN/population_check/`` when present, else the
    shipped one."""
    if run_folder is not None:
        own = Path(run_folder) / RUN_FOLDER
        if (own / CARD_NAME).is_file():
            return own
    return shipped_folder()


class PopulationCheck:
    """The check loaded from a folder (its card and ONNX file), ready to score films."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        card_path = self.folder / CARD_NAME
        try:
            self.card = json.loads(card_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UserError(
                f"population check {self.folder}: cannot read {CARD_NAME}: {exc}"
            ) from None
        if self.card.get("format") != 1:
            raise UserError(
                f"population check {self.folder}: card format {self.card.get('format')!r} is not 1"
            )
        spec = self.card["input"]
        self.preprocess = PreprocessConfig.from_dict(spec)
        self.mean, self.std = float(spec["mean"]), float(spec["std"])
        self.threshold = float(self.card["threshold"])
        self.name = str(self.card.get("name", self.folder.name))
        self._session = _onnx_session(self.folder / ONNX_NAME, self.card.get("files", {}))

    @classmethod
    def cached(cls, folder: str | Path) -> PopulationCheck:
        """One loaded check per folder and process (decoding workers share nothing)."""
        key = str(Path(folder).resolve())
        with _LOCK:
            if key not in _SESSIONS:
                _SESSIONS[key] = cls(key)
            return _SESSIONS[key]

    def prepare(self, gray: np.ndarray) -> np.ndarray:
        """A decoded film (2-D uint8) as the check reads it: its own square and CLAHE."""
        return preprocess_gray(gray, self.preprocess)

    def adult_probability(self, squares: np.ndarray) -> np.ndarray:
        """p(adult) for a stack of prepared squares (N x S x S uint8)."""
        x = (squares.astype(np.float32)[:, None] / 255.0 - self.mean) / self.std
        logits = self._session.run(None, {"x": x})[0].reshape(-1).astype(np.float64)
        return 1.0 / (1.0 + np.exp(-logits))

    def estimate(self, gray: np.ndarray) -> PopulationEstimate:
        """The estimate for one decoded film."""
        p = float(self.adult_probability(self.prepare(gray)[None])[0])
        return PopulationEstimate("adult" if p > self.threshold else "child", p, self.threshold)

    def summary(self) -> dict:
        """What /v1/model and the report say about the check in use."""
        keep = ("name", "task", "threshold", "threshold_rule", "validation", "limits", "retrain")
        return {k: self.card[k] for k in keep if k in self.card} | {"folder": str(self.folder)}


def _onnx_session(path: Path, digests: dict):
    """An ONNX Runtime session on one thread, after checking the file's SHA-256 against the
    card (a check whose weights were swapped or cut is refused, not used)."""
    import onnxruntime as ort

    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise UserError(f"population check: cannot read {path}: {exc.strerror or exc}") from None
    want = digests.get(path.name)
    if want and hashlib.sha256(blob).hexdigest() != want:
        raise UserError(f"population check: {path} does not match the SHA-256 its card records")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"])
