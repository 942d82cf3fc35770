"""DICOM input: recognise DICOM files by content, decode them to 8-bit gray, read metadata.

``decode_dicom`` turns a stored DICOM image into the same kind of array as every other
decoder in :mod:`pneumoscope.preprocess` (2-D ``uint8``, bone bright):

1. stored values -> Modality LUT or Rescale Slope/Intercept (physical values);
2. -> VOI LUT or Window Center/Width when the file has one, mapped so that the VOI
   output range is 0..255 (values outside the window saturate at 0 / 255);
   without a VOI, the values are min-max scaled to 0..255;
3. MONOCHROME1 (bone dark) is inverted to look like MONOCHROME2.

Colour images (RGB, YBR, palette; e.g. secondary captures of a film) are converted to
gray. Of a multi-frame file only the first frame is used (a radiograph has one frame;
some viewers store a few variants), except that a multi-frame CT/MR series is a volume,
not a radiograph, and is refused. Compressed transfer syntaxes decode through pydicom's
pixel data handlers (pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg).

Every failure is an :class:`~pneumoscope.errors.ImageReadError` with a one-line reason.
"""

from __future__ import annotations

import copy
import os
import re
from io import BytesIO
from pathlib import Path

import cv2
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi,
    apply_windowing,
    pixel_array,
)
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from pneumoscope.core.errors import ImageReadError
from pneumoscope.data.limits import MAX_PIXELS

DICOM_EXTENSIONS = (".dcm", ".dicom")
_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_VOLUME_MODALITIES = ("CT", "MR")
_DEFER_SIZE = 1024 * 1024  # elements larger than this (the pixels) are read only when used
_MIN_SIDE = 8  # the same floor as preprocess.to_gray_uint8


def is_dicom(path: str | os.PathLike) -> bool:
    """True when the file is DICOM by content; never raises.

    A DICOM Part 10 file has a 128-byte preamble followed by ``DICM``. Older files
    without the preamble are accepted only when named ``.dcm``/``.dicom`` and pydicom can
    parse a plausible image header from them.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    if len(head) == 132 and head[128:132] == b"DICM":
        return True
    if not str(path).lower().endswith(DICOM_EXTENSIONS):
        return False
    return _plausible_header(path)


def is_dicom_bytes(data: bytes) -> bool:
    """``is_dicom`` for bytes in memory (an upload): the DICM marker, or, as bytes have no
    name, a header pydicom can parse into a plausible image dataset; never raises."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return True
    return _plausible_header(BytesIO(data))


def _plausible_header(source) -> bool:
    try:
        ds = pydicom.dcmread(source, force=True, stop_before_pixels=True)
    except Exception:
        return False
    return "SOPClassUID" in ds or ("Rows" in ds and "Columns" in ds)


def decode_dicom(path: str | os.PathLike) -> np.ndarray:
    """Decode a DICOM image to a 2-D uint8 array (bone bright), or raise ImageReadError."""
    return _decode_dataset(_read(path, stop_before_pixels=False))


def decode_dicom_bytes(data: bytes) -> np.ndarray:
    """``decode_dicom`` for bytes in memory: the same pixels as the same bytes in a file."""
    if not is_dicom_bytes(data):
        raise ImageReadError("not a DICOM file (no DICM marker, no readable header)")
    return _decode_dataset(_parse(BytesIO(data), stop_before_pixels=False, defer_size=None))


def _decode_dataset(ds: Dataset) -> np.ndarray:
    if not any(tag in ds for tag in _PIXEL_TAGS):
        raise ImageReadError("DICOM without pixel data")
    _check_header(ds)
    arr = _first_frame(ds)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    try:
        if photometric.startswith("MONOCHROME"):
            out = _monochrome_to_uint8(arr, ds)
            if photometric == "MONOCHROME1":
                out = 255 - out
        else:
            out = _color_to_uint8(arr, ds, photometric)
    except ImageReadError:
        raise
    except Exception as exc:
        raise ImageReadError(f"cannot convert DICOM pixel data: {_short(exc)}") from None
    if out.ndim != 2 or min(out.shape) < _MIN_SIDE:
        raise ImageReadError(f"unsupported image shape {tuple(out.shape)}")
    return np.ascontiguousarray(out)


