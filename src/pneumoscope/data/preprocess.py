"""The one preprocessing path: dataset building, training, prediction and serving all call it.

An image is decoded once to 8-bit grayscale, contrast-equalised with CLAHE (optional)
and resized to a square. The parameters live in ``PreprocessConfig`` and are stored in
the cache and in each run's ``model.json`` so that prediction repeats them exactly.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from pneumoscope.core.errors import ImageReadError
from pneumoscope.data.dicom import decode_dicom, decode_dicom_bytes, is_dicom, is_dicom_bytes
from pneumoscope.data.headers import raster_geometry

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".dcm", ".dicom")
MAX_FILE_BYTES = 512 * 1024 * 1024

cv2.setNumThreads(1)  # parallelism comes from worker processes, not from OpenCV threads


@dataclass(frozen=True)
class PreprocessConfig:
    img_size: int = 224
    clahe: bool = True
    clahe_clip_limit: float = 2.0
    clahe_tile_grid: int = 8

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessConfig:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


def decode_gray(path: str | Path) -> np.ndarray:
    """Decode an image file to a 2-D uint8 array, or raise ImageReadError with the reason.

    Handles 8/16-bit, gray, RGB, RGBA and CMYK files (OpenCV converts CMYK JPEGs to BGR).
    16-bit images are min-max scaled to 8 bits so their full range is kept.
    DICOM files (recognised by content, not by name) go through ``dicom.decode_dicom``.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ImageReadError(f"cannot open file: {exc.strerror or exc}") from None
    if size == 0:
        raise ImageReadError("empty file (0 bytes)")
    if size > MAX_FILE_BYTES:
        raise ImageReadError(f"file too large ({size / 2**20:.0f} MiB)")
    if is_dicom(path):
        return decode_dicom(path)  # refuses an over-budget image from its header
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageReadError(f"cannot open file: {exc.strerror or exc}") from None
    return decode_gray_bytes(data)


def decode_gray_bytes(data: np.ndarray | bytes) -> np.ndarray:
    """Decode encoded raster bytes (PNG, JPEG, TIFF, BMP) to a 2-D uint8 array.

    Only formats recognised by their magic bytes reach OpenCV, and only once Pillow has read
    the same format's header and the decoding it declares fits the memory budget
    (``limits.MAX_DECODED_BYTES``): OpenCV allocates whatever a header says.
    """
    buf = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes) else data
    if buf.size == 0:
        raise ImageReadError("empty file (0 bytes)")
    raw = data if isinstance(data, bytes) else buf.tobytes()
    kind = _magic_kind(raw)
    if kind not in _RASTER_KINDS:
        raise ImageReadError(_UNREADABLE)
    raster_geometry(raw, kind).check()
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error:  # OpenCV's own checks (its size limits, a malformed stream) raise
        img = None
    if img is None:
        raise ImageReadError(_UNREADABLE)
    return to_gray_uint8(img)


_UNREADABLE = "not a readable image (corrupt, truncated or unsupported format)"
_RASTER_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"BM", "bmp"),
)
_RASTER_KINDS = ("png", "jpeg", "tiff", "bmp")


def sniff_image(data: bytes) -> str | None:
    """What the bytes are by content alone ("dicom", "png", "jpeg", "tiff", "bmp"), or None
    for anything else: uploads are recognised by their bytes, never by a name or a header."""
    return _magic_kind(data) or ("dicom" if data and is_dicom_bytes(data) else None)


def _magic_kind(data: bytes) -> str | None:
    """``sniff_image`` by magic bytes alone (a DICOM without preamble is None here)."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"  # checked first: a DICOM preamble may itself look like TIFF
    return next((kind for magic, kind in _RASTER_MAGIC if data.startswith(magic)), None)


def decode_image_bytes(data: bytes) -> np.ndarray:
    """``decode_gray`` for bytes in memory (an upload, never written to disk): the same
    limits, and the same pixels as the same bytes read from a file."""
    if len(data) == 0:
        raise ImageReadError("empty file (0 bytes)")
    if len(data) > MAX_FILE_BYTES:
        raise ImageReadError(f"file too large ({len(data) / 2**20:.0f} MiB)")
    if sniff_image(data) == "dicom":
        return decode_dicom_bytes(data)  # refuses an over-budget image from its header
    return decode_gray_bytes(data)


def to_gray_uint8(img: np.ndarray) -> np.ndarray:
    """Any decoded array (H,W), (H,W,3) BGR, (H,W,4) BGRA, 8 or 16 bit -> (H,W) uint8."""
    if img.ndim == 3:
        if img.shape[2] == 4:
            img = cv2.cvtColor(img, cv2.COLOR_BGRA2GRAY)
        elif img.shape[2] == 3:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        elif img.shape[2] == 1:
            img = img[:, :, 0]
        else:
            raise ImageReadError(f"unsupported channel count {img.shape[2]}")
    if img.ndim != 2 or min(img.shape) < 8:
        raise ImageReadError(f"unsupported image shape {tuple(img.shape)}")
    if img.dtype == np.uint8:
        return np.ascontiguousarray(img)
    img = img.astype(np.float32)  # the one working copy the memory budget counts
    lo, hi = float(img.min()), float(img.max())
    if hi <= lo:
        return np.zeros(img.shape, dtype=np.uint8)
    img -= lo  # in place: the same float32 arithmetic as (img - lo) * scale, no temporaries
    img *= 255.0 / (hi - lo)
    np.round(img, out=img)
    return img.astype(np.uint8)


def preprocess_gray(gray: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """Decoded grayscale -> model-ready uint8 square of ``cfg.img_size``.

    Resize first (area interpolation when shrinking), then CLAHE, so that the
    tile grid covers the same anatomy whatever the source resolution.
    """
    s = cfg.img_size
    interp = cv2.INTER_AREA if gray.shape[0] >= s and gray.shape[1] >= s else cv2.INTER_LINEAR
    out = cv2.resize(gray, (s, s), interpolation=interp)
    if cfg.clahe:
        clahe = cv2.createCLAHE(
            clipLimit=cfg.clahe_clip_limit, tileGridSize=(cfg.clahe_tile_grid, cfg.clahe_tile_grid)
        )
        out = clahe.apply(out)
    return out


def load_image(path: str | Path, cfg: PreprocessConfig) -> np.ndarray:
    """Decode and preprocess one file: the function every stage uses."""
    return preprocess_gray(decode_gray(path), cfg)


def load_image_bytes(data: bytes, cfg: PreprocessConfig) -> np.ndarray:
    """``load_image`` for bytes in memory: decode and preprocess one upload."""
    return preprocess_gray(decode_image_bytes(data), cfg)


def try_load_image(path: str | Path, cfg: PreprocessConfig) -> tuple[np.ndarray | None, str]:
    """(image, "") or (None, reason): how batch stages read files, so that one odd file,
    even one that trips a decoder bug, becomes a reported row and never stops the batch."""
    gray, err = try_decode_gray(path)
    return (None, err) if gray is None else (preprocess_gray(gray, cfg), "")


def try_decode_gray(path: str | Path) -> tuple[np.ndarray | None, str]:
    """``try_load_image`` before preprocessing: the decoded film, or (None, reason)."""
    try:
        return decode_gray(path), ""
    except ImageReadError as exc:
        return None, str(exc)
    except Exception as exc:
        return None, f"unexpected error: {type(exc).__name__}: {exc}"


def is_image_file(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(IMAGE_EXTENSIONS)
