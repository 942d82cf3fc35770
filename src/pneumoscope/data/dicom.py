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

Every failure is an :class:`~pneumoscope.errors.ImageReadError` with a one-line reason:
truncated pixel data says how much is missing, a compression no installed plugin decodes
says which it is and which package would decode it.

Beside the pixels: ``read_header`` reads the facts the intended-use rules need (modality,
body part, view, frames, age, whether the object is an image at all) without the pixels and
without patient names or ids; ``not_image_reason`` says when an object (a report, a
presentation state, a DICOMDIR, ...) is no image; ``dicomdir_references`` lists the files a
DICOMDIR indexes.
"""

from __future__ import annotations

import copy
import os
import re
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from importlib import metadata
from io import BytesIO
from pathlib import Path

import cv2
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import (  # the very steps dcmread takes, to see what it will see
    _read_command_set_elements,
    _read_file_meta_info,
    read_preamble,
)
from pydicom.filewriter import write_file_meta_info
from pydicom.pixels import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi,
    apply_windowing,
    get_decoder,
    pixel_array,
)
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
    MediaStorageDirectoryStorage,
)

from pneumoscope.core.errors import ImageReadError
from pneumoscope.data.headers import Geometry, j2k_geometry, jpeg_geometry
from pneumoscope.data.limits import MAX_DECODED_BYTES, size_text

DICOM_EXTENSIONS = (".dcm", ".dicom")
_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_VOLUME_MODALITIES = ("CT", "MR")
_DEFER_SIZE = 1024 * 1024  # elements larger than this (the pixels) are read only when used
_MIN_SIDE = 8  # the same floor as preprocess.to_gray_uint8
# A dataset stored without preamble starts with its first element: group 0008 (little or
# big endian) or, when it keeps a file meta header, group 0002.
_BARE_STARTS = (b"\x08\x00", b"\x00\x08", b"\x02\x00")


def is_dicom(path: str | os.PathLike) -> bool:
    """True when the file is DICOM by content, whatever its name; never raises.

    A DICOM Part 10 file has a 128-byte preamble followed by ``DICM``. A file without the
    preamble (old exports, some PACS folders) is DICOM when it starts like a dataset
    (group 0008 or 0002; any start when named ``.dcm``/``.dicom``) and pydicom parses a
    plausible header from it.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    if len(head) == 132 and head[128:132] == b"DICM":
        return True
    named = str(path).lower().endswith(DICOM_EXTENSIONS)
    if not named and not head.startswith(_BARE_STARTS):
        return False
    return _plausible_header(path)