def dicom_metadata(path: str | os.PathLike) -> dict:
    """Patient and acquisition facts from the header (pixels are not read).

    Keys: ``patient_id`` (str | None), ``age_years`` (float | None, from PatientAge such
    as ``045Y``, ``006M``, ``003W``, ``010D`` or a bare number of years), ``sex``
    (``"M"``, ``"F"`` or None), ``view`` (ViewPosition such as ``PA``, ``AP``, ``LL``, or
    None) and ``modality`` (``CR``, ``DX``, ... or None).
    """
    ds = _read(path, stop_before_pixels=True)
    sex = _text(ds, "PatientSex")
    sex = sex.upper() if sex else None
    view = _text(ds, "ViewPosition")
    modality = _text(ds, "Modality")
    return {
        "patient_id": _text(ds, "PatientID"),
        "age_years": parse_age(_text(ds, "PatientAge")),
        "sex": sex if sex in ("M", "F") else None,
        "view": view.upper() if view else None,
        "modality": modality.upper() if modality else None,
    }


_AGE_UNITS = {"Y": 1.0, "M": 12.0, "W": 52.1775, "D": 365.25}


def parse_age(value: str | None) -> float | None:
    """DICOM Age String (``nnnY``/``nnnM``/``nnnW``/``nnnD``) or a bare number -> years."""
    if not value:
        return None
    m = re.fullmatch(r"\s*(\d{1,3})\s*([YMWD]?)\s*", str(value).upper())
    if not m:
        return None
    years = int(m.group(1)) / _AGE_UNITS[m.group(2) or "Y"]
    return round(years, 3)


# --- reading -------------------------------------------------------------------------


def _read(path: str | os.PathLike, stop_before_pixels: bool) -> Dataset:
    if not Path(path).is_file():
        raise ImageReadError(f"cannot open file: no such file {Path(path).name!r}")
    if not is_dicom(path):  # force=True below would make a "dataset" out of any bytes
        raise ImageReadError("not a DICOM file (no DICM marker, no readable header)")
    return _parse(Path(path), stop_before_pixels, _DEFER_SIZE)


def _parse(source, stop_before_pixels: bool, defer_size: int | None) -> Dataset:
    """A dataset from a path or a file object, every failure an ImageReadError."""
    try:
        ds = pydicom.dcmread(
            source, force=True, stop_before_pixels=stop_before_pixels, defer_size=defer_size
        )
    except FileNotFoundError as exc:
        raise ImageReadError(f"cannot open file: {exc.strerror or exc}") from None
    except Exception as exc:
        raise ImageReadError(f"not a readable DICOM file: {_short(exc)}") from None
    if len(ds) == 0:
        raise ImageReadError("not a readable DICOM file: no data elements")
    _ensure_transfer_syntax(ds)
    return ds


