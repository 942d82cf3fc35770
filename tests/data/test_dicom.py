"""DICOM input: every file is built here with pydicom, then decoded and checked pixel by pixel."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.fileset import FileSet
from pydicom.filewriter import dcmwrite
from pydicom.pixels import convert_color_space, pack_bits
from pydicom.sequence import Sequence
from pydicom.uid import (
    MPEG4HP41,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    RLELossless,
)

from pneumoscope.core.errors import ImageReadError
from pneumoscope.data import dicom as dicom
from pneumoscope.data.dicom import (
    decode_dicom,
    decode_dicom_bytes,
    decoder_packages,
    dicom_metadata,
    dicomdir_references,
    is_dicom,
    is_dicom_bytes,
    is_dicomdir,
    not_image_reason,
    parse_age,
    read_header,
)
from pneumoscope.data.preprocess import (
    PreprocessConfig,
    decode_gray,
    is_image_file,
    load_image,
)
from tests.helpers import (
    BASIC_TEXT_SR,
    CT_IMAGE,
    DX_IMAGE,
    H,
    W,
    dicom_dataset,
    dicom_ramp,
    dicom_raw,
    film_dataset,
    report_dataset,
    write_dicom,
)


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
    with pytest.raises(ImageReadError, match=f"truncated pixel data: {H * W * 2 - 3000} of the "):
        decode_gray(cut)
    one_byte = tmp_path / "one.dcm"
    one_byte.write_bytes(data[:-1])
    with pytest.raises(ImageReadError, match=f"truncated pixel data: {H * W * 2 - 1} of the"):
        decode_dicom(one_byte)


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


def test_file_without_preamble_is_read_whatever_its_name(tmp_path):
    pixels = dicom_ramp(100, 4000, np.uint16)
    ds = dicom_dataset(pixels, bits_stored=12)
    del ds.file_meta  # an old-style bare dataset: no preamble, no DICM, no file meta
    path = tmp_path / "old.dcm"
    dcmwrite(path, ds, implicit_vr=True, little_endian=True)
    assert path.read_bytes()[128:132] != b"DICM"
    assert is_dicom(path)
    expected = decode_gray(path)
    assert _monotone_full_range(expected[0])
    for name in ("IM00001", "1", "old.bin"):  # a PACS export's names
        renamed = path.rename(tmp_path / name)
        assert is_dicom(renamed) and is_dicom_bytes(renamed.read_bytes())
        np.testing.assert_array_equal(decode_gray(renamed), expected)
        path = renamed


def test_text_and_binary_files_without_extension_are_not_dicom(tmp_path):
    (tmp_path / "README").write_text("Exported from PACS on 2024-01-01.\n" * 20)
    (tmp_path / "Thumbs").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(2000))
    (tmp_path / "noise").write_bytes(np.random.default_rng(4).bytes(3000))
    for name in ("README", "Thumbs", "noise"):
        assert not is_dicom(tmp_path / name), name
        assert not is_dicom_bytes((tmp_path / name).read_bytes()), name


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


# --- the awkward DICOM a PACS sends -------------------------------------------------------


def test_missing_transfer_syntax_is_taken_from_the_encoding(tmp_path):
    pixels = dicom_ramp(100, 4000, np.uint16)
    expected = decode_dicom(write_dicom(dicom_dataset(pixels, bits_stored=12), tmp_path / "a.dcm"))
    for implicit in (False, True):
        ds = dicom_dataset(pixels, bits_stored=12)
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        del ds.file_meta.TransferSyntaxUID  # a file meta header that forgot it
        ds.preamble = bytes(128)
        path = tmp_path / f"nots_{implicit}"
        dcmwrite(path, ds, implicit_vr=implicit, little_endian=True)
        assert path.read_bytes()[128:132] == b"DICM"
        assert "TransferSyntaxUID" not in pydicom.dcmread(path, force=True).file_meta
        np.testing.assert_array_equal(decode_dicom(path), expected)


def test_video_and_unknown_transfer_syntaxes_say_what_they_are(tmp_path):
    ds = dicom_dataset(dicom_ramp(0, 255, np.uint8), bits_stored=8)
    ds.file_meta.TransferSyntaxUID = MPEG4HP41
    ds.PixelData = encapsulate([bytes(100)])
    ds["PixelData"].VR = "OB"
    with pytest.raises(ImageReadError) as err:
        decode_gray(write_dicom(ds, tmp_path / "video.dcm"))
    assert str(err.value).startswith("unsupported compression MPEG-4 AVC/H.264 High Profile")
    assert MPEG4HP41 in str(err.value) and "no DICOM pixel decoder" in str(err.value)
    private = dicom_dataset(dicom_ramp(0, 255, np.uint8), bits_stored=8)
    private.file_meta.TransferSyntaxUID = "1.2.826.0.1.3680043.8.498.77"  # a vendor's own
    private.file_meta.MediaStorageSOPClassUID = private.SOPClassUID
    path = tmp_path / "private.dcm"
    dcmwrite(path, private, implicit_vr=False, little_endian=True)
    with pytest.raises(
        ImageReadError, match="unknown transfer syntax 1.2.826.0.1.3680043.8.498.77"
    ):
        decode_gray(path)


def test_a_compression_no_installed_plugin_decodes_names_the_package():
    # python-gdcm is not installed here: pydicom would use it for JPEG
    assert "python-gdcm" in decoder_packages(JPEGBaseline8Bit)
    assert decoder_packages(RLELossless) == []  # pylibjpeg-rle is a dependency
    assert decoder_packages(ExplicitVRLittleEndian) == []  # nothing to decode
    assert decoder_packages(MPEG4HP41) == []  # no decoder exists at all


def test_12bit_jpeg_extended_decodes_with_pylibjpeg_libjpeg(tmp_path):
    """1.2.840.10008.1.2.4.51 at 12 bits: Pillow cannot, pylibjpeg-libjpeg (a dependency)
    can. The codestream is pydicom's own 12-bit sample, wrapped in a dataset built here."""
    sample = pydicom.dcmread(get_testdata_file("JPGExtended.dcm"))
    assert sample.file_meta.TransferSyntaxUID == JPEGExtended12Bit and sample.BitsStored == 12
    reference = sample.pixel_array  # pydicom's decoders, for comparison
    assert reference.max() > 255  # truly more than 8 bits
    ds = dicom_dataset(None, Rows=sample.Rows, Columns=sample.Columns)
    for kw in ("SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated", "BitsStored"):
        setattr(ds, kw, sample[kw].value)
    ds.HighBit, ds.PixelRepresentation = sample.HighBit, sample.PixelRepresentation
    ds.file_meta.TransferSyntaxUID = JPEGExtended12Bit
    ds.PixelData = sample.PixelData
    ds["PixelData"].VR = "OB"
    out = decode_gray(write_dicom(ds, tmp_path / "IM12"))
    assert out.shape == (sample.Rows, sample.Columns) and out.dtype == np.uint8
    lo, hi = int(reference.min()), int(reference.max())
    expected = np.rint((reference.astype(float) - lo) * 255.0 / (hi - lo)).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)