def is_dicom_bytes(data: bytes) -> bool:
    """``is_dicom`` for bytes in memory (an upload): the DICM marker, or bytes that start
    like a dataset and parse into a plausible header; never raises."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return True
    if not data.startswith(_BARE_STARTS):
        return False
    return _plausible_header(BytesIO(data))


def _plausible_header(source) -> bool:
    try:
        ds = _dcmread(source, stop_before_pixels=True)
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


def header_dataset(source: str | os.PathLike | bytes) -> Dataset:
    """Every element of a DICOM file or upload but its pixels (what a DICOM result copies
    from its source), read within the decoder's bounds: ``pydicom.dcmread`` alone would
    inflate a Deflated file whole even for its header. ImageReadError when it is no DICOM
    or unreadable."""
    if isinstance(source, bytes | bytearray):
        if not is_dicom_bytes(bytes(source)):
            raise ImageReadError("not a DICOM file (no DICM marker, no readable header)")
        return _parse(BytesIO(source), stop_before_pixels=True, defer_size=None)
    return _read(source, stop_before_pixels=True)


def _decode_dataset(ds: Dataset) -> np.ndarray:
    if not any(tag in ds for tag in _PIXEL_TAGS):
        raise ImageReadError("DICOM without pixel data")
    _check_header(ds)
    _check_frame(ds)
    arr = _first_frame(ds)
    photometric = _photometric(ds)
    try:
        if photometric.startswith("MONOCHROME"):
            out = _monochrome_to_uint8(arr, ds)
            if photometric == "MONOCHROME1":
                np.subtract(255, out, out=out)
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


# --- the header the intended-use rules read ------------------------------------------

# Only these elements are read: never a patient's name or id. The birth date is read only
# to compute an age, and kept nowhere.
AI_MANUFACTURER = "pneumoscope"  # what pneumoscope's own DICOM results say they are from
_HEADER_TAGS = [
    "SpecificCharacterSet", "SOPClassUID", "Modality", "BodyPartExamined", "ViewPosition",
    "ViewCodeSequence", "PatientOrientation", "ConversionType", "Manufacturer",
    "NumberOfFrames", "Rows", "Columns", "PatientAge", "PatientBirthDate", "StudyDate",
    "SeriesDate", "AcquisitionDate", "ContentDate", *_PIXEL_TAGS,
]  # fmt: skip


@dataclass(frozen=True)
class DicomHeader:
    """What a DICOM object is, from its header alone (no pixels, no names, no ids)."""

    sop_class_uid: str = ""
    modality: str = ""  # upper case; "" when the header has none
    body_part: str = ""  # BodyPartExamined, upper case
    view_position: str = ""  # ViewPosition, upper case (AP, PA, LL, ...)
    view_code: str = ""  # ViewCodeSequence's code meaning, lower case
    patient_orientation: tuple[str, ...] = ()
    conversion_type: str = ""  # secondary captures: DF, DI, DV, WSD, SD, SI, DRW, SYN
    manufacturer: str = ""
    frames: int = 1
    rows: int = 0
    columns: int = 0
    has_pixels: bool = False
    age_years: float | None = None
    age_from: str = ""  # "PatientAge" or "the study and birth dates"
    transfer_syntax: str = ""
    media_class_uid: str = ""  # the file meta's MediaStorageSOPClassUID

    @property
    def sop_class_name(self) -> str:
        """The SOP class's name (``CT Image Storage``), or its UID when pydicom has none."""
        uid = UID(self.sop_class_uid or self.media_class_uid)
        return uid.name if uid else "unknown"

    @property
    def is_dicomdir(self) -> bool:
        return MediaStorageDirectoryStorage in (self.media_class_uid, self.sop_class_uid)


def read_header(source: str | os.PathLike | bytes) -> DicomHeader:
    """The header of a DICOM file or of DICOM bytes, pixels left unread (ImageReadError
    when it is no DICOM)."""
    if isinstance(source, bytes | bytearray):
        if not is_dicom_bytes(bytes(source)):
            raise ImageReadError("not a DICOM file (no DICM marker, no readable header)")
        ds = _parse(BytesIO(source), stop_before_pixels=False, defer_size=1024, tags=_HEADER_TAGS)
    else:
        ds = _read(source, stop_before_pixels=False, tags=_HEADER_TAGS, defer_size=1024)
    age, age_from = _age(ds)
    meta = getattr(ds, "file_meta", None) or {}
    view_codes = ds.get("ViewCodeSequence") or []
    return DicomHeader(
        sop_class_uid=_text(ds, "SOPClassUID") or "",
        modality=(_text(ds, "Modality") or "").upper(),
        body_part=(_text(ds, "BodyPartExamined") or "").upper(),
        view_position=(_text(ds, "ViewPosition") or "").upper(),
        view_code=str(view_codes[0].get("CodeMeaning", "")).lower() if view_codes else "",
        patient_orientation=_values(ds, "PatientOrientation"),
        conversion_type=(_text(ds, "ConversionType") or "").upper(),
        manufacturer=_text(ds, "Manufacturer") or "",
        frames=_int(ds, "NumberOfFrames") or 1,
        rows=_int(ds, "Rows"),
        columns=_int(ds, "Columns"),
        has_pixels=any(tag in ds for tag in _PIXEL_TAGS),
        age_years=age,
        age_from=age_from,
        transfer_syntax=str(meta.get("TransferSyntaxUID", "")),
        media_class_uid=str(meta.get("MediaStorageSOPClassUID", "")),
    )


