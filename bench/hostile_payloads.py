"""Hostile image files, made in memory: decompression bombs of every format the decoders
take, DICOMs whose header and codestream disagree, polyglots, cut and corrupt files.

Each generator is a pure function returning a ``Payload`` (name, bytes, expected): the
expected refusal as a fragment of its one-line message, or None where the pixels are
legitimate and must decode. Every payload is under 5 MB and made in well under a second:
the bombs declare their size in a header and hold little data (a deflate stream of zeros
is made once per megabyte and repeated, never held inflated). Used by
tests/data/test_hostile_decode.py, tests/serving/test_hostile_clients.py and
bench/hostile.py; ``python bench/hostile_payloads.py DIR`` writes them all to DIR.

What each one declares (what decoding it would allocate without the guards):

- jpeg_sof_past_64k: 32000 x 32000 RGB, its frame header after 128 KiB of APP15 segments
  (the old size check read only the first 64 KiB): 2.9 GiB of output, 3.8 GiB with the
  gray copy.
- jpeg_progressive_bomb: 6400 x 6400 RGB progressive: 117 MiB of output, and libjpeg
  keeps every DCT coefficient of a progressive scan (2 bytes a sample): 234 MiB more.
- png_bomb: 9000 x 9000 RGBA at 16 bits (under the 100 MP pixel limit): 618 MiB.
- tiff_bomb: 32000 x 32000 gray, one deflate strip: 1.0 GiB from 8 KiB.
- tiff_ifd_bomb: a 100 x 100 TIFF whose first IFD lists a million strip offsets (4 MB):
  a bomb for the header reader itself (Pillow makes a Python object of each value).
- bmp_bomb: 32000 x 32000 palette RLE8, which OpenCV expands to BGR: 2.9 GiB from 1 KiB.
  (These three stay under OpenCV's own limit of 2^30 pixels: only the budget stops them.)
- dicom_rle_bomb: 7000 x 7000 at 32 bits in real RLE segments of zeros (3 MB): 187 MiB
  stored, and float64 copies of it on the way to 8 bits (the old path: several GiB).
- dicom_deflate_bomb: Deflated Explicit VR Little Endian, 2 MB inflating to 2.0 GiB of
  33000 x 33000 16-bit pixels (pydicom inflates it whole, even for a header).
- dicom_jpeg_frame_lies / dicom_j2k_frame_lies / dicom_jpegls_frame_lies: the header
  says 80 x 64, the embedded JPEG / JPEG 2000 / JPEG-LS frame says 60000 x 60000.
- png_then_jpeg_polyglot: a PNG signature followed by a whole JPEG.
- dicom_tiff_preamble_polyglot: a DICOM whose 128-byte preamble is a TIFF header
  declaring 60000 x 60000 (PS3.10's dual-personality files): decoded as the DICOM it is.
- jpeg_zip_appended: a JPEG with a ZIP archive after its end: legitimate, decodes.
- png_truncated, jpeg_no_scan, tiff_corrupt_ifd, jpeg_garbage, dicom_truncated: cut or
  corrupt files.
"""

from __future__ import annotations

import struct
import sys
import zipfile
import zlib
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, get_frame
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import dcmwrite, write_dataset, write_file_meta_info
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

PATIENT_MARKER = "HOSTILE^PAYLOAD^Q7X"  # every DICOM payload's patient name: logs never show it
DX_IMAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
_SUFFIX = {"jpeg": ".jpg", "png": ".png", "tiff": ".tif", "bmp": ".bmp", "dicom": ".dcm"}


class Payload(NamedTuple):
    name: str
    data: bytes
    expected: str | None  # a fragment of the one-line refusal; None: decodes

    @property
    def decodes(self) -> bool:
        return self.expected is None

    @property
    def suffix(self) -> str:
        """The file extension that matches the format the bytes start as."""
        return _SUFFIX[self.name.split("_")[0]]


TOO_LARGE = "image too large to decode"
UNREADABLE = "not a readable image"


# --- small legitimate images to start from -------------------------------------------------


