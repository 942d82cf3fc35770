"""Input bounds shared by every decoder (raster and DICOM).

A file's size says little about what decoding it costs: a few kilobytes can declare a
60000 x 60000 image. So every decoder reads the geometry from the header first and asks
``check_decode_budget`` before a single pixel is allocated.
"""

from __future__ import annotations

from pneumoscope.core.errors import ImageReadError

MAX_PIXELS = 100_000_000  # refuse decompression bombs: 10k x 10k is already larger than any CXR

# The largest chest detectors give 4300 x 4300 pixels at 16 bits: 37 MB stored, about 130 MB
# with the float32 working copy and the 8-bit result. 256 MiB leaves twice that margin and
# still lets a 2-core, few-GiB worker run several decodes side by side.
MAX_DECODED_BYTES = 256 * 2**20


def decoded_bytes(
    width: int, height: int, channels: int, bits: int, extra_per_sample: float = 0.0
) -> int:
    """Peak bytes to decode an image: the decoder's output (W x H x channels x bytes per
    sample), ``extra_per_sample`` bytes per sample the decoder keeps beside it (e.g. 2 for a
    progressive JPEG's coefficients), then the working copies on the way to 8-bit gray: the
    gray copy of a colour image (the result, at 8 bits), and for samples wider than 8 bits
    the float32 copy that min-max scaling works in and the uint8 result."""
    pixels = max(0, width) * max(0, height)
    sample_bytes = max(1, (bits + 7) // 8)
    total = pixels * channels * (sample_bytes + extra_per_sample)
    if channels > 1:
        total += pixels * sample_bytes
    if bits > 8:
        total += pixels * (4 + 1)
    return int(total)


def check_decode_budget(
    width: int, height: int, channels: int, bits: int, extra_per_sample: float = 0.0
) -> None:
    """Raise ImageReadError, in one line, when decoding this geometry would pass
    ``MAX_DECODED_BYTES`` or ``MAX_PIXELS``; called before any pixel is allocated."""
    need = decoded_bytes(width, height, channels, bits, extra_per_sample)
    what = f"{width}x{height} pixels"
    if need > MAX_DECODED_BYTES:
        plural = "s" if channels != 1 else ""
        raise ImageReadError(
            f"image too large to decode: {what}, {channels} channel{plural}, {bits} bit "
            f"needs {size_text(need)}, the limit is {size_text(MAX_DECODED_BYTES)}"
        )
    if width * height > MAX_PIXELS:
        raise ImageReadError(
            f"image too large to decode: {what}, the limit is {MAX_PIXELS // 1_000_000} MP"
        )


def size_text(n: float) -> str:
    """Bytes for people: ``10.1 GiB``, ``256 MiB``, ``12.5 KiB``."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f}".removesuffix(".0") + f" {unit}"
    return f"{int(n)} bytes"