def _age(ds: Dataset) -> tuple[float | None, str]:
    """(years, where from): PatientAge, else the study (or series, acquisition, content)
    date minus the birth date. The birth date itself goes nowhere."""
    age = parse_age(_text(ds, "PatientAge"))
    if age is not None:
        return age, "PatientAge"
    born = _date(_text(ds, "PatientBirthDate"))
    dates = (_date(_text(ds, k)) for k in ("StudyDate", "SeriesDate", "AcquisitionDate"))
    taken = next((d for d in dates if d is not None), _date(_text(ds, "ContentDate")))
    if born is None or taken is None or taken < born:
        return None, ""
    return round((taken - born).days / 365.25, 3), "the study and birth dates"


def _date(value: str | None) -> date | None:
    m = re.fullmatch(r"(\d{4})(\d{2})(\d{2})", (value or "").strip())
    if not m:
        return None
    try:
        return date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    except ValueError:
        return None


# Kinds of DICOM objects that hold no picture to analyse, by SOP class name, then by
# modality when the class is unknown.
_NOT_IMAGE_CLASSES = (
    ("Media Storage Directory", "DICOMDIR, the index of a DICOM file-set"),
    (" SR ", "DICOM Structured Report"),
    ("Key Object Selection", "Key Object Selection document"),
    ("Presentation State", "presentation state"),
    ("Encapsulated", "encapsulated document"),
    ("Waveform", "waveform"),
    ("Segmentation", "segmentation"),
    ("Registration", "spatial registration"),
    ("Raw Data", "raw data"),
    ("Spectroscopy", "spectroscopy data"),
    ("Measurements", "measurements"),
    ("Protocol", "procedure protocol"),
    ("Surface", "surface model"),
    ("Radiation Record", "radiotherapy record"),
)
_NOT_IMAGE_MODALITIES = {
    "SR": "DICOM Structured Report",
    "KO": "Key Object Selection document",
    "PR": "presentation state",
    "DOC": "encapsulated document",
    "SEG": "segmentation",
    "REG": "spatial registration",
    "RTSTRUCT": "radiotherapy object",
    "RTPLAN": "radiotherapy object",
    "RTDOSE": "radiotherapy object",
    "RTRECORD": "radiotherapy object",
}


def not_image_reason(header: DicomHeader) -> str | None:
    """Why a DICOM object is no image to analyse (a report, a presentation state, an RT
    plan, a DICOMDIR, no pixel data, ...), or None for an image."""
    name = header.sop_class_name
    padded = f" {name} "
    what = next((w for key, w in _NOT_IMAGE_CLASSES if key in padded), None)
    if what is None and name.startswith("RT ") and "RT Image" not in name:
        what = "radiotherapy object"
    what = what or _NOT_IMAGE_MODALITIES.get(header.modality)
    if what is None and not header.has_pixels:
        what = "DICOM without pixel data"
    if what is None and header.manufacturer == AI_MANUFACTURER:
        what = "pneumoscope's own AI result (an overlay, not a film)"
    return f"{what} (SOP class {name}): not an image" if what else None


def is_dicomdir(path: str | os.PathLike) -> bool:
    """True for a DICOMDIR (its file meta says Media Storage Directory); reads only the
    file meta header, never raises."""
    try:
        meta = pydicom.filereader.read_file_meta_info(path)
    except Exception:
        return False
    return meta.get("MediaStorageSOPClassUID") == MediaStorageDirectoryStorage


