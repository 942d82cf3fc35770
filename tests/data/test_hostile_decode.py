"""Hostile files (bench/hostile_payloads.py) against the decoders: each is refused in one
clear line before its pixels are allocated, or (the legitimate ones) decodes; and the
decoding budget leaves the pixels of legitimate large films as they were.

Memory is measured in a fresh process per payload: ``ru_maxrss`` only ever grows, so the
child first decodes a real film (the baseline: libraries loaded, a film's buffers made),
then the payload through ``decode_image_bytes`` and through ``decode_gray`` on a file, and
reports its peak growth over the baseline.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from io import BytesIO
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pydicom.pixels import get_decoder
from pydicom.uid import DeflatedExplicitVRLittleEndian, RLELossless

from bench.hostile_payloads import all_payloads, dicom_deflated, dicom_rle, jpeg_zip_appended
from pneumoscope.core.errors import ImageReadError
from pneumoscope.data.headers import jpeg_geometry, raster_geometry
from pneumoscope.data.limits import check_decode_budget
from pneumoscope.data.preprocess import decode_gray, decode_gray_bytes, decode_image_bytes
from tests.helpers import REPO, dicom_dataset, run_cli, write_dicom

PAYLOADS = all_payloads()
MAX_GROWTH_MIB = 512

_CHILD = textwrap.dedent(
    """
    import json, resource, sys
    from pathlib import Path
    from pneumoscope.data.preprocess import decode_gray, decode_image_bytes

    film, path = Path(sys.argv[1]), Path(sys.argv[2])
    decode_gray(film), decode_image_bytes(film.read_bytes())
    data = path.read_bytes()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def outcome(decode, arg):
        try:
            return "decoded %dx%d" % decode(arg).shape[::-1]
        except Exception as exc:
            return type(exc).__name__ + ": " + str(exc)

    got = {"bytes": outcome(decode_image_bytes, data), "file": outcome(decode_gray, path)}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({**got, "growth_mib": (peak - base) / 1024}))
    """
)


def decode_in_child(film: Path, path: Path) -> dict:
    """Decode ``path`` as an upload and as a file in a fresh process, after a real film:
    each outcome, and the peak memory growth over the film's (MiB)."""
    cmd = [sys.executable, "-c", _CHILD, str(film), str(path)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def film(shared_data) -> Path:
    return sorted((shared_data / "chest_xray_224" / "test" / "NORMAL").glob("*.jpeg"))[0]


@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda p: p.name)
def test_payload_is_refused_in_one_line_with_bounded_memory(payload, film, tmp_path):
    path = tmp_path / f"{payload.name}{payload.suffix}"
    path.write_bytes(payload.data)
    got = decode_in_child(film, path)
    for how in ("bytes", "file"):
        if payload.decodes:
            assert got[how].startswith("decoded"), (how, got[how])
        else:
            assert got[how].startswith("ImageReadError: "), (how, got[how])
            assert payload.expected in got[how] and "\n" not in got[how], (how, got[how])
    assert got["bytes"] == got["file"]  # an upload and the same bytes in a file agree
    assert got["growth_mib"] < MAX_GROWTH_MIB, got


def test_every_payload_is_small_and_named_once():
    assert len({p.name for p in PAYLOADS}) == len(PAYLOADS)
    assert all(len(p.data) < 5 * 2**20 for p in PAYLOADS)
    kinds = {p.name.split("_")[0] for p in PAYLOADS}
    assert kinds == {"jpeg", "png", "tiff", "bmp", "dicom"}


# --- the messages and the header readers --------------------------------------------------


def test_budget_message_names_the_geometry_the_cost_and_the_limit():
    with pytest.raises(ImageReadError) as err:
        check_decode_budget(60000, 60000, 3, 8)
    assert str(err.value) == (
        "image too large to decode: 60000x60000 pixels, 3 channels, 8 bit needs 13.4 GiB, "
        "the limit is 256 MiB"
    )
    check_decode_budget(4300, 4300, 1, 16)  # the largest chest detector, 16 bits: fits
    with pytest.raises(ImageReadError, match="the limit is 100 MP"):
        check_decode_budget(12000, 9000, 1, 1)  # 108 MP at 1 byte: in budget, not in pixels


def test_a_format_that_disagrees_with_its_magic_is_a_polyglot():
    jpeg = jpeg_zip_appended().data
    with pytest.raises(ImageReadError, match=r"starts like PNG but its content reads as JPEG"):
        raster_geometry(jpeg, "png")


def test_a_multi_picture_jpeg_is_a_jpeg_not_a_polyglot():
    film = Image.fromarray(np.tile(np.arange(0, 200, dtype=np.uint8), (120, 1)))
    buf = BytesIO()
    film.save(buf, "MPO", save_all=True, append_images=[film])
    out = decode_image_bytes(buf.getvalue())
    assert np.abs(out.astype(int) - np.asarray(film)).max() < 8  # JPEG's own loss


def test_a_dicom_is_never_handed_to_the_raster_decoder():
    dual = next(p for p in PAYLOADS if p.name == "dicom_tiff_preamble_polyglot").data
    assert dual[:4] == b"II*\x00"  # TIFF by its first bytes, DICOM by its 128th
    with pytest.raises(ImageReadError, match="not a readable image"):
        decode_gray_bytes(dual)
    assert decode_image_bytes(dual).shape == (128, 160)


