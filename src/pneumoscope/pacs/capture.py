"""The AI result as a picture every PACS viewer shows: a Secondary Capture image.

The film as decoded (``pneumoscope.data.dicom.decode_dicom``), resized so its long side is
between ``MIN_SIDE`` and ``MAX_SIDE`` pixels, with the Grad-CAM heat blended over it in
colour (JET, as ``pneumoscope explain`` and the web page draw it; the heat itself sets the
opacity, as on the web page, so cool regions keep the film's own gray), and the result
burned in as text on a dark band above the film: the research-use notice, the call with
its probability, threshold and policy, the OOD check and the model id. 8-bit RGB,
uncompressed, BurnedInAnnotation YES; it references the source image it was derived from.
"""

from __future__ import annotations

import textwrap

import cv2
import numpy as np
from highdicom.sc import SCImage
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pneumoscope.inference.explain import caption
from pneumoscope.pacs.common import (
    MANUFACTURER,
    NOTICE,
    ResultInfo,
    Series,
    join_study,
    neutral,
    reference,
    sc_series,
    source_header,
)

MAX_SIDE = 1024
MIN_SIDE = 512  # small films are enlarged so the burned-in text stays legible
MAX_ALPHA = 0.5  # the colour's weight where the heat is 1
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_BAND = (24, 24, 24)
_DERIVATION = "Grad-CAM heatmap of the pneumonia logit blended over the image, result burned in"


def result_lines(info: ResultInfo) -> list[str]:
    """The burned-in text: notice, call, OOD check, model (ASCII: the font has no more)."""
    call = caption(info.label, info.probability, info.threshold)
    if info.ood is None:
        ood = "OOD: not checked (run has no guard)"
    else:
        ood = f"OOD: {'YES - input unlike the training data' if info.ood else 'no'}"
        if info.ood_score is not None:
            ood += f" (score {info.ood_score:.2f})"
    lines = [NOTICE, f"{call}, policy: {info.threshold_policy}", ood, f"model {info.model_id}"]
    if info.outside_note:
        lines.insert(1, "OUTSIDE THE INTENDED USE: " + info.outside_note.split(": ", 1)[-1])
    return [line.encode("ascii", "replace").decode() for line in lines]


def fit_size(shape: tuple[int, int]) -> tuple[int, int]:
    """(width, height) with the long side clamped to [MIN_SIDE, MAX_SIDE], aspect kept."""
    h, w = shape
    scale = min(max(1.0, MIN_SIDE / max(h, w)), MAX_SIDE / max(h, w))
    return max(1, round(w * scale)), max(1, round(h * scale))


def _wrap(lines: list[str], width: int, scale: float) -> list[str]:
    """Lines broken at spaces so each fits ``width`` pixels at font ``scale``."""
    char_w = cv2.getTextSize("M", _FONT, scale, 1)[0][0]
    per_line = max(10, width // max(1, char_w))
    return [part for line in lines for part in textwrap.wrap(line, per_line) or [""]]


def text_band(lines: list[str], width: int) -> np.ndarray:
    """A dark RGB band of ``width`` pixels with ``lines`` in white, the first in yellow."""
    scale = width / 1400  # about 0.73 at 1024 px, 0.37 at 512 px
    thick = 2 if width >= 800 else 1
    wrapped = _wrap(lines, width - 16, scale)
    (_, th), base = cv2.getTextSize("Ag", _FONT, scale, thick)
    step = th + base + 6
    band = np.full((step * len(wrapped) + 10, width, 3), _BAND, np.uint8)
    for k, line in enumerate(wrapped):
        colour = (255, 215, 0) if k == 0 else (255, 255, 255)
        y = 6 + th + k * step
        cv2.putText(band, line, (8, y), _FONT, scale, colour, thick, cv2.LINE_AA)
    return band


def blend(gray: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """RGB: JET-coloured heat over the gray film, each pixel's opacity MAX_ALPHA * heat."""
    level = np.round(heat * 255).astype(np.uint8)
    colour = cv2.cvtColor(cv2.applyColorMap(level, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    alpha = (MAX_ALPHA * heat)[..., None]
    base = cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB).astype(np.float32)
    out = base * (1.0 - alpha) + colour.astype(np.float32) * alpha
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def render(film: np.ndarray, heat: np.ndarray, info: ResultInfo) -> np.ndarray:
    """RGB uint8: the text band above the resized film with the heat blended in."""
    film = np.asarray(film)
    if film.ndim != 2:
        raise ValueError(f"expected a 2-D gray film, got shape {film.shape}")
    size = fit_size(film.shape)
    shrink = size[0] < film.shape[1]
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    gray = cv2.resize(np.clip(film, 0, 255).astype(np.uint8), size, interpolation=interp)
    heat = np.clip(np.nan_to_num(np.asarray(heat, np.float32)), 0.0, 1.0)
    picture = blend(gray, cv2.resize(heat, size, interpolation=cv2.INTER_LINEAR))
    return np.ascontiguousarray(np.concatenate([text_band(result_lines(info), size[0]), picture]))


def _orientation(source: Dataset) -> tuple[str, str] | None:
    value = source.get("PatientOrientation")
    if value is None or len(value) != 2 or not all(str(v).strip() for v in value):
        return None
    return str(value[0]), str(value[1])


def secondary_capture(
    source: Dataset,
    film: np.ndarray,
    heat: np.ndarray,
    info: ResultInfo,
    series: Series | None = None,
) -> Dataset:
    """The Secondary Capture for ``source``: same study and patient, a new series (``series``,
    else a fresh one) and SOP instance, the rendered result as its pixels."""
    header = source_header(source)
    series = series or sc_series()
    orientation = _orientation(header)
    sc = SCImage.from_ref_dataset(
        ref_dataset=neutral(header),
        pixel_array=render(film, heat, info),
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=series.uid,
        series_number=series.number,
        sop_instance_uid=generate_uid(),
        instance_number=series.next_instance(),
        manufacturer=MANUFACTURER,
        patient_orientation=orientation or ("L", "F"),  # highdicom needs one; cleared below
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=series.description,
        manufacturer_model_name=info.model_id[:64],
        software_versions=info.version,
    )
    if orientation is None:
        sc.PatientOrientation = None  # type 2: unknown rather than made up
    join_study(sc, header)
    _describe(sc, header)
    return sc


def _describe(sc: Dataset, source: Dataset) -> None:
    """What a viewer and an auditor need to know about the picture."""
    sc.ConversionType = "WSD"  # made on a workstation, not digitised from an interface
    sc.BurnedInAnnotation = "YES"
    sc.ImageComments = NOTICE
    sc.DerivationDescription = _DERIVATION
    sc.SourceImageSequence = [reference(source)]
    # the model reads chest films: the chest is an unpaired body part, so Laterality (type
    # 2C) stays absent unless the source has one
    sc.BodyPartExamined = source.get("BodyPartExamined") or "CHEST"
    if source.get("Laterality"):
        sc.Laterality = source.Laterality