def dicomdir_references(path: str | os.PathLike) -> list[Path]:
    """The files a DICOMDIR names (its records' Referenced File IDs), in record order,
    relative to the DICOMDIR's folder; a name missing on disk is returned as it should be,
    so that the caller can report it. ImageReadError when the DICOMDIR is unreadable."""
    ds = _read(path, stop_before_pixels=True)
    if "DirectoryRecordSequence" not in ds:
        raise ImageReadError("a DICOMDIR without directory records")
    root = Path(path).parent
    found: list[Path] = []
    for record in ds.DirectoryRecordSequence:
        parts = _values(record, "ReferencedFileID")
        if parts:
            found.append(_on_disk(root, parts))
    return list(dict.fromkeys(found))


def _on_disk(root: Path, parts: tuple[str, ...]) -> Path:
    """root/parts, matching each part case-insensitively when the exact name is missing
    (file IDs are upper case; media copied through other systems may not be)."""
    here = root
    for part in parts:
        exact = here / part
        if not exact.exists() and here.is_dir():
            exact = next((c for c in here.iterdir() if c.name.upper() == part.upper()), exact)
        here = exact
    return here


# --- reading -------------------------------------------------------------------------


def _read(
    path: str | os.PathLike,
    stop_before_pixels: bool,
    tags: list[str] | None = None,
    defer_size: int | None = None,
) -> Dataset:
    if not Path(path).is_file():
        raise ImageReadError(f"cannot open file: no such file {Path(path).name!r}")
    if not is_dicom(path):  # force=True below would make a "dataset" out of any bytes
        raise ImageReadError("not a DICOM file (no DICM marker, no readable header)")
    return _parse(Path(path), stop_before_pixels, defer_size or _DEFER_SIZE, tags)


def _parse(
    source, stop_before_pixels: bool, defer_size: int | None, tags: list[str] | None = None
) -> Dataset:
    """A dataset from a path or a file object (only ``tags`` when given), every failure an
    ImageReadError."""
    try:
        ds = _dcmread(
            source, stop_before_pixels=stop_before_pixels, defer_size=defer_size, specific_tags=tags
        )
    except ImageReadError:
        raise
    except FileNotFoundError as exc:
        raise ImageReadError(f"cannot open file: {exc.strerror or exc}") from None
    except Exception as exc:
        raise ImageReadError(f"not a readable DICOM file: {_short(exc)}") from None
    meta = getattr(ds, "file_meta", None)
    if len(ds) == 0 and not (tags and meta is not None and "MediaStorageSOPClassUID" in meta):
        raise ImageReadError("not a readable DICOM file: no data elements")
    _ensure_transfer_syntax(ds)
    return ds


def _dcmread(source, **kwargs) -> Dataset:
    """``pydicom.dcmread(source, force=True, **kwargs)``, except that a Deflated Explicit VR
    Little Endian dataset is inflated here first, within ``MAX_INFLATED_BYTES``: pydicom
    inflates the whole rest of the file in one call (a thousandfold for zeros), even to
    read the header alone."""
    inflated = _inflate_deflated(source)
    if inflated is None:
        return pydicom.dcmread(source, force=True, **kwargs)
    ds = pydicom.dcmread(inflated, force=True, **kwargs)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian  # what the file says
    return ds


def _inflate_deflated(source) -> BytesIO | None:
    """A Deflated file as the same file inflated (its file meta now saying Explicit VR
    Little Endian, so that pydicom reads it as it is), or None for any other transfer
    syntax. ImageReadError when it inflates past the budget or is cut short."""
    with _binary(source) as fp:
        start = fp.tell()
        preamble = read_preamble(fp, True)
        meta = _read_file_meta_info(fp)
        if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
            fp.seek(start)
            return None
        command_start = fp.tell()
        _read_command_set_elements(fp)  # read before the inflating, as dcmread does
        command_end = fp.tell()
        fp.seek(command_start)
        command = fp.read(command_end - command_start)
        compressed = fp.read()
        fp.seek(start)
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    if preamble is not None:
        out.write(preamble + b"DICM")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    write_file_meta_info(out, meta, enforce_standard=False)
    out.write(command)
    _inflate(compressed, out)
    out.seek(0)
    return out