@pytest.mark.parametrize(
    ("marker", "bits", "progressive"),
    [(0xC0, 8, False), (0xC2, 8, True), (0xC3, 16, False), (0xF7, 16, False)],
    ids=["baseline", "progressive", "lossless", "jpeg-ls"],
)
def test_jpeg_frame_header_is_found_past_any_segment(marker, bits, progressive):
    app = b"\xff\xe1" + (65535).to_bytes(2, "big") + bytes(65533)
    sof = bytes([0xFF, marker, 0, 11, bits, 0x12, 0x34, 0x56, 0x78, 1, 1, 0x11, 0])
    geometry = jpeg_geometry(b"\xff\xd8" + app * 2 + b"\xff\xff" + sof + b"\xff\xda")
    assert (geometry.width, geometry.height, geometry.channels) == (0x5678, 0x1234, 1)
    assert geometry.bits == bits and (geometry.extra_per_sample > 0) == progressive
    with pytest.raises(ImageReadError, match="no frame header"):
        jpeg_geometry(b"\xff\xd8" + app + b"\xff\xda" + sof)


# --- legitimate films keep their pixels -------------------------------------------------------


def _film(h: int, w: int, hi: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = (np.sin(x / 97.0) + np.cos(y / 131.0) + 2) / 4 * hi + rng.normal(0, hi / 50, (h, w))
    return np.clip(img, 0, hi).astype(np.uint16)


def _min_max_as_before(img: np.ndarray) -> np.ndarray:
    """What to_gray_uint8 computed before the budget (float32, out of place)."""
    img = img.astype(np.float32)
    lo, hi = float(img.min()), float(img.max())
    return np.round((img - lo) * (255.0 / (hi - lo))).astype(np.uint8)


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16bit_4000x5000_film_decodes_to_the_same_pixels(tmp_path, ext):
    img = _film(5000, 4000, 65535)
    path = tmp_path / f"film{ext}"
    assert cv2.imwrite(str(path), img)
    out = decode_gray(path)
    np.testing.assert_array_equal(out, _min_max_as_before(img))
    np.testing.assert_array_equal(decode_image_bytes(path.read_bytes()), out)


def _dicom_scale_as_before(pixels: np.ndarray) -> np.ndarray:
    """The float64 min-max scaling dicom.py applied to whole arrays before."""
    values = pixels.astype(np.float64)
    lo, hi = values.min(), values.max()
    return np.clip(np.rint((values - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


def test_3000x3000_rle_film_decodes_to_the_same_pixels_with_pylibjpeg_rle(tmp_path):
    assert "pylibjpeg" in get_decoder(RLELossless).available_plugins  # not pure-numpy RLE
    pixels = _film(3000, 3000, 4095)
    ds = dicom_dataset(pixels, bits_stored=12)
    ds.compress(RLELossless, encoding_plugin="pylibjpeg")
    path = write_dicom(ds, tmp_path / "rle.dcm")
    out = decode_gray(path)
    np.testing.assert_array_equal(out, _dicom_scale_as_before(pixels))
    np.testing.assert_array_equal(decode_image_bytes(path.read_bytes()), out)


def test_deflated_film_decodes_to_the_same_pixels(tmp_path):
    pixels = _film(300, 240, 4095)
    ds = dicom_dataset(pixels, bits_stored=12)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian  # deflated by pydicom
    path = write_dicom(ds, tmp_path / "deflated.dcm")
    out = decode_gray(path)
    np.testing.assert_array_equal(out, _dicom_scale_as_before(pixels))
    np.testing.assert_array_equal(decode_image_bytes(path.read_bytes()), out)


@pytest.mark.parametrize("bits", [8, 16, 32])
def test_the_bombs_are_well_formed_at_a_small_size(bits):
    """The RLE and deflated bombs differ from these only by their size: real segments and a
    real deflate stream that pydicom decodes."""
    assert not decode_image_bytes(dicom_rle(64, 80, bits)).any()  # zeros, decoded
    assert not decode_image_bytes(dicom_deflated(64, 80)).any()


# --- predict: one row per file, the reason in it ----------------------------------------------


def test_predict_gives_each_payload_its_row(run_dir, film, tmp_path):
    folder = tmp_path / "inputs"
    folder.mkdir()
    for p in PAYLOADS:
        (folder / f"{p.name}{p.suffix}").write_bytes(p.data)
    (folder / "real.jpeg").write_bytes(film.read_bytes())
    out = tmp_path / "p.csv"
    r = run_cli("predict", "--run", str(run_dir), str(folder), "--out", str(out))
    assert r.returncode == 1, r.stderr  # some inputs failed
    rows = pd.read_csv(out, keep_default_na=False).set_index("path")
    assert len(rows) == len(PAYLOADS) + 1
    assert rows.loc[str(folder / "real.jpeg"), "status"] == "ok"
    for p in PAYLOADS:
        row = rows.loc[str(folder / f"{p.name}{p.suffix}")]
        if p.decodes:
            assert row["status"] == "ok", (p.name, row["error"])
        else:
            assert row["status"] == "error" and p.expected in row["error"], (p.name, row["error"])
