"""DICOM results for DICOM inputs: an SR and a secondary capture per film, in its study.

``dicom_results`` builds the pair for one source image; ``write_dicom_outputs`` does it for
the DICOM inputs of a ``predict`` run (``predict --dicom-out DIR``), computing Grad-CAM on
the same path as ``pneumoscope explain``, and writes ``DIR/<StudyInstanceUID>/
<SOPInstanceUID>.dcm``, ready to be sent to a PACS. Within one call, the results for images
of the same study share one SR series and one capture series.

Inputs that are not DICOM are skipped without complaint (they belong to no study), as are
failed predictions; a file that cannot be turned into results gets its own error and the
others go on. Errors never carry patient data: the messages name attributes, not values.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from pneumoscope.core.errors import ImageReadError
from pneumoscope.core.io import atomic_write
from pneumoscope.data.dicom import (
    decode_dicom,
    decode_dicom_bytes,
    header_dataset,
    is_dicom,
    is_dicom_bytes,
)
from pneumoscope.data.preprocess import load_image
from pneumoscope.inference.predictor import Predictor
from pneumoscope.inference.scoring import Prediction
from pneumoscope.model.run import LoadedRun
from pneumoscope.pacs.capture import secondary_capture
from pneumoscope.pacs.common import ResultInfo, Series, SourceError, sc_series, sr_series
from pneumoscope.pacs.sr import structured_report

__all__ = [
    "DicomOutputs",
    "ResultInfo",
    "dicom_results",
    "dicom_results_bytes",
    "encode",
    "write_dicom_outputs",
]


def dicom_results(
    source: Dataset,
    film: np.ndarray,
    heat: np.ndarray,
    info: ResultInfo,
    series: tuple[Series, Series] | None = None,
) -> tuple[Dataset, Dataset]:
    """(SR, secondary capture) for one DICOM image: ``film`` is its pixels as decoded by
    ``decode_dicom`` (gray uint8), ``heat`` its Grad-CAM in [0, 1] at any size. ``series``
    (SR series, capture series) to add to existing ones; new ones otherwise.
    Raises SourceError when the source has no study or SOP instance UID."""
    sr_s, sc_s = series or (sr_series(), sc_series())
    return structured_report(source, info, sr_s), secondary_capture(source, film, heat, info, sc_s)


def encode(ds: Dataset) -> bytes:
    """The object as a DICOM Part 10 file."""
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def results_bytes(
    source: Dataset, film: np.ndarray, prediction: Prediction, heat: np.ndarray, policy: str
) -> tuple[bytes, bytes]:
    """(SR, capture) as Part 10 bytes from a DICOM image's header (``source``, no pixels
    needed) and its decoded film."""
    info = ResultInfo.from_prediction(prediction, policy)
    return tuple(encode(ds) for ds in dicom_results(source, film, heat, info))


def dicom_results_bytes(
    data: bytes, prediction: Prediction, heat: np.ndarray, threshold_policy: str
) -> tuple[bytes, bytes]:
    """``dicom_results`` for an uploaded DICOM file in memory: (SR, capture) as Part 10 bytes.
    Raises SourceError (not DICOM, no study) or ImageReadError (pixels unreadable)."""
    if not is_dicom_bytes(data):
        raise SourceError("not a DICOM file: only a DICOM image has a study to add results to")
    source = header_dataset(data)  # pydicom.dcmread would inflate a Deflated file whole
    return results_bytes(source, decode_dicom_bytes(data), prediction, heat, threshold_policy)


@dataclass
class DicomOutputs:
    """What ``write_dicom_outputs`` did: files written, inputs skipped, per-file errors."""

    written: list[Path] = field(default_factory=list)
    images: int = 0  # inputs that got their SR and capture
    not_dicom: int = 0  # skipped: not DICOM, so no study to join
    no_result: int = 0  # skipped: no prediction (error, skipped or out of scope)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (input path, reason)

    def summary(self) -> str:
        text = f"DICOM results: {len(self.written)} files for {self.images} images"
        skipped = []
        if self.not_dicom:
            skipped.append(f"{self.not_dicom} inputs that are not DICOM")
        if self.no_result:
            skipped.append(f"{self.no_result} without a prediction")
        if skipped:
            text += "; skipped " + " and ".join(skipped)
        if self.errors:
            text += f"; {len(self.errors)} could not be converted"
        return text


def save(ds: Dataset, out_dir: Path) -> Path:
    """Write ``out_dir/<StudyInstanceUID>/<SOPInstanceUID>.dcm`` atomically."""
    path = Path(out_dir) / str(ds.StudyInstanceUID) / f"{ds.SOPInstanceUID}.dcm"
    atomic_write(path, lambda tmp: ds.save_as(tmp, enforce_file_format=True))
    return path


class _Heatmap:
    """The heatmap of one input on ``pneumoscope explain``'s path (preprocess, then the
    predictor's heatmap: the export's class activation map or Grad-CAM); a bare run gets
    Grad-CAM, its target layer found once, on first use."""

    def __init__(self, run: LoadedRun | Predictor):
        self.predictor = run if isinstance(run, Predictor) else None
        self.loaded = run.loaded if isinstance(run, Predictor) else run
        self.spec = None

    def __call__(self, path: str) -> np.ndarray:
        run = self.loaded
        image = load_image(path, run.preprocess)
        if self.predictor is not None:
            return self.predictor.heatmaps(image[None], batch_size=1)[0]
        from pneumoscope.inference.gradcam import cam_spec, gradcam

        if self.spec is None:
            self.spec = cam_spec(run.model, run.preprocess.img_size, run.in_chans)
        return gradcam(run, image[None], batch_size=1, spec=self.spec)[0]


def _reason(exc: Exception) -> str:
    """A per-file reason without patient data: our own messages, else the error's type."""
    if isinstance(exc, SourceError | ImageReadError):
        return str(exc)
    return f"cannot make DICOM results: {type(exc).__name__}"