def _film(h: int = 128, w: int = 160) -> np.ndarray:
    """A gray gradient with a bright block: something a codec has to work on."""
    img = np.tile(np.linspace(20, 230, w), (h, 1)).astype(np.uint8)
    img[h // 4 : h // 2, w // 4 : w // 2] = 250
    return img


def _encode(ext: str, img: np.ndarray, *params: int) -> bytes:
    ok, buf = cv2.imencode(ext, img, list(params))
    assert ok, ext
    return buf.tobytes()


def _segments(jpeg: bytes) -> list[tuple[int, int]]:
    """(offset, marker) of each marker segment before the first scan."""
    found, i = [], 2
    while i + 4 <= len(jpeg) and jpeg[i] == 0xFF:
        marker = jpeg[i + 1]
        found.append((i, marker))
        if marker == 0xDA:
            break
        i += 2 + int.from_bytes(jpeg[i + 2 : i + 4], "big")
    return found


def _with_sof_size(jpeg: bytes, width: int, height: int) -> bytes:
    """The JPEG with its frame header (SOF0/SOF2) saying ``width`` x ``height``."""
    at = next(i for i, m in _segments(jpeg) if m in (0xC0, 0xC1, 0xC2))
    return jpeg[: at + 5] + struct.pack(">HH", height, width) + jpeg[at + 9 :]


# --- raster bombs ------------------------------------------------------------------------------


def jpeg_sof_past_64k() -> Payload:
    """32000 x 32000 x 3 declared by a SOF that sits after 128 KiB of APP15 segments: just
    under OpenCV's own limit of 2^30 pixels, so only the budget stops it."""
    jpeg = _with_sof_size(_encode(".jpg", cv2.merge([_film()] * 3)), 32000, 32000)
    filler = (b"\xff\xef" + struct.pack(">H", 65535) + bytes(65533)) * 2
    return Payload("jpeg_sof_past_64k", jpeg[:2] + filler + jpeg[2:], TOO_LARGE)


def jpeg_progressive_bomb() -> Payload:
    """6400 x 6400 x 3 progressive: in budget as a baseline JPEG, not with its coefficients."""
    small = _encode(".jpg", cv2.merge([_film()] * 3), cv2.IMWRITE_JPEG_PROGRESSIVE, 1)
    return Payload("jpeg_progressive_bomb", _with_sof_size(small, 6400, 6400), TOO_LARGE)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def png_bomb() -> Payload:
    """9000 x 9000 RGBA at 16 bits (81 MP, under MAX_PIXELS), a 1 KiB zlib stream of zeros."""
    ihdr = struct.pack(">IIBBBBB", 9000, 9000, 16, 6, 0, 0, 0)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(bytes(2**20), 9))
        + _png_chunk(b"IEND", b"")
    )
    return Payload("png_bomb", data, TOO_LARGE)


def _tiff(entries: list[tuple[int, ...]], payload: bytes = b"") -> bytes:
    """A little-endian TIFF: header, one IFD of (tag, type, value[, count]) entries, then
    ``payload``, whose offset is what a value of -1 stands for."""
    ifd_size = 2 + 12 * len(entries) + 4
    data_at = 8 + ifd_size
    out = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(entries))
    for tag, kind, value, *count in sorted(entries):
        value = data_at if value == -1 else value
        packed = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, kind, count[0] if count else 1) + packed
    return out + struct.pack("<I", 0) + payload


def tiff_bomb() -> Payload:
    """32000 x 32000 8-bit gray (under OpenCV's 2^30-pixel limit) in one Adobe-deflate
    strip of 8 MiB of zeros (8 KiB)."""
    strip = zlib.compress(bytes(8 * 2**20), 9)
    short, long_ = 3, 4
    entries = [
        (256, long_, 32000), (257, long_, 32000), (258, short, 8), (259, short, 8),
        (262, short, 1), (273, long_, -1), (277, short, 1), (278, long_, 32000),
        (279, long_, len(strip)),
    ]  # fmt: skip
    return Payload("tiff_bomb", _tiff(entries, strip), TOO_LARGE)


