"""Image geometry from headers alone, so that decoding is refused before it allocates.

OpenCV (raster files) and pydicom's plugins (DICOM) allocate whatever a header declares,
and ``cv2.imdecode`` has no header-only mode. Pillow reads raster headers lazily
(``Image.open`` never touches the pixels unless ``load()`` is called), wherever the size
sits in the file; DICOM codestreams in JPEG formats Pillow does not read (12/16-bit,
lossless, JPEG-LS) go through the short marker reader here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from io import BytesIO

from PIL import (
    BmpImagePlugin,
    Image,
    Jpeg2KImagePlugin,
    JpegImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
)

from pneumoscope.core.errors import ImageReadError
from pneumoscope.data.limits import check_decode_budget, size_text

# what ``preprocess.sniff_image`` calls each raster format -> Pillow's name and reader
_PILLOW_FORMATS = {"png": ("PNG",), "jpeg": ("JPEG", "MPO"), "tiff": ("TIFF",), "bmp": ("BMP",)}
_PILLOW_READER = {
    "png": PngImagePlugin.PngImageFile,
    "jpeg": JpegImagePlugin.JpegImageFile,
    "tiff": TiffImagePlugin.TiffImageFile,
    "bmp": BmpImagePlugin.BmpImageFile,
}
_GRAY_MODES = {"1", "L", "I", "F", "I;16", "I;16B", "I;16L", "I;16N"}
_COLOUR_MODES = {"RGB", "YCbCr", "LAB", "HSV"}
_PROGRESSIVE_COEFFICIENTS = 2.0  # libjpeg keeps every DCT coefficient (int16) of every scan


@dataclass(frozen=True)
class Geometry:
    """What a decoder will allocate: its output and what it keeps beside it."""

    width: int
    height: int
    channels: int
    bits: int
    extra_per_sample: float = 0.0

    def check(self) -> None:
        """ImageReadError when decoding this geometry passes the memory budget."""
        check_decode_budget(
            self.width, self.height, self.channels, self.bits, self.extra_per_sample
        )


def raster_geometry(data: bytes, kind: str) -> Geometry:
    """What ``cv2.imdecode(..., IMREAD_UNCHANGED)`` will allocate for ``data``, a file
    whose magic bytes say ``kind`` (png, jpeg, tiff, bmp); ImageReadError, in one line, when
    Pillow cannot read its header or reads it as another format (a polyglot)."""
    if kind == "tiff":
        _check_tiff_ifd(data)
    name, reader = kind.upper(), _PILLOW_READER[kind]
    with _open_header(data, name, reader, why="not a readable image: ") as im:
        if im.format not in _PILLOW_FORMATS[kind]:  # MPO: JPEGs one after the other
            raise ImageReadError(
                f"not a readable image: it starts like {kind.upper()} but its content reads "
                f"as {im.format} (a polyglot)"
            )
        channels = 1 if im.mode in _GRAY_MODES else 3 if im.mode in _COLOUR_MODES else 4
        bits, extra = 8, 0.0
        if kind == "png":
            bits = 16 if data[24] == 16 else 8  # IHDR's depth: Pillow reads 16-bit RGB as RGB
        elif kind == "tiff":
            channels, bits = max(channels, im.tag_v2.get(277, 1)), _tiff_bits(im)
            extra = (bits + 7) // 8  # OpenCV reads a strip (up to the whole image) first
        elif kind == "jpeg" and im.info.get("progressive"):
            extra = _PROGRESSIVE_COEFFICIENTS
        return Geometry(im.width, im.height, channels, bits, extra)


def _open_header(
    data: bytes, name: str, reader: type, formats: list[str] | None = None, why: str = ""
) -> Image.Image:
    """Pillow's lazy header read (``formats``: the readers to try, all by default); ``why``
    starts the ImageReadError's message. Pillow's own pixel-count guard would hide the size
    from the budget's message, so a header it refuses as a bomb is read again by the
    format's own reader, which has no such guard."""
    try:
        return Image.open(BytesIO(data), formats=formats)
    except Image.DecompressionBombError:
        pass
    except Exception as exc:
        raise ImageReadError(why + _pillow_reason(exc, name)) from None
    try:
        return reader(BytesIO(data))
    except Exception as exc:
        raise ImageReadError(why + _pillow_reason(exc, name)) from None


def _pillow_reason(exc: BaseException, name: str) -> str:
    if isinstance(exc, Image.UnidentifiedImageError):
        return f"it starts like {name} but its header is invalid"
    text = " ".join(str(exc).split())[:120] or type(exc).__name__
    return f"its {name} header is invalid ({text})"