_INFLATE_CHUNK = 4 * 2**20
# pydicom copies each value out of the inflated bytes while it parses them, so a dataset
# parsed from memory is held twice: half the decoding budget keeps that within it.
MAX_INFLATED_BYTES = MAX_DECODED_BYTES // 2


def _inflate(compressed: bytes, out: BytesIO) -> None:
    """Raw deflate into ``out`` a chunk at a time, stopping once past ``MAX_INFLATED_BYTES``:
    the limit counts what is inflated, never what the stream could still become."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    pending, total = compressed, 0
    while not inflater.eof:
        piece = inflater.decompress(pending, _INFLATE_CHUNK)
        pending = inflater.unconsumed_tail
        if not piece and not pending:
            break
        total += len(piece)
        if total > MAX_INFLATED_BYTES:
            raise ImageReadError(
                f"deflated DICOM data inflates past {size_text(MAX_INFLATED_BYTES)}, the limit"
            )
        out.write(piece)
    if not inflater.eof:
        raise ImageReadError("truncated deflated DICOM data: its deflate stream ends early")


@contextmanager
def _binary(source) -> Iterator:
    """A path opened for reading, or the file object itself (the caller rewinds it)."""
    if hasattr(source, "read"):
        yield source
        return
    with open(source, "rb") as f:
        yield f


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
    """Refuse, from the header alone, what frame 0 cannot be decoded into within budget."""
    if not _int(ds, "Rows") or not _int(ds, "Columns"):
        raise ImageReadError("DICOM image without Rows/Columns")
    frames = _int(ds, "NumberOfFrames") or 1
    modality = (_text(ds, "Modality") or "").upper()
    if frames > 1 and modality in _VOLUME_MODALITIES:
        raise ImageReadError("a multi-frame CT/MR volume, not a radiograph")
    _header_geometry(ds).check()


_COLOUR_CONVERSION = 12.0  # pydicom turns YBR into RGB through float32 and float64 copies


def _header_geometry(ds: Dataset) -> Geometry:
    """What decoding frame 0 allocates by the header: Rows x Columns x SamplesPerPixel at
    BitsAllocated, plus what the decoder keeps beside its output."""
    channels = _int(ds, "SamplesPerPixel") or 1
    bits = _int(ds, "BitsAllocated") or 8
    photometric = _photometric(ds)
    extra = 0.0
    if photometric == "PALETTE COLOR":
        channels, bits = 3, 16  # the palette's RGB output, up to 16 bits per sample
    elif photometric.startswith("YBR"):
        extra += _COLOUR_CONVERSION
    ts = _transfer_syntax(ds)
    if ts.is_transfer_syntax and ts.is_compressed:
        extra += (bits + 7) // 8  # the codec's own frame, copied into pydicom's array
    return Geometry(_int(ds, "Columns"), _int(ds, "Rows"), channels, bits, extra)


_CODESTREAM_READERS: dict[str, Callable[[bytes], Geometry]] = {
    **dict.fromkeys(JPEGTransferSyntaxes + JPEGLSTransferSyntaxes, jpeg_geometry),
    **dict.fromkeys(JPEG2000TransferSyntaxes, j2k_geometry),
}


def _check_frame(ds: Dataset) -> None:
    """A compressed frame's codec allocates by the size its own codestream declares, not by
    the header's: refuse a frame that disagrees with the header or passes the budget."""
    ts = _transfer_syntax(ds)
    reader = _CODESTREAM_READERS.get(ts)
    if reader is None:
        return
    try:
        frame = reader(_frame_bytes(ds))
    except ImageReadError as exc:
        raise ImageReadError(f"cannot decode {ts.name} pixel data: {exc}") from None
    header = _header_geometry(ds)
    if (frame.width, frame.height) != (header.width, header.height):
        raise ImageReadError(
            f"DICOM header says {header.width}x{header.height} pixels but its {ts.name} "
            f"frame says {frame.width}x{frame.height}"
        )
    channels, bits = max(frame.channels, header.channels), max(frame.bits, header.bits)
    extra = frame.extra_per_sample + header.extra_per_sample
    Geometry(frame.width, frame.height, channels, bits, extra).check()


