"""The one preprocessing path, and every kind of awkward file it must survive."""

from __future__ import annotations

import struct

import cv2
import numpy as np
import pytest
from PIL import Image

from pneumoscope.core.errors import ImageReadError
from pneumoscope.data.preprocess import PreprocessConfig, decode_gray, load_image, preprocess_gray
from tests.helpers import png_header_only


def _gradient(h: int = 80, w: int = 100) -> np.ndarray:
    return np.tile(np.linspace(0, 255, w, dtype=np.float32), (h, 1)).astype(np.uint8)


def test_gray_jpeg_and_png_round_trip(tmp_path):
    img = _gradient()
    cv2.imwrite(str(tmp_path / "a.png"), img)
    np.testing.assert_array_equal(decode_gray(tmp_path / "a.png"), img)
    cv2.imwrite(str(tmp_path / "a.jpg"), img)
    assert np.abs(decode_gray(tmp_path / "a.jpg").astype(int) - img).max() < 8


def test_three_equal_channels_equal_the_gray_image(tmp_path):
    img = _gradient()
    cv2.imwrite(str(tmp_path / "rgb.png"), np.dstack([img] * 3))
    np.testing.assert_array_equal(decode_gray(tmp_path / "rgb.png"), img)


def test_16bit_png_keeps_its_full_range(tmp_path):
    img16 = (np.tile(np.linspace(1000, 4000, 100), (50, 1))).astype(np.uint16)  # 12-bit data
    cv2.imwrite(str(tmp_path / "d.png"), img16)
    out = decode_gray(tmp_path / "d.png")
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    assert np.all(np.diff(out[0].astype(int)) >= 0)  # monotone: no wrap-around


def test_rgba_png_and_cmyk_jpeg(tmp_path):
    img = _gradient()
    rgba = np.dstack([img, img, img, np.full_like(img, 255)])
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba)
    np.testing.assert_array_equal(decode_gray(tmp_path / "rgba.png"), img)
    Image.fromarray(np.dstack([img] * 3)).convert("CMYK").save(tmp_path / "cmyk.jpg")
    out = decode_gray(tmp_path / "cmyk.jpg")
    assert out.shape == img.shape
    assert np.corrcoef(out.ravel(), img.ravel())[0, 1] > 0.95


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "empty"),
        (b"this is a text file, not an X-ray\n" * 10, "not a readable image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not a readable image"),
    ],
)
def test_unreadable_files_raise_with_reason(tmp_path, content, reason):
    f = tmp_path / "bad.png"
    f.write_bytes(content)
    with pytest.raises(ImageReadError, match=reason):
        decode_gray(f)


def test_truncated_jpeg_is_rejected_or_decoded_never_crashes(tmp_path):
    cv2.imwrite(str(tmp_path / "full.jpg"), _gradient(200, 200))
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    try:
        out = decode_gray(tmp_path / "cut.jpg")
    except ImageReadError as exc:
        assert "not a readable image" in str(exc)
    else:  # libjpeg may pad a truncated scan; then the image must still have its shape
        assert out.shape == (200, 200)


def test_missing_file(tmp_path):
    with pytest.raises(ImageReadError, match="cannot open"):
        decode_gray(tmp_path / "nope.png")


def test_decompression_bomb_is_refused_from_its_header(tmp_path):
    f = tmp_path / "bomb.png"
    f.write_bytes(png_header_only(50_000, 50_000))  # 2.5 gigapixels claimed, 100 bytes on disk
    with pytest.raises(ImageReadError, match="too large"):
        decode_gray(f)


def test_huge_jpeg_header_is_refused(tmp_path):
    cv2.imwrite(str(tmp_path / "small.jpg"), _gradient(64, 64))
    data = bytearray((tmp_path / "small.jpg").read_bytes())
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 60000, 60000)
    (tmp_path / "huge.jpg").write_bytes(bytes(data))
    with pytest.raises(ImageReadError, match="too large"):
        decode_gray(tmp_path / "huge.jpg")