def tiff_ifd_bomb() -> Payload:
    """A 100 x 100 TIFF whose first IFD lists a million strip offsets (4 MB): Pillow's
    header reader makes a Python object of each (about 240 MiB and 2 s)."""
    n = 2**20
    short, long_ = 3, 4
    entries = [
        (256, long_, 100), (257, long_, 100), (258, short, 8), (259, short, 1),
        (262, short, 1), (273, long_, -1, n), (277, short, 1), (278, long_, 1),
    ]  # fmt: skip
    data = _tiff(entries, bytes(4 * n))
    return Payload("tiff_ifd_bomb", data, "TIFF header too large")


def bmp_bomb() -> Payload:
    """32000 x 32000 8-bit palette, RLE8 (under OpenCV's 2^30-pixel limit): a few bytes of
    runs, then end of bitmap."""
    palette = b"".join(bytes([g, g, g, 0]) for g in range(256))
    runs = b"\xff\x80" * 8 + b"\x00\x00" + b"\x00\x01"  # 8 runs, end of line, end of bitmap
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, 32000, 32000, 1, 8, 1, len(runs), 2835, 2835, 256, 0)
    head = b"BM" + struct.pack("<IHHI", offset + len(runs), 0, 0, offset)
    return Payload("bmp_bomb", head + info + palette + runs, TOO_LARGE)


# --- DICOM ---------------------------------------------------------------------------------