def test_a_12bit_jpeg_the_decoders_reject_gets_one_line_naming_another_decoder(tmp_path):
    """pydicom's JPEG-lossy.dcm is a known-bad 12-bit stream (only GDCM reads it)."""
    path = tmp_path / "bad12"
    path.write_bytes(Path(get_testdata_file("JPEG-lossy.dcm")).read_bytes())
    with pytest.raises(ImageReadError) as err:
        decode_gray(path)
    text = str(err.value)
    assert text.startswith("cannot decode JPEG Extended") and "\n" not in text
    assert "python-gdcm may decode it" in text


@pytest.mark.parametrize("dtype", [np.uint32, np.int32])
def test_32bit_pixels_keep_their_order(tmp_path, dtype):
    lo = -100_000 if dtype == np.int32 else 0
    pixels = dicom_ramp(lo, lo + 200_000, dtype)
    out = decode_dicom(write_dicom(dicom_raw(pixels), tmp_path / "p32.dcm"))
    assert _monotone_full_range(out[0])
    expected = np.rint((pixels[0].astype(float) - lo) * 255.0 / 200_000).astype(np.uint8)
    np.testing.assert_array_equal(out[0], expected)


def test_float_pixel_data(tmp_path):
    pixels = np.tile(np.linspace(-1.0, 1.0, W, dtype=np.float32), (H, 1))
    out = decode_dicom(write_dicom(dicom_raw(pixels), tmp_path / "float.dcm"))
    assert _monotone_full_range(out[0])


def test_big_endian_equals_little_endian(tmp_path):
    pixels = dicom_ramp(100, 4000, np.uint16)
    expected = decode_dicom(write_dicom(dicom_dataset(pixels, bits_stored=12), tmp_path / "le"))
    ds = dicom_raw(pixels.astype(">u2"))
    ds.BitsStored, ds.HighBit = 12, 11
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    path = write_dicom(ds, tmp_path / "be")
    np.testing.assert_array_equal(decode_dicom(path), expected)
    np.testing.assert_array_equal(decode_dicom_bytes(path.read_bytes()), expected)