def test_unicode_and_spaces_in_path(tmp_path):
    d = tmp_path / "röntgen bilder 胸部"
    d.mkdir()
    cv2.imencode(".png", _gradient())[1].tofile(str(d / "patient 1 ü.png"))
    assert decode_gray(d / "patient 1 ü.png").shape == (80, 100)


def test_preprocess_shape_clahe_and_determinism():
    img = _gradient(300, 250)
    cfg = PreprocessConfig(img_size=64, clahe=True)
    a = preprocess_gray(img, cfg)
    b = preprocess_gray(img, cfg)
    assert a.shape == (64, 64) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    plain = preprocess_gray(img, PreprocessConfig(img_size=64, clahe=False))
    assert not np.array_equal(a, plain)


def test_load_image_equals_decode_then_preprocess(tmp_path):
    cv2.imwrite(str(tmp_path / "x.png"), _gradient(120, 90))
    cfg = PreprocessConfig(img_size=48)
    np.testing.assert_array_equal(
        load_image(tmp_path / "x.png", cfg), preprocess_gray(decode_gray(tmp_path / "x.png"), cfg)
    )


def test_config_round_trip():
    cfg = PreprocessConfig(img_size=96, clahe=False)
    assert PreprocessConfig.from_dict({**cfg.to_dict(), "unknown": 1}) == cfg


# --- bytes in memory (uploads): the same pixels as the same bytes in a file ---------------


def test_bytes_path_equals_file_path_on_real_films(shared_data):
    from pneumoscope.data.preprocess import load_image_bytes

    root = shared_data / "chest_xray_224" / "test"
    films = (
        sorted((root / "NORMAL").glob("*.jpeg"))[:3]
        + sorted((root / "PNEUMONIA").glob("*.jpeg"))[:3]
    )
    cfg = PreprocessConfig(img_size=224)
    for film in films:
        np.testing.assert_array_equal(
            load_image_bytes(film.read_bytes(), cfg), load_image(film, cfg)
        )


def test_bytes_path_equals_file_path_on_dicom(tmp_path):
    from pneumoscope.data.preprocess import decode_image_bytes
    from tests.helpers import dicom_dataset, dicom_ramp, write_dicom

    path = write_dicom(
        dicom_dataset(dicom_ramp(0, 4000, np.uint16), "MONOCHROME1"), tmp_path / "a.dcm"
    )
    np.testing.assert_array_equal(decode_image_bytes(path.read_bytes()), decode_gray(path))


@pytest.mark.parametrize(
    ("content", "kind"),
    [
        (b"\x89PNG\r\n\x1a\n" + bytes(20), "png"),
        (b"\xff\xd8\xff\xe0" + bytes(20), "jpeg"),
        (b"II*\x00" + bytes(20), "tiff"),
        (b"BM" + bytes(20), "bmp"),
        (bytes(128) + b"DICM" + bytes(20), "dicom"),
        (b"hello, plain text", None),
        (b"", None),
    ],
)
def test_sniff_by_content(content, kind):
    from pneumoscope.data.preprocess import sniff_image

    assert sniff_image(content) == kind


def test_dicom_without_preamble_is_sniffed_from_its_header(tmp_path):
    from pneumoscope.data.preprocess import decode_image_bytes, sniff_image
    from tests.helpers import dicom_dataset, dicom_ramp, write_dicom

    data = write_dicom(dicom_dataset(dicom_ramp(0, 255, np.uint8)), tmp_path / "a.dcm")
    raw = data.read_bytes()[132:]  # drop preamble and DICM: what old files look like
    assert sniff_image(raw) == "dicom"
    assert decode_image_bytes(raw).shape == (64, 80)


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"", "empty"), (png_header_only(50_000, 50_000), "too large"), (b"\xff\xd8\xff", "readable")],
)
def test_unreadable_bytes_raise_with_reason(content, reason):
    from pneumoscope.data.preprocess import decode_image_bytes

    with pytest.raises(ImageReadError, match=reason):
        decode_image_bytes(content)