def _write_one(
    pred: Prediction,
    info: ResultInfo,
    heat: np.ndarray,
    out_dir: Path,
    studies: dict[str, tuple[Series, Series]],
) -> list[Path]:
    source = header_dataset(pred.path)
    film = decode_dicom(pred.path)
    series = studies.setdefault(str(source.get("StudyInstanceUID", "")), (sr_series(), sc_series()))
    return [save(ds, out_dir) for ds in dicom_results(source, film, heat, info, series)]


def write_dicom_outputs(
    run: LoadedRun | Predictor,
    predictions: Iterable[Prediction],
    out_dir: str | Path,
    heats: Mapping[str, np.ndarray] | None = None,
) -> DicomOutputs:
    """An SR and a secondary capture for each DICOM input whose prediction is "ok", written
    under ``out_dir/<StudyInstanceUID>/``. ``heats`` (heatmaps by input path) when the caller
    has them already; otherwise they are computed here, by the predictor's backend when
    ``run`` is a Predictor (no torch needed for an export with its map), else by Grad-CAM.
    Never raises for one file: its reason goes to ``errors`` and the others go on."""
    out, studies = DicomOutputs(), {}
    cam = _Heatmap(run)
    policy = cam.loaded.threshold_policy
    for pred in predictions:
        if pred.status != "ok" or pred.probability is None:
            out.no_result += 1
            continue
        if not is_dicom(pred.path):
            out.not_dicom += 1
            continue
        try:
            heat = heats.get(pred.path) if heats else None
            heat = cam(pred.path) if heat is None else heat
            info = ResultInfo.from_prediction(pred, policy)
            out.written += _write_one(pred, info, heat, Path(out_dir), studies)
            out.images += 1
        except Exception as exc:  # one file's problem never stops the others
            out.errors.append((pred.path, _reason(exc)))
    return out
