"""DICOM input: every file is built here with pydicom, then decoded and checked pixel by pixel."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.filewriter import dcmwrite
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
)

from pneumoscope.core.errors import ImageReadError
from pneumoscope.data import dicom as dicom
from pneumoscope.data.dicom import decode_dicom, dicom_metadata, is_dicom, parse_age
from pneumoscope.data.preprocess import (
    PreprocessConfig,
    decode_gray,
    is_image_file,
    load_image,
)
from tests.helpers import BASIC_TEXT_SR, CT_IMAGE, H, W, dicom_dataset, dicom_ramp, write_dicom


def _monotone_full_range(row: np.ndarray) -> bool:
    steps = np.diff(row.astype(int))
    return bool(np.all(steps >= 0) and row[0] == 0 and row[-1] == 255)


# --- monochrome pixel values -----------------------------------------------------------


def test_monochrome2_12bit_gradient_is_monotone_and_full_range(tmp_path):
    pixels = dicom_ramp(100, 4000, np.uint16)
    out = decode_dicom(write_dicom(dicom_dataset(pixels, bits_stored=12), tmp_path / "a.dcm"))
    assert out.dtype == np.uint8 and out.shape == (H, W)
    assert out.min() == 0 and out.max() == 255
    assert _monotone_full_range(out[0])
    assert np.all(out == out[0])  # every row alike, as written
    expected = np.round((pixels[0] - 100) * 255.0 / 3900).astype(np.uint8)  # min-max, no VOI
    np.testing.assert_array_equal(out[0], expected)


def test_monochrome1_is_inverted(tmp_path):
    pixels = dicom_ramp(100, 4000, np.uint16)
    mono2 = decode_dicom(write_dicom(dicom_dataset(pixels, bits_stored=12), tmp_path / "m2.dcm"))
    ds1 = dicom_dataset(pixels, photometric="MONOCHROME1", bits_stored=12)
    mono1 = decode_dicom(write_dicom(ds1, tmp_path / "m1.dcm"))
    corr = np.corrcoef(mono1.ravel().astype(float), mono2.ravel().astype(float))[0, 1]
    assert corr < -0.99
    np.testing.assert_array_equal(mono1, 255 - mono2)
    assert mono1[0, 0] == 255 and mono1[0, -1] == 0  # low stored value = bright in MONOCHROME1


@pytest.mark.parametrize("bits_stored", [12, 16])
def test_signed_pixels_with_rescale_keep_their_order(tmp_path, bits_stored):
    pixels = dicom_ramp(-2000, 2000, np.int16)  # negative stored values need sign extension
    ds = dicom_dataset(pixels, bits_stored=bits_stored, RescaleSlope="2", RescaleIntercept="-1024")
    assert ds.PixelRepresentation == 1
    out = decode_dicom(write_dicom(ds, tmp_path / "signed.dcm"))
    assert _monotone_full_range(out[0])
    # the middle of the ramp (stored 0) sits in the middle of the output: no wrap-around
    assert abs(int(out[0, W // 2]) - 128) <= 4


def test_negative_rescale_slope_inverts_values(tmp_path):
    pixels = dicom_ramp(0, 1000, np.uint16)
    ds = dicom_dataset(pixels, bits_stored=12, RescaleSlope="-1", RescaleIntercept="0")
    out = decode_dicom(write_dicom(ds, tmp_path / "neg.dcm"))
    assert out[0, 0] == 255 and out[0, -1] == 0
    assert np.all(np.diff(out[0].astype(int)) <= 0)


def test_window_center_width_saturates_outside_the_window(tmp_path):
    pixels = dicom_ramp(0, 4000, np.uint16)
    ds = dicom_dataset(pixels, bits_stored=12, WindowCenter="2000", WindowWidth="1000")
    out = decode_dicom(write_dicom(ds, tmp_path / "win.dcm"))
    row, values = out[0].astype(int), pixels[0]
    assert np.all(row[values <= 1490] == 0)
    assert np.all(row[values >= 2510] == 255)
    inside = (values > 1510) & (values < 2490)
    assert np.all((row[inside] > 0) & (row[inside] < 255))
    assert np.all(np.diff(row) >= 0)
    linear = ((values[inside] - 1999.5) / 999 + 0.5) * 255  # DICOM LINEAR windowing
    assert np.abs(row[inside] - linear).max() <= 1


def test_window_applies_after_rescale(tmp_path):
    """The window is in rescaled units (e.g. HU), here shifted by the intercept."""
    pixels = dicom_ramp(0, 4000, np.uint16)
    ds = dicom_dataset(
        pixels,
        bits_stored=12,
        RescaleSlope="1",
        RescaleIntercept="-1000",
        WindowCenter="1000",
        WindowWidth="1000",
    )
    row, values = decode_dicom(write_dicom(ds, tmp_path / "win_hu.dcm"))[0].astype(int), pixels[0]
    assert np.all(row[values <= 1490] == 0) and np.all(row[values >= 2510] == 255)


def test_voi_lut_sequence_is_applied(tmp_path):
    pixels = dicom_ramp(0, 4000, np.uint16)
    item = Dataset()
    item.LUTDescriptor = [256, 1000, 8]  # 256 entries, first input 1000, 8-bit output
    item.add_new("LUTData", "US", list(range(256)))
    ds = dicom_dataset(pixels, bits_stored=12, VOILUTSequence=Sequence([item]))
    row, values = decode_dicom(write_dicom(ds, tmp_path / "lut.dcm"))[0].astype(int), pixels[0]
    assert np.all(row[values <= 1000] == 0) and np.all(row[values >= 1255] == 255)
    inside = (values > 1000) & (values < 1255)
    np.testing.assert_array_equal(row[inside], values[inside] - 1000)


def test_bad_window_width_falls_back_to_min_max(tmp_path):
    pixels = dicom_ramp(100, 4000, np.uint16)
    ds = dicom_dataset(pixels, bits_stored=12, WindowCenter="2000", WindowWidth="0")
    assert _monotone_full_range(decode_dicom(write_dicom(ds, tmp_path / "w0.dcm"))[0])


def test_8bit_monochrome2(tmp_path):
    pixels = dicom_ramp(0, 255, np.uint8)
    out = decode_dicom(write_dicom(dicom_dataset(pixels, bits_stored=8), tmp_path / "8.dcm"))
    np.testing.assert_array_equal(out, pixels)
    narrow = dicom_ramp(40, 200, np.uint8)  # no VOI: min-max scaled like 16-bit data
    out = decode_dicom(write_dicom(dicom_dataset(narrow, bits_stored=8), tmp_path / "8n.dcm"))
    assert _monotone_full_range(out[0])


def test_rgb_secondary_capture_becomes_gray(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    out = decode_dicom(
        write_dicom(dicom_dataset(rgb, photometric="RGB", bits_stored=8), tmp_path / "c.dcm")
    )
    np.testing.assert_array_equal(out, cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    gray = dicom_ramp(0, 255, np.uint8)
    ds = dicom_dataset(np.dstack([gray] * 3), photometric="RGB", bits_stored=8)
    np.testing.assert_array_equal(decode_dicom(write_dicom(ds, tmp_path / "g.dcm")), gray)


def test_multiframe_uses_the_first_frame(tmp_path):
    frames = np.stack([dicom_ramp(0, 4000, np.uint16), dicom_ramp(4000, 0, np.uint16)])
    ds = dicom_dataset(frames, bits_stored=12)
    assert int(ds.NumberOfFrames) == 2
    out = decode_dicom(write_dicom(ds, tmp_path / "mf.dcm"))
    assert _monotone_full_range(out[0])  # frame 0 rises; frame 1 would fall


def test_multiframe_ct_volume_is_refused(tmp_path):
    frames = np.stack([dicom_ramp(0, 4000, np.uint16)] * 3)
    ds = dicom_dataset(frames, bits_stored=12, sop_class=CT_IMAGE, Modality="CT")
    with pytest.raises(ImageReadError, match="multi-frame CT/MR volume"):
        decode_dicom(write_dicom(ds, tmp_path / "ct.dcm"))


# --- files that are not decodable images -------------------------------------------------


def test_dicom_without_pixel_data(tmp_path):
    path = write_dicom(dicom_dataset(None), tmp_path / "nopix.dcm")
    assert is_dicom(path)
    with pytest.raises(ImageReadError, match="without pixel data"):
        decode_dicom(path)
    sr = dicom_dataset(None, sop_class=BASIC_TEXT_SR, Modality="SR")
    with pytest.raises(ImageReadError, match="without pixel data"):
        decode_gray(write_dicom(sr, tmp_path / "report.dcm"))


def test_garbage_named_dcm_is_refused(tmp_path):
    path = tmp_path / "junk.dcm"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    assert not is_dicom(path)
    with pytest.raises(ImageReadError):
        decode_gray(path)
    with pytest.raises(ImageReadError):
        decode_dicom(path)
    (tmp_path / "empty.dcm").write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty"):
        decode_gray(tmp_path / "empty.dcm")


def test_truncated_dicom_is_refused(tmp_path):
    path = write_dicom(
        dicom_dataset(dicom_ramp(0, 4000, np.uint16), bits_stored=12), tmp_path / "full.dcm"
    )
    data = path.read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) - 3000])  # most of the pixel data is missing
    assert is_dicom(cut)
    with pytest.raises(ImageReadError):
        decode_gray(cut)


def test_content_not_name_decides(tmp_path):
    pixels = dicom_ramp(100, 4000, np.uint16)
    disguised = write_dicom(dicom_dataset(pixels, bits_stored=12), tmp_path / "scan.png")
    real = write_dicom(dicom_dataset(pixels, bits_stored=12), tmp_path / "scan.dcm")
    assert is_dicom(disguised)
    np.testing.assert_array_equal(decode_gray(disguised), decode_gray(real))
    png_named_dcm = tmp_path / "picture.dcm"
    assert cv2.imwrite(str(tmp_path / "p.png"), dicom_ramp(0, 255, np.uint8))
    png_named_dcm.write_bytes((tmp_path / "p.png").read_bytes())
    assert not is_dicom(png_named_dcm)
    np.testing.assert_array_equal(decode_gray(png_named_dcm), dicom_ramp(0, 255, np.uint8))


def test_file_without_preamble_is_read_when_named_dcm(tmp_path):
    pixels = dicom_ramp(100, 4000, np.uint16)
    ds = dicom_dataset(pixels, bits_stored=12)
    del ds.file_meta  # an old-style bare dataset: no preamble, no DICM, no file meta
    path = tmp_path / "old.dcm"
    dcmwrite(path, ds, implicit_vr=True, little_endian=True)
    assert path.read_bytes()[128:132] != b"DICM"
    assert is_dicom(path)
    assert _monotone_full_range(decode_gray(path)[0])
    renamed = path.rename(tmp_path / "old.bin")
    assert not is_dicom(renamed)


def test_huge_header_is_refused_before_decoding(tmp_path):
    ds = dicom_dataset(dicom_ramp(0, 255, np.uint8), bits_stored=8)
    ds.Rows, ds.Columns = 20000, 20000  # 400 MP claimed, a few KiB stored
    path = write_dicom(ds, tmp_path / "huge.dcm")
    with pytest.raises(ImageReadError, match="too large"):
        decode_gray(path)


def test_missing_file_is_an_image_read_error(tmp_path):
    assert not is_dicom(tmp_path / "nope.dcm")
    with pytest.raises(ImageReadError, match="cannot open"):
        decode_dicom(tmp_path / "nope.dcm")


# --- compressed transfer syntaxes ----------------------------------------------------------


def test_rle_lossless_matches_uncompressed(tmp_path):
    pixels = dicom_ramp(100, 4000, np.uint16)
    plain = decode_dicom(write_dicom(dicom_dataset(pixels, bits_stored=12), tmp_path / "plain.dcm"))
    ds = dicom_dataset(pixels, bits_stored=12)
    ds.compress(RLELossless)
    path = write_dicom(ds, tmp_path / "rle.dcm")
    assert "PixelData" in ds and ds.file_meta.TransferSyntaxUID == RLELossless
    np.testing.assert_array_equal(decode_dicom(path), plain)


def test_jpeg2000_lossless_matches_uncompressed(tmp_path):
    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 4096, (H, W), dtype=np.uint16)
    plain = decode_dicom(write_dicom(dicom_dataset(pixels, bits_stored=12), tmp_path / "plain.dcm"))
    ds = dicom_dataset(pixels, bits_stored=12)
    ds.compress(JPEG2000Lossless)
    path = write_dicom(ds, tmp_path / "j2k.dcm")
    np.testing.assert_array_equal(decode_dicom(path), plain)


def _jpeg_baseline_dataset(img: np.ndarray) -> Dataset:
    ok, jpg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    ds = dicom_dataset(img, bits_stored=8)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([jpg.tobytes()])
    ds["PixelData"].VR = "OB"
    return ds


def test_jpeg_baseline_decodes_within_jpeg_tolerance(tmp_path):
    img = dicom_ramp(0, 255, np.uint8)
    img[20:40, 30:50] = 255 - img[20:40, 30:50]  # an edge for the codec to smear a little
    path = write_dicom(_jpeg_baseline_dataset(img), tmp_path / "jpeg.dcm")
    out = decode_gray(path)
    assert out.shape == img.shape
    diff = np.abs(out.astype(int) - img.astype(int))
    assert diff.mean() < 2 and diff.max() <= 24


def test_colour_jpeg_baseline_becomes_gray(tmp_path):
    rng = np.random.default_rng(3)
    bgr = cv2.GaussianBlur(rng.integers(0, 256, (H, W, 3), dtype=np.uint8), (9, 9), 0)
    ok, jpg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    rgb = np.ascontiguousarray(bgr[:, :, ::-1])
    ds = dicom_dataset(rgb, photometric="RGB", bits_stored=8)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PhotometricInterpretation = "YBR_FULL_422"  # what a colour JFIF stream holds
    ds.PixelData = encapsulate([jpg.tobytes()])
    ds["PixelData"].VR = "OB"
    out = decode_dicom(write_dicom(ds, tmp_path / "colour.dcm"))
    diff = np.abs(out.astype(int) - cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY).astype(int))
    assert diff.mean() < 2 and diff.max() <= 16


def test_undecodable_compressed_data_names_the_transfer_syntax(tmp_path):
    ds = dicom_dataset(dicom_ramp(0, 4000, np.uint16), bits_stored=12)
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 200])  # a broken codestream
    ds["PixelData"].VR = "OB"
    with pytest.raises(ImageReadError, match="cannot decode JPEG 2000"):
        decode_gray(write_dicom(ds, tmp_path / "broken.dcm"))


def test_deferred_pixel_data_is_read_when_needed(tmp_path, monkeypatch):
    pixels = dicom_ramp(100, 4000, np.uint16)
    path = write_dicom(dicom_dataset(pixels, bits_stored=12), tmp_path / "d.dcm")
    expected = decode_dicom(path)
    monkeypatch.setattr(dicom, "_DEFER_SIZE", 256)  # pixels now read lazily, after the checks
    np.testing.assert_array_equal(decode_dicom(path), expected)


# --- integration with preprocess --------------------------------------------------------


def test_decode_gray_and_load_image_accept_dicom(tmp_path):
    pixels = dicom_ramp(100, 4000, np.uint16)
    path = write_dicom(dicom_dataset(pixels, bits_stored=12), tmp_path / "x.dcm")
    np.testing.assert_array_equal(decode_gray(path), decode_dicom(path))
    np.testing.assert_array_equal(decode_gray(str(path)), decode_dicom(path))
    cfg = PreprocessConfig(img_size=32, clahe=False)
    out = load_image(path, cfg)
    assert out.shape == (32, 32) and out.dtype == np.uint8
    assert np.all(np.diff(out[0].astype(int)) >= 0) and out[0, 0] < 10 and out[0, -1] > 245


def test_dicom_extensions_count_as_images():
    assert is_image_file("x.dcm") and is_image_file("SCAN.DICOM") and is_image_file("a/b/c.Dcm")
    assert not is_image_file("x.dcm.txt")


# --- metadata -----------------------------------------------------------------------------


def test_dicom_metadata(tmp_path):
    ds = dicom_dataset(
        dicom_ramp(0, 255, np.uint8),
        bits_stored=8,
        PatientID="RSNA-0042",
        PatientAge="045Y",
        PatientSex="F",
        ViewPosition="PA",
        Modality="CR",
    )
    meta = dicom_metadata(write_dicom(ds, tmp_path / "m.dcm"))
    assert meta == {
        "patient_id": "RSNA-0042",
        "age_years": 45.0,
        "sex": "F",
        "view": "PA",
        "modality": "CR",
    }


def test_dicom_metadata_missing_fields_are_none(tmp_path):
    ds = dicom_dataset(None, PatientSex="O")
    del ds.Modality
    del ds.PatientID
    meta = dicom_metadata(write_dicom(ds, tmp_path / "bare.dcm"))
    assert meta == {
        "patient_id": None,
        "age_years": None,
        "sex": None,
        "view": None,
        "modality": None,
    }


def test_dicom_metadata_on_garbage_raises(tmp_path):
    (tmp_path / "junk.dcm").write_bytes(b"\x00\x01" * 10)
    with pytest.raises(ImageReadError):
        dicom_metadata(tmp_path / "junk.dcm")


@pytest.mark.parametrize(
    ("text", "years"),
    [
        ("045Y", 45.0),
        ("006M", 0.5),
        ("010D", round(10 / 365.25, 3)),
        ("002W", round(2 / 52.1775, 3)),
        ("58", 58.0),  # RSNA files store a bare number of years
        (" 7Y ", 7.0),
        ("", None),
        (None, None),
        ("abc", None),
        ("45X", None),
    ],
)
def test_parse_age(text, years):
    assert parse_age(text) == years


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian])
def test_other_uncompressed_transfer_syntaxes(tmp_path, syntax):
    pixels = dicom_ramp(100, 4000, np.uint16)
    expected = decode_dicom(
        write_dicom(dicom_dataset(pixels, bits_stored=12), tmp_path / "explicit.dcm")
    )
    ds = dicom_dataset(pixels, bits_stored=12)
    ds.file_meta.TransferSyntaxUID = syntax
    np.testing.assert_array_equal(decode_dicom(write_dicom(ds, tmp_path / "other.dcm")), expected)