def _dataset(rows: int, cols: int, bits: int, syntax: str, spp: int = 1) -> Dataset:
    """A chest DX header (no pixels yet) in ``syntax``, named after PATIENT_MARKER."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = DX_IMAGE
    ds.SOPClassUID = DX_IMAGE
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID = PATIENT_MARKER, "HOSTILE-1"
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "DX", "CHEST", "PA"
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, cols, spp
    ds.PhotometricInterpretation = "MONOCHROME2" if spp == 1 else "RGB"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    ds.PixelRepresentation = 0
    return ds


def _part10(ds: Dataset, preamble: bytes | None = None) -> bytes:
    if preamble is not None:
        ds.preamble = preamble
    buf = BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def _encapsulated(ds: Dataset, frame: bytes) -> Dataset:
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    return ds


def _packbits_zero_row(width: int) -> bytes:
    """One row of zeros in DICOM RLE (PackBits): replicate runs of at most 128 bytes."""
    full, rest = divmod(width, 128)
    row = b"\x81\x00" * full  # -127: the next byte 128 times
    return row + (bytes([257 - rest, 0]) if rest else b"")


def rle_frame(rows: int, cols: int, bytes_per_sample: int) -> bytes:
    """An RLE Lossless frame of zeros (PS3.5 Annex G): the 64-byte header (segment count,
    15 offsets), then one segment per byte of a sample, most significant first, each row
    encoded on its own."""
    segment = _packbits_zero_row(cols) * rows
    segment += b"\x00" * (len(segment) % 2)  # segments keep even lengths
    offsets = [64 + k * len(segment) for k in range(bytes_per_sample)]
    header = struct.pack("<16I", bytes_per_sample, *offsets, *[0] * (15 - bytes_per_sample))
    return header + segment * bytes_per_sample


def dicom_rle(rows: int, cols: int, bits: int = 32) -> bytes:
    """A Part 10 file of zeros at ``bits`` (8/16/32) in real RLE segments (small sizes
    decode: the tests check the bomb's structure that way)."""
    ds = _dataset(rows, cols, bits, RLELossless)
    return _part10(_encapsulated(ds, rle_frame(rows, cols, bits // 8)))


def dicom_rle_bomb() -> Payload:
    """7000 x 7000 at 32 bits (49 MP, under MAX_PIXELS), 3 MB of RLE: 187 MiB stored."""
    return Payload("dicom_rle_bomb", dicom_rle(7000, 7000, 32), TOO_LARGE)


_ZERO_CHUNK = 2**20


def deflated_zeros(prefix: bytes, zeros: int) -> bytes:
    """Raw deflate of ``prefix`` then ``zeros`` zero bytes, without ever holding them: a
    full flush resets the compressor, so one compressed megabyte of zeros is repeated."""
    squeeze = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [squeeze.compress(prefix) + squeeze.flush(zlib.Z_FULL_FLUSH)]
    chunk = squeeze.compress(bytes(_ZERO_CHUNK)) + squeeze.flush(zlib.Z_FULL_FLUSH)
    again = squeeze.compress(bytes(_ZERO_CHUNK)) + squeeze.flush(zlib.Z_FULL_FLUSH)
    assert chunk == again  # the repeat is exact only when the compressor forgets between
    whole, rest = divmod(zeros, _ZERO_CHUNK)
    parts += [chunk] * whole
    parts.append(squeeze.compress(bytes(rest)) + squeeze.flush())
    return b"".join(parts)


def dicom_deflated(rows: int, cols: int) -> bytes:
    """Deflated Explicit VR Little Endian with ``rows`` x ``cols`` 16-bit zeros, laid out as
    pydicom's dcmwrite lays it (preamble, file meta, then the raw-deflated dataset) but
    streamed: the pixel data is never held inflated."""
    ds = _dataset(rows, cols, 16, DeflatedExplicitVRLittleEndian)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    length = rows * cols * 2
    pixel_header = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, length)
    meta = DicomBytesIO()
    meta.is_little_endian, meta.is_implicit_VR = True, False
    ds.file_meta.FileMetaInformationGroupLength = 0
    ds.file_meta.FileMetaInformationVersion = b"\x00\x01"
    ds.file_meta.ImplementationClassUID = generate_uid()
    write_file_meta_info(meta, ds.file_meta)
    head = bytes(128) + b"DICM" + meta.getvalue()
    return head + deflated_zeros(body.getvalue() + pixel_header, length)


def dicom_deflate_bomb() -> Payload:
    """2 MB inflating to 33000 x 33000 x 2 bytes = 2.0 GiB."""
    return Payload("dicom_deflate_bomb", dicom_deflated(33000, 33000), "inflates past")


_LIES = "frame says 60000x60000"


def dicom_jpeg_frame_lies() -> Payload:
    """Header 80 x 64, its JPEG Baseline frame's SOF 60000 x 60000."""
    frame = _with_sof_size(_encode(".jpg", _film(64, 80)), 60000, 60000)
    ds = _encapsulated(_dataset(64, 80, 8, JPEGBaseline8Bit), frame)
    return Payload("dicom_jpeg_frame_lies", _part10(ds), _LIES)


def dicom_j2k_frame_lies() -> Payload:
    """Header 80 x 64, its JPEG 2000 frame's SIZ 60000 x 60000 (encoded by pydicom's
    OpenJPEG plugin, then the SIZ's Xsiz/Ysiz rewritten)."""
    ds = _dataset(64, 80, 8, ExplicitVRLittleEndian)
    ds.PixelData = _film(64, 80).tobytes()
    ds.compress(JPEG2000Lossless)
    frame = get_frame(ds.PixelData, 0, number_of_frames=1)
    assert frame[:4] == b"\xff\x4f\xff\x51"  # SOC, SIZ: Xsiz at 8, Ysiz at 12
    frame = frame[:8] + struct.pack(">II", 60000, 60000) + frame[16:]
    return Payload("dicom_j2k_frame_lies", _part10(_encapsulated(ds, frame)), _LIES)


def dicom_jpegls_frame_lies() -> Payload:
    """Header 80 x 64 at 16 bits, its JPEG-LS frame's SOF55 60000 x 60000 (a frame header
    and an empty scan: no JPEG-LS encoder is installed, and none is needed to lie)."""
    sof55 = b"\xff\xf7" + struct.pack(">HBHHB", 11, 16, 60000, 60000, 1) + b"\x01\x11\x00"
    sos = b"\xff\xda" + struct.pack(">HB", 8, 1) + b"\x01\x00" + b"\x00\x00\x00"
    frame = b"\xff\xd8" + sof55 + sos + bytes(64) + b"\xff\xd9"
    ds = _encapsulated(_dataset(64, 80, 16, JPEGLSLossless), frame)
    return Payload("dicom_jpegls_frame_lies", _part10(ds), _LIES)


def dicom_native(rows: int = 128, cols: int = 160, preamble: bytes | None = None) -> bytes:
    """A legitimate 16-bit native chest film (12 bits stored), as a Part 10 file."""
    ds = _dataset(rows, cols, 16, ExplicitVRLittleEndian)
    ds.BitsStored, ds.HighBit = 12, 11
    ds.PixelData = (_film(rows, cols).astype(np.uint16) * 16).tobytes()
    return _part10(ds, preamble)


# --- polyglots -------------------------------------------------------------------------------


def png_then_jpeg_polyglot() -> Payload:
    """A PNG signature, then a whole JPEG: PNG by its magic, JPEG by its content."""
    data = b"\x89PNG\r\n\x1a\n" + _encode(".jpg", _film())
    return Payload("png_then_jpeg_polyglot", data, UNREADABLE)


def dicom_tiff_preamble_polyglot() -> Payload:
    """A DICOM film whose preamble is a TIFF header declaring 60000 x 60000: a dual-
    personality file (PS3.10 allows it), decoded as the DICOM it is, never as the TIFF."""
    short, long_ = 3, 4
    entries = [
        (256, long_, 60000), (257, long_, 60000), (258, short, 8), (259, short, 1),
        (262, short, 1), (273, long_, 132), (277, short, 1), (278, long_, 60000),
        (279, long_, 60000 * 60000),
    ]  # fmt: skip
    preamble = _tiff(entries)
    assert len(preamble) <= 128
    data = dicom_native(preamble=preamble.ljust(128, b"\x00"))
    return Payload("dicom_tiff_preamble_polyglot", data, None)


def jpeg_zip_appended() -> Payload:
    """A JPEG film with a ZIP archive after its end of image: legitimate, decodes."""
    archive = BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("readme.txt", "not an image\n" * 100)
    return Payload("jpeg_zip_appended", _encode(".jpg", _film()) + archive.getvalue(), None)


# --- cut and corrupt ---------------------------------------------------------------------------


def png_truncated() -> Payload:
    """A PNG cut in the middle of its image data."""
    rng = np.random.default_rng(0)  # noise: the image data is long enough to cut in two
    data = _encode(".png", rng.integers(0, 256, (128, 160), dtype=np.uint8))
    return Payload("png_truncated", data[: len(data) // 2], UNREADABLE)


def jpeg_no_scan() -> Payload:
    """A JPEG whose headers are whole but which ends before its scan."""
    jpeg = _encode(".jpg", _film())
    sos = next(i for i, m in _segments(jpeg) if m == 0xDA)
    return Payload("jpeg_no_scan", jpeg[:sos], UNREADABLE)


def tiff_corrupt_ifd() -> Payload:
    """A TIFF whose first IFD lies past the end of the file."""
    return Payload(
        "tiff_corrupt_ifd", b"II*\x00" + struct.pack("<I", 10**6) + bytes(64), UNREADABLE
    )


def jpeg_garbage() -> Payload:
    """JPEG magic, then noise."""
    noise = np.random.default_rng(1).integers(0, 256, 4000, dtype=np.uint8).tobytes()
    return Payload("jpeg_garbage", b"\xff\xd8\xff" + noise, UNREADABLE)


def dicom_truncated() -> Payload:
    """A native 16-bit film with its pixel data cut short by 3000 bytes."""
    data = dicom_native()
    return Payload("dicom_truncated", data[:-3000], "truncated pixel data")


GENERATORS: tuple[Callable[[], Payload], ...] = (
    jpeg_sof_past_64k, jpeg_progressive_bomb, png_bomb, tiff_bomb, tiff_ifd_bomb, bmp_bomb,
    dicom_rle_bomb, dicom_deflate_bomb, dicom_jpeg_frame_lies, dicom_j2k_frame_lies,
    dicom_jpegls_frame_lies, png_then_jpeg_polyglot, dicom_tiff_preamble_polyglot,
    jpeg_zip_appended, png_truncated, jpeg_no_scan, tiff_corrupt_ifd, jpeg_garbage,
    dicom_truncated,
)  # fmt: skip


def all_payloads() -> list[Payload]:
    """Every payload, in a fixed order."""
    return [make() for make in GENERATORS]


def main(argv: list[str]) -> None:
    out = Path(argv[0] if argv else "hostile_payloads")
    out.mkdir(parents=True, exist_ok=True)
    for p in all_payloads():
        (out / f"{p.name}{p.suffix}").write_bytes(p.data)
        print(f"{p.name}{p.suffix}: {len(p.data)} bytes, expected: {p.expected or 'decodes'}")


if __name__ == "__main__":
    main(sys.argv[1:])