def _frame_bytes(ds: Dataset) -> bytes:
    """Frame 0's codestream, taken out of the encapsulated Pixel Data as pydicom does."""
    try:
        eot = ds.get("ExtendedOffsetTable")
        lengths = ds.get("ExtendedOffsetTableLengths")
        offsets = (eot, lengths) if eot is not None and lengths is not None else None
        frames = _int(ds, "NumberOfFrames") or 1
        return get_frame(ds.PixelData, 0, extended_offsets=offsets, number_of_frames=frames)
    except Exception as exc:
        raise ImageReadError(f"cannot read the compressed frame: {_short(exc)}") from None


def _transfer_syntax(ds: Dataset) -> UID:
    return UID(str(ds.file_meta.TransferSyntaxUID))


def _photometric(ds: Dataset) -> str:
    return str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()


def _first_frame(ds: Dataset) -> np.ndarray:
    """Decode only frame 0 (all a radiograph has), saying why on failure."""
    try:
        arr = pixel_array(ds, index=0)
    except Exception as exc:
        raise ImageReadError(_decode_failure(ds, exc)) from None
    return np.asarray(arr)


_TRUNCATED = re.compile(r"less than expected \((\d+) vs (\d+) bytes\)")


def _decode_failure(ds: Dataset, exc: BaseException) -> str:
    """One line: truncated data, an unknown or undecodable compression (which, and the
    package that would decode it), or the decoder's own words."""
    text = _short(exc)
    cut = _TRUNCATED.search(text)
    if cut:
        return f"truncated pixel data: {cut.group(1)} of the {cut.group(2)} bytes it needs"
    ts = UID(str(ds.file_meta.TransferSyntaxUID))
    if not ts.is_transfer_syntax:
        return f"unknown transfer syntax {ts}: its pixel data cannot be decoded"
    if not ts.is_compressed:
        return f"cannot decode pixel data: {text}"
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        return (
            f"unsupported compression {ts.name} ({ts}): no DICOM pixel decoder exists for it "
            "(a video or referenced stream, not a radiograph)"
        )
    others = decoder_packages(ts)
    if not decoder.is_available:
        return (
            f"unsupported compression {ts.name} ({ts}): no decoder installed; "
            f"install {' or '.join(others) or 'a pydicom pixel data plugin'}"
        )
    tail = f"; {' or '.join(others)} may decode it" if others else ""
    return f"cannot decode {ts.name} pixel data: {text}{tail}"


_PLUGIN_PACKAGES = {"gdcm": "python-gdcm"}  # pydicom plugin -> PyPI name where they differ


def decoder_packages(transfer_syntax: str) -> list[str]:
    """The PyPI packages, not installed here, that pydicom would use to decode pixel data
    in ``transfer_syntax`` (e.g. ``python-gdcm``, ``pylibjpeg-rle``); [] when none."""
    try:
        missing = get_decoder(UID(transfer_syntax)).missing_dependencies
    except (NotImplementedError, ValueError):
        return []
    out = []
    for line in missing:  # "gdcm - requires gdcm>=3.0.10", "pylibjpeg - requires a and b"
        plugin, _, needs = line.partition(" - requires ")
        if plugin in _PLUGIN_PACKAGES:
            out.append(_PLUGIN_PACKAGES[plugin])
            continue
        names = [re.split(r"[<>=!~ ]", n.strip())[0] for n in re.split(r",| and ", needs)]
        out += [n for n in names if n and not _installed(n)]
    return list(dict.fromkeys(out))


def _installed(package: str) -> bool:
    try:
        metadata.version(package)
    except metadata.PackageNotFoundError:
        return False
    return True


# --- value transforms ----------------------------------------------------------------