# Pillow turns every SHORT, LONG, RATIONAL... of the first IFD into a Python object (some
# 200 bytes each while it reads them): 5 million strip offsets, 19 MB on disk, cost 1.2 GiB
# and 10 s. A legitimate film has at most two per row (RowsPerStrip 1: offsets and counts).
_TIFF_TYPE_BYTES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8,
                    13: 4, 16: 8, 17: 8, 18: 8}  # fmt: skip
_TIFF_BYTE_TYPES = (1, 2, 6, 7)  # kept as bytes or text by Pillow, not as objects
MAX_TIFF_TAG_VALUES = 2**18
MAX_TIFF_TAG_BYTES = 16 * 2**20


def _check_tiff_ifd(data: bytes) -> None:
    """Refuse a first IFD whose tags hold more values than a film's header could need,
    before Pillow reads them into Python objects (the header reader must not be a bomb)."""
    order = "<" if data.startswith(b"II") else ">"
    try:
        (at,) = struct.unpack_from(order + "I", data, 4)
        (entries,) = struct.unpack_from(order + "H", data, at)
    except struct.error:
        return  # no IFD: Pillow says why it cannot read it
    present = min(entries, max(0, len(data) - at - 2) // 12)  # a cut IFD: what is there
    fields = [struct.unpack_from(order + "HHI", data, at + 2 + 12 * k) for k in range(present)]
    values = sum(n for _, kind, n in fields if kind not in _TIFF_BYTE_TYPES)
    size = sum(n * _TIFF_TYPE_BYTES.get(kind, 1) for _, kind, n in fields)
    if values > MAX_TIFF_TAG_VALUES or size > MAX_TIFF_TAG_BYTES:
        raise ImageReadError(
            f"TIFF header too large to read: its first IFD declares {values} values in "
            f"{size_text(size)}, the limit is {MAX_TIFF_TAG_VALUES} values in "
            f"{size_text(MAX_TIFF_TAG_BYTES)}"
        )


def _tiff_bits(im: Image.Image) -> int:
    """Bits per sample of OpenCV's output for a TIFF (8, 16, 32 or 64) from BitsPerSample."""
    declared = im.tag_v2.get(258, (1,))
    declared = max(declared) if isinstance(declared, tuple) else int(declared)
    return next((b for b in (8, 16, 32) if declared <= b), 64)


# --- codestreams inside DICOM ------------------------------------------------------------

_SOF = frozenset([*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), 0xCD, 0xCE, 0xCF,
                  0xF7])  # fmt: skip  # SOF0-15 (not DHT, JPG, DAC), JPEG-LS SOF55
_PROGRESSIVE = frozenset([0xC2, 0xC6, 0xCA, 0xCE])
_STANDALONE = frozenset([0x01, *range(0xD0, 0xD9)])  # TEM, RSTn, SOI: no length
_OPENJPEG_PLANES = 4.0  # OpenJPEG decodes every component to an int32 plane first


def jpeg_geometry(data: bytes) -> Geometry:
    """The frame header of a JPEG, JPEG lossless or JPEG-LS codestream: the first SOFn or
    SOF55 however far from the start, skipping segments by their lengths as libjpeg does.
    ImageReadError (the reason alone) when no frame header comes before the first scan."""
    i = 2 if data.startswith(b"\xff\xd8") else len(data)
    while i + 4 <= len(data):
        if data[i] != 0xFF or data[i + 1] == 0xFF:  # stray byte or fill byte
            i += 1
            continue
        marker = data[i + 1]
        if marker in _STANDALONE:
            i += 2
            continue
        if marker in (0xDA, 0xD9):  # start of scan, end of image
            break
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker in _SOF and length >= 8 and i + 10 <= len(data):
            extra = _PROGRESSIVE_COEFFICIENTS if marker in _PROGRESSIVE else 0.0
            width, height = _u16(data, i + 7), _u16(data, i + 5)
            return Geometry(width, height, data[i + 9], data[i + 4], extra)
        if length < 2:
            break
        i += 2 + length
    raise ImageReadError("its JPEG codestream has no frame header (SOF) before the scan")


def j2k_geometry(data: bytes) -> Geometry:
    """A JPEG 2000 codestream's (or JP2 file's) size and components, read by Pillow; OpenJPEG
    holds each component as int32 while it decodes. ImageReadError (the reason alone) when
    its header is unreadable."""
    reader = Jpeg2KImagePlugin.Jpeg2KImageFile
    with _open_header(data, "JPEG 2000", reader, formats=["JPEG2000"], why="") as im:
        bits = 16 if im.mode == "I;16" else 8  # Pillow gives a depth for one component only
        return Geometry(im.width, im.height, len(im.getbands()), bits, _OPENJPEG_PLANES)


def _u16(data: bytes, at: int) -> int:
    return int.from_bytes(data[at : at + 2], "big")