def test_palette_colour_goes_through_its_lookup_table(tmp_path):
    index = dicom_ramp(0, 255, np.uint8)
    ds = dicom_dataset(index, photometric="PALETTE COLOR", bits_stored=8)
    inverse = (65535 - np.arange(256) * 257).astype(np.uint16)  # index 0 is white
    for colour in ("Red", "Green", "Blue"):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(ds, f"{colour}PaletteColorLookupTableData", inverse.tobytes())
    out = decode_dicom(write_dicom(ds, tmp_path / "palette.dcm"))
    assert np.abs(out.astype(int) - (255 - index.astype(int))).max() <= 1


def test_ybr_full_is_converted_to_gray(tmp_path):
    rng = np.random.default_rng(5)
    rgb = cv2.GaussianBlur(rng.integers(0, 256, (H, W, 3), dtype=np.uint8), (5, 5), 0)
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    ds = dicom_dataset(ybr, photometric="YBR_FULL", bits_stored=8)
    out = decode_dicom(write_dicom(ds, tmp_path / "ybr.dcm"))
    assert np.abs(out.astype(int) - cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)).max() <= 2


@pytest.mark.parametrize(("h", "w"), [(63, 81), (65, 9)])
def test_odd_sizes(tmp_path, h, w):
    eight = dicom_ramp(0, 255, np.uint8, h=h, w=w)  # an odd number of bytes, padded
    out = decode_dicom(write_dicom(dicom_dataset(eight, bits_stored=8), tmp_path / "odd8"))
    np.testing.assert_array_equal(out, eight)
    twelve = dicom_ramp(0, 4000, np.uint16, h=h, w=w)
    out = decode_dicom(write_dicom(dicom_dataset(twelve, bits_stored=12), tmp_path / "odd12"))
    assert out.shape == (h, w) and _monotone_full_range(out[0])


def test_one_bit_and_tiny_images(tmp_path):
    bits = (dicom_ramp(0, 1, np.uint8) > 0).astype(np.uint8)
    ds = dicom_raw(np.zeros((H, W), np.uint8))
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 1, 0
    ds.PixelData = pack_bits(bits)
    out = decode_dicom(write_dicom(ds, tmp_path / "bits"))
    np.testing.assert_array_equal(out, bits * 255)
    tiny = dicom_dataset(dicom_ramp(0, 255, np.uint8, h=5, w=80), bits_stored=8)
    with pytest.raises(ImageReadError, match=r"unsupported image shape \(5, 80\)"):
        decode_dicom(write_dicom(tiny, tmp_path / "tiny"))


def test_a_batch_of_bad_dicom_gives_one_error_each_and_the_good_one_its_image(tmp_path):
    from pneumoscope.data.preprocess import try_load_image

    good = write_dicom(
        dicom_dataset(dicom_ramp(0, 4000, np.uint16), bits_stored=12), tmp_path / "g"
    )
    cut = tmp_path / "cut"
    cut.write_bytes(good.read_bytes()[:-500])
    video = dicom_dataset(dicom_ramp(0, 255, np.uint8), bits_stored=8)
    video.file_meta.TransferSyntaxUID = MPEG4HP41
    video.PixelData = encapsulate([bytes(10)])
    nopix = write_dicom(dicom_dataset(None), tmp_path / "nopix")
    paths = [cut, write_dicom(video, tmp_path / "video"), nopix, good]
    results = [try_load_image(p, PreprocessConfig(img_size=32)) for p in paths]
    assert [img is None for img, _ in results] == [True, True, True, False]
    reasons = [why for _, why in results[:3]]
    assert reasons[0].startswith("truncated pixel data")
    assert reasons[1].startswith("unsupported compression MPEG-4")
    assert reasons[2] == "DICOM without pixel data"


# --- the header the intended-use rules read ------------------------------------------------


@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")  # lower case, as some send it
def test_read_header_reads_the_rules_facts_and_no_names(tmp_path):
    ds = film_dataset(
        dicom_ramp(0, 255, np.uint8),
        "CR",
        BodyPartExamined="Chest",
        ViewPosition="ll",
        PatientOrientation=["A", "F"],
        PatientAge="004Y",
    )
    ds.PatientBirthDate = "19700101"
    path = write_dicom(ds, tmp_path / "IM1")
    for source in (path, path.read_bytes()):
        h = read_header(source)
        assert (h.modality, h.body_part, h.view_position) == ("CR", "CHEST", "LL")
        assert h.patient_orientation == ("A", "F") and h.frames == 1 and h.has_pixels
        assert (h.rows, h.columns) == (H, W) and h.sop_class_name.startswith("Computed Radiog")
        assert h.age_years == 4.0 and h.age_from == "PatientAge"  # PatientAge wins
        assert not any(secret in repr(h) for secret in ("Doe", "PAT-001", "1970"))