def _monochrome_to_uint8(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]

    def physical(block: np.ndarray) -> np.ndarray:
        return np.asarray(apply_modality_lut(block, ds), dtype=np.float64)

    voi = _voi(ds)
    if voi is not None:
        window, lo, hi = voi
        return _to_uint8(arr, lambda block: window(physical(block)), lo, hi)
    span = _finite_range(arr, physical)
    if span is None:
        return np.zeros(arr.shape, dtype=np.uint8)
    return _to_uint8(arr, physical, *span)


def _voi(ds: Dataset) -> tuple[Callable[[np.ndarray], np.ndarray], float, float] | None:
    """VOI LUT (preferred, as pydicom does) or windowing, as a function of physical values,
    with its full output range.

    Returns None when the file has no usable VOI; a malformed one (e.g. a zero window
    width) falls back to min-max scaling instead of making the image unreadable.
    """
    seq = ds.get("VOILUTSequence")
    has_lut = bool(seq) and "LUTDescriptor" in seq[0] and "LUTData" in seq[0]
    has_window = ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None
    try:
        if has_lut:
            table, first_map = _voi_table(ds)

            def lookup(values: np.ndarray) -> np.ndarray:
                index = np.clip(np.rint(values) - first_map, 0, len(table) - 1).astype(np.intp)
                return table[index]

            return lookup, float(table.min()), float(table.max())
        if has_window:

            def window(values: np.ndarray) -> np.ndarray:
                return np.asarray(apply_windowing(values, ds), dtype=np.float64)

            window(np.zeros(1))  # a malformed window raises now, not half way through
            with np.errstate(over="ignore", invalid="ignore"):  # SIGMOID's exp() at +-1e30
                limits = apply_windowing(np.array([-1e30, 1e30]), ds)
            return window, float(np.min(limits)), float(np.max(limits))
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
    lo, hi = float(arr.min()), float(arr.max())
    return _to_uint8(arr, lambda block: block.astype(np.float64), lo, hi)


# pydicom's transforms return float64 (8 bytes per value, and windowing makes several such
# copies); applied to blocks of rows they give the same pixels, element by element, while
# the float64 temporaries stay a few MiB whatever the image size.
_BLOCK_VALUES = 2**20


def _row_blocks(arr: np.ndarray) -> Iterator[slice]:
    step = max(1, _BLOCK_VALUES // max(1, arr[:1].size))
    for top in range(0, arr.shape[0], step):
        yield slice(top, top + step)


def _to_uint8(
    arr: np.ndarray, transform: Callable[[np.ndarray], np.ndarray], lo: float, hi: float
) -> np.ndarray:
    """``_scale(transform(arr), lo, hi)``, computed a block of rows at a time."""
    out = np.empty(arr.shape, dtype=np.uint8)
    for rows in _row_blocks(arr):
        out[rows] = _scale(transform(arr[rows]), lo, hi)
    return out


def _finite_range(
    arr: np.ndarray, transform: Callable[[np.ndarray], np.ndarray]
) -> tuple[float, float] | None:
    """The smallest and largest finite value of ``transform(arr)``, or None when none is."""
    lo, hi = np.inf, -np.inf
    for rows in _row_blocks(arr):
        values = transform(arr[rows])
        finite = values[np.isfinite(values)]
        if finite.size:
            lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
    return (lo, hi) if lo <= hi else None


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


def _values(ds: Dataset, keyword: str) -> tuple[str, ...]:
    """A multi-valued element as upper-case strings (one value: a 1-tuple)."""
    value = ds.get(keyword)
    if value is None:
        return ()
    items = value if isinstance(value, list | tuple | pydicom.multival.MultiValue) else [value]
    return tuple(str(v).strip().upper() for v in items if str(v).strip())


def _int(ds: Dataset, keyword: str) -> int:
    try:
        return int(ds.get(keyword) or 0)
    except (TypeError, ValueError):
        return 0


def _short(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    text = text or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