def _ensure_transfer_syntax(ds: Dataset) -> None:
    """Files without a file meta header: take the encoding pydicom found while reading."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID"):
        return
    implicit, little = getattr(ds, "original_encoding", (True, True))
    if implicit:
        uid = ImplicitVRLittleEndian
    else:
        uid = ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    if meta is None:
        ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid


def _check_header(ds: Dataset) -> None:
    rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
    if not rows or not cols:
        raise ImageReadError("DICOM image without Rows/Columns")
    if rows * cols > MAX_PIXELS:
        raise ImageReadError(
            f"image too large ({cols}x{rows} pixels, limit {MAX_PIXELS // 1_000_000} MP)"
        )
    frames = _int(ds, "NumberOfFrames") or 1
    modality = (_text(ds, "Modality") or "").upper()
    if frames > 1 and modality in _VOLUME_MODALITIES:
        raise ImageReadError("a multi-frame CT/MR volume, not a radiograph")


def _first_frame(ds: Dataset) -> np.ndarray:
    """Decode only frame 0 (all a radiograph has), naming the transfer syntax on failure."""
    try:
        arr = pixel_array(ds, index=0)
    except Exception as exc:
        ts = ds.file_meta.TransferSyntaxUID
        try:
            what = f"{ts.name} " if ts.is_compressed else ""
        except ValueError:  # not a transfer syntax UID at all
            what = f"{ts} "
        raise ImageReadError(f"cannot decode {what}pixel data: {_short(exc)}") from None
    return np.asarray(arr)


# --- value transforms ----------------------------------------------------------------


def _monochrome_to_uint8(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    voi = _apply_voi(values, ds)
    if voi is not None:
        out, lo, hi = voi
        return _scale(out, lo, hi)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros(values.shape, dtype=np.uint8)
    return _scale(values, float(finite.min()), float(finite.max()))


def _apply_voi(values: np.ndarray, ds: Dataset) -> tuple[np.ndarray, float, float] | None:
    """VOI LUT (preferred, as pydicom does) or windowing, with its full output range.

    Returns None when the file has no usable VOI; a malformed one (e.g. a zero window
    width) falls back to min-max scaling instead of making the image unreadable.
    """
    seq = ds.get("VOILUTSequence")
    has_lut = bool(seq) and "LUTDescriptor" in seq[0] and "LUTData" in seq[0]
    has_window = ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None
    try:
        if has_lut:
            table, first_map = _voi_table(ds)
            index = np.clip(np.rint(values) - first_map, 0, len(table) - 1).astype(np.intp)
            return table[index], float(table.min()), float(table.max())
        if has_window:
            out = np.asarray(apply_windowing(values, ds), dtype=np.float64)
            with np.errstate(over="ignore", invalid="ignore"):  # SIGMOID's exp() at +-1e30
                limits = apply_windowing(np.array([-1e30, 1e30]), ds)
            return out, float(np.min(limits)), float(np.max(limits))
    except (ValueError, TypeError, IndexError, NotImplementedError, AttributeError):
        return None
    return None


def _voi_table(ds: Dataset) -> tuple[np.ndarray, int]:
    """Every entry of the first VOI LUT, read by pydicom, and the first input it maps.

    pydicom looks values up through an index array of the LUT's own dtype, which wraps
    for an 8-bit LUT with more than 256 entries or for inputs far outside the table;
    so the table is read once with its nominal depth raised to 16 bits (the entries are
    unchanged) and the clipped lookup is done here.
    """
    item = copy.deepcopy(ds.VOILUTSequence[0])
    nr_entries, first_map, depth = (int(v) for v in item.LUTDescriptor[:3])
    nr_entries = nr_entries or 65536
    if depth < 16:
        item.LUTDescriptor = [item.LUTDescriptor[0], item.LUTDescriptor[1], 16]
    lut_ds = Dataset()
    lut_ds.file_meta = ds.file_meta
    lut_ds.VOILUTSequence = [item]
    every_input = np.arange(first_map, first_map + nr_entries, dtype=np.int64)
    table = np.asarray(apply_voi(every_input, lut_ds), dtype=np.float64)
    return table, first_map


def _color_to_uint8(arr: np.ndarray, ds: Dataset, photometric: str) -> np.ndarray:
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    if arr.ndim == 2:
        return _minmax(arr)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ImageReadError(f"unsupported DICOM pixel layout {tuple(arr.shape)}")
    # pydicom returns colour pixels as RGB (it converts YBR for us)
    if arr.dtype != np.uint8:
        arr = _minmax(arr)
    return cv2.cvtColor(np.ascontiguousarray(arr), cv2.COLOR_RGB2GRAY)


def _minmax(arr: np.ndarray) -> np.ndarray:
    values = arr.astype(np.float64)
    return _scale(values, float(values.min()), float(values.max()))


def _scale(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map [lo, hi] onto 0..255, clipping outside it: never wraps around."""
    if not hi > lo:
        return np.zeros(values.shape, dtype=np.uint8)
    out = (values - lo) * (255.0 / (hi - lo))
    out = np.nan_to_num(out, nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# --- small helpers -------------------------------------------------------------------


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _int(ds: Dataset, keyword: str) -> int:
    try:
        return int(ds.get(keyword) or 0)
    except (TypeError, ValueError):
        return 0


def _short(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    text = text or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