def test_age_from_the_study_and_birth_dates_when_patient_age_is_absent(tmp_path):
    ds = film_dataset(dicom_ramp(0, 255, np.uint8), PatientBirthDate="20190615")
    ds.StudyDate = "20240115"  # 4 years and 7 months later
    h = read_header(write_dicom(ds, tmp_path / "a"))
    assert h.age_years == pytest.approx(4.59, abs=0.01)
    assert h.age_from == "the study and birth dates"
    ds.StudyDate = ""
    ds.ContentDate = "20200615"  # the next date in line
    assert read_header(write_dicom(ds, tmp_path / "b")).age_years == pytest.approx(1.0, abs=0.01)
    ds.PatientBirthDate = "20230230"  # no such day
    assert read_header(write_dicom(ds, tmp_path / "c")).age_years is None


@pytest.mark.parametrize(
    ("sop_class", "modality", "pixels", "words"),
    [
        (BASIC_TEXT_SR, "SR", False, "DICOM Structured Report (SOP class Basic Text SR"),
        ("1.2.840.10008.5.1.4.1.1.88.59", "KO", False, "Key Object Selection document"),
        ("1.2.840.10008.5.1.4.1.1.11.1", "PR", False, "presentation state"),
        ("1.2.840.10008.5.1.4.1.1.481.3", "RTSTRUCT", False, "radiotherapy object"),
        ("1.2.840.10008.5.1.4.1.1.481.2", "RTDOSE", True, "radiotherapy object"),
        ("1.2.840.10008.5.1.4.1.1.104.1", "DOC", False, "encapsulated document"),
        (DX_IMAGE, "DX", False, "DICOM without pixel data (SOP class Digital X-Ray Image"),
        (DX_IMAGE, "DX", True, None),
        ("1.2.840.10008.5.1.4.1.1.481.1", "RTIMAGE", True, None),  # an image: the rules decide
    ],
)
def test_objects_that_are_no_image(tmp_path, sop_class, modality, pixels, words):
    ds = dicom_dataset(dicom_ramp(0, 255, np.uint8) if pixels else None, sop_class=sop_class)
    ds.Modality = modality
    reason = not_image_reason(read_header(write_dicom(ds, tmp_path / "x")))
    if words is None:
        assert reason is None
    else:
        assert reason.startswith(words) and reason.endswith(": not an image")


def _file_set(root: Path) -> Path:
    fs = FileSet()
    for k in range(3):
        fs.add(film_dataset(dicom_ramp(0, 255, np.uint8), instance=k + 1))
    fs.add(report_dataset())
    fs.write(root)
    return root / "DICOMDIR"


def test_dicomdir_references_every_file_it_indexes(tmp_path):
    dicomdir = _file_set(tmp_path / "cd")
    assert is_dicomdir(dicomdir) and not is_dicomdir(next((tmp_path / "cd").rglob("IM*")))
    header = read_header(dicomdir)
    assert header.is_dicomdir and not_image_reason(header).startswith("DICOMDIR, the index")
    refs = dicomdir_references(dicomdir)
    on_disk = sorted(p for p in (tmp_path / "cd").rglob("*") if p.is_file() and p != dicomdir)
    assert sorted(refs) == on_disk and len(refs) == 4
    assert all(not p.suffix for p in refs)  # IM000000, SR000000: no extensions


def test_dicomdir_references_survive_lower_case_copies_and_name_missing_files(tmp_path):
    dicomdir = _file_set(tmp_path / "cd")
    refs = dicomdir_references(dicomdir)
    refs[0].unlink()  # a file the index names but the medium lost
    for folder in sorted({p.parent for p in refs[1:]}, key=lambda p: -len(p.parts)):
        for f in folder.iterdir():
            f.rename(f.with_name(f.name.lower()))  # copied through a system that lowered names
    found = dicomdir_references(dicomdir)
    assert found[0] == refs[0] and not found[0].exists()
    assert all(p.is_file() and p.name.islower() for p in found[1:])
    (tmp_path / "junk").write_bytes(b"\x02\x00" + bytes(50))
    with pytest.raises(ImageReadError):
        dicomdir_references(tmp_path / "junk")
