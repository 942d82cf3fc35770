"""Test utilities shared by several test modules: synthetic X-rays and layouts, DICOM
objects built with pydicom, awkward files, and the real CLI in a subprocess."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pneumoscope.data.cache import PrepareResult, decode_rows, fail_unreadable, write_cache
from pneumoscope.data.groups import build_groups, group_names
from pneumoscope.data.layouts.class_folders import read_class_folders
from pneumoscope.data.preprocess import PreprocessConfig
from pneumoscope.data.records import SourceRow

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PNEUMOSCOPE_SHARED_DATA", REPO.parent / "shared" / "data"))


def fake_xray(rng: np.random.Generator, pneumonia: bool, size: int = 64) -> np.ndarray:
    """A gray chest-like picture: two dark lungs on a lighter body; pneumonia adds a
    bright, blurred opacity inside one lung, so the label is learnable but not trivial."""
    img = np.full((size, size), 170, np.float32)
    c = size // 2
    for dx in (-1, 1):
        center = (c + dx * size // 5 + int(rng.integers(-2, 3)), c + int(rng.integers(-2, 3)))
        cv2.ellipse(img, center, (size // 7, size // 3), 0, 0, 360, 60, -1)
    if pneumonia:
        side = rng.choice([-1, 1])
        center = (c + side * size // 5, c + int(rng.integers(-size // 8, size // 8)))
        cv2.circle(img, center, size // 9, 150, -1)
    img = cv2.GaussianBlur(img, (5, 5), 0)
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_kaggle_layout(
    root: Path, n_per_class: dict[str, int], seed: int = 0, size: int = 64, with_val: int = 0
) -> Path:
    """train|test[/val]/NORMAL|PNEUMONIA with pediatric-style names (two images per patient)."""
    rng = np.random.default_rng(seed)
    splits = dict(n_per_class)
    if with_val:
        splits["val"] = with_val
    pid = 0
    for split, n in splits.items():
        for label in ("NORMAL", "PNEUMONIA"):
            d = root / split / label
            d.mkdir(parents=True, exist_ok=True)
            for k in range(n):
                if k % 2 == 0:
                    pid += 1
                name = (
                    f"person{pid}_bacteria_{k}.jpeg"
                    if label == "PNEUMONIA"
                    else f"IM-{pid:04d}-{k:04d}.jpeg"
                )
                cv2.imwrite(str(d / name), fake_xray(rng, label == "PNEUMONIA", size))
    return root


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None):
    """Run the real console entry point in a subprocess, as a user would (``env``: variables
    set on top of this process's)."""
    return subprocess.run(
        [sys.executable, "-m", "pneumoscope", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
        env={**os.environ, **env} if env else None,
    )


def linked_kaggle_slice(src: Path, root: Path, per_class: dict[str, int], step: int) -> Path:
    """``root``/{split}/{NORMAL,PNEUMONIA}: links to every ``step``-th real film of ``src``
    (a Kaggle-layout folder), ``per_class[split]`` per class, plus two files that cannot be
    read among the train PNEUMONIA films: a truncated JPEG and a text file named .png."""
    for split, n in per_class.items():
        for label in ("NORMAL", "PNEUMONIA"):
            d = root / split / label
            d.mkdir(parents=True)
            for f in sorted((src / split / label).iterdir())[::step][:n]:
                (d / f.name).symlink_to(f)
    bad = root / "train" / "PNEUMONIA"
    film = next((src / "train" / "PNEUMONIA").iterdir()).read_bytes()
    (bad / "person9001_bacteria_1.jpeg").write_bytes(film[: len(film) // 3])
    (bad / "person9002_bacteria_1.png").write_text("a note, not an image\n")
    return root


# --- DICOM objects ---------------------------------------------------------------------

DX_IMAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
H, W = 64, 80


def dicom_ramp(lo: float, hi: float, dtype, h: int = H, w: int = W) -> np.ndarray:
    """Left-to-right gradient, the same on every row."""
    return np.tile(np.linspace(lo, hi, w), (h, 1)).round().astype(dtype)


def dicom_dataset(
    pixels: np.ndarray | None,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    sop_class: str = DX_IMAGE,
    **attrs,
) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.Modality = "DX"
    ds.PatientID = "PAT-001"
    if pixels is not None:
        ds.set_pixel_data(pixels, photometric, bits_stored or pixels.dtype.itemsize * 8)
    else:
        ds.SOPInstanceUID = generate_uid()
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def write_dicom(ds: Dataset, path: Path) -> Path:
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    dcmwrite(path, ds, enforce_file_format=True)
    return path


# --- awkward files ---------------------------------------------------------------------


def png_header_only(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    crc = struct.pack(">I", zlib.crc32(chunk) & 0xFFFFFFFF)
    idat = zlib.compress(b"\x00" * 64)
    idat_chunk = b"IDAT" + idat
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + crc
        + struct.pack(">I", len(idat))
        + idat_chunk
        + struct.pack(">I", zlib.crc32(idat_chunk) & 0xFFFFFFFF)
    )


# --- a second source made of re-encoded, re-split copies -----------------------------------


def write_copy_source(
    original: Path, root: Path, seed: int = 0, covid: int = 2, size: int = 96
) -> Path:
    """The Covid-19 & Pneumonia construction: every original image pooled, shuffled,
    split 80/20, renamed NORMAL(i).jpg / PNEUMONIA(i).jpg, gray, resized, JPEG 85."""
    files = sorted(p for p in original.rglob("*.jpeg"))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(files))
    for k, idx in enumerate(order):
        f = files[idx]
        cls = f.parent.name
        split = "test" if k < len(files) // 5 else "train"
        d = root / "Data" / split / cls
        d.mkdir(parents=True, exist_ok=True)
        img = cv2.resize(cv2.imread(str(f), cv2.IMREAD_GRAYSCALE), (size, size))
        cv2.imwrite(str(d / f"{cls}({k}).jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 85])
    for i in range(covid):
        d = root / "Data" / "train" / "COVID19"
        d.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(d / f"COVID19({i}).jpg"), rng.integers(0, 255, (80, 80), dtype=np.uint8))
    return root


# --- a cache without the prepare pipeline ------------------------------------------------


def build_cache(
    rows: list[SourceRow],
    out: str | Path,
    cfg: PreprocessConfig,
    split_note: str,
    workers: int | None = None,
    progress: bool = True,
) -> PrepareResult:
    """Decode, preprocess and store every row as it is (its split, no duplicate handling);
    unreadable files go to rejected.csv. ``prepare`` is the full pipeline; tests use this
    to check the cache stage alone."""
    out = Path(out)
    dec = decode_rows([r.path for r in rows], out, cfg, workers, progress)
    keep = np.flatnonzero(dec.ok)
    if len(keep) == 0:
        fail_unreadable(out, rows, dec)
    kept = [rows[i] for i in keep]
    roots = build_groups([r.source for r in kept], [r.patient for r in kept])
    return write_cache(out, cfg, rows, dec, keep, {"group": group_names(roots)}, split_note)


def scan_class_folders(root: str | Path, source: str | None = None) -> list[SourceRow]:
    """The rows of a class-folder layout, named after its folder (raises UserError with
    what to do when the path is missing or holds no class folders)."""
    root = Path(root).expanduser()
    return read_class_folders(source or root.resolve().name, root).rows


# --- a realistic chest radiograph as a PACS holds it ----------------------------------------

CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage


def chest_xray_dataset(
    pixels: np.ndarray,
    study_uid: str,
    series_uid: str,
    modality: str = "CR",
    study_date: str = "20240115",
    instance_number: int = 1,
    view: str = "PA",
    bits_stored: int | None = None,
) -> Dataset:
    """A CR or DX chest image with the patient, study, series, equipment and image modules a
    PACS expects (dummy patient values), its own new SOP Instance UID, and ``pixels``."""
    ds = dicom_dataset(
        pixels,
        bits_stored=bits_stored,
        sop_class=CR_IMAGE if modality == "CR" else DX_IMAGE,
        Modality=modality,
        PatientName="Test^Pneumoscope",
        PatientID="PAT-001",
        PatientBirthDate="20180301",
        PatientSex="F",
        PatientAge="005Y",
        StudyInstanceUID=study_uid,
        StudyDate=study_date,
        StudyTime="101500",
        StudyID="1",
        AccessionNumber="ACC-" + study_date,
        ReferringPhysicianName="",
        StudyDescription="CHEST",
        SeriesInstanceUID=series_uid,
        SeriesNumber=1,
        BodyPartExamined="CHEST",
        ViewPosition=view,
        Manufacturer="pneumoscope-tests",
        InstanceNumber=instance_number,
        PatientOrientation=["L", "F"],
        ImageType=["ORIGINAL", "PRIMARY"],
    )
    ds.SOPInstanceUID = generate_uid()
    return ds


# --- a chest radiograph as a modality stores it (patient, study, series, equipment) ------

PATIENT = {  # made up, a child like the training films', with a non-ASCII name
    "SpecificCharacterSet": "ISO_IR 192",
    "PatientName": "Müller^Jörg",
    "PatientID": "PAT-042",
    "PatientBirthDate": "20200215",
    "PatientSex": "M",
    "PatientAge": "004Y",
}


def xray_dicom(
    pixels: np.ndarray,
    sop_class: str = CR_IMAGE,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    **attrs,
) -> Dataset:
    """A PA chest film with the patient, general study, series, equipment and image modules
    filled (made-up, well-formed values); ``attrs`` override or add attributes."""
    study = {
        "StudyInstanceUID": generate_uid(),
        "StudyDate": "20240311",
        "StudyTime": "093015",
        "AccessionNumber": "ACC-7781",
        "ReferringPhysicianName": "Referrer^Rita",
        "StudyID": "ST-12",
        "StudyDescription": "XR CHEST PA",
    }
    series = {
        "SeriesInstanceUID": generate_uid(),
        "SeriesNumber": 1,
        "Manufacturer": "Example Modality Co",
        "InstanceNumber": 1,
        "PatientOrientation": ["L", "F"],
        "BodyPartExamined": "CHEST",
        "ViewPosition": "PA",
        "ImageType": ["ORIGINAL", "PRIMARY"],
        "ContentDate": "20240311",
        "ContentTime": "093100",
    }
    values = {"Modality": "CR", **PATIENT, **study, **series, **attrs}
    return dicom_dataset(pixels, photometric, bits_stored, sop_class, **values)


def dciodvfy(path: Path) -> list[str]:
    """Every line dciodvfy (Debian package dicom3tools) says about a DICOM file: the IOD's
    name, then "Error - ..." and "Warning - ..." findings."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        raise AssertionError("dciodvfy is missing: apt-get install -y dicom3tools")
    done = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]


# --- DICOM as a hospital sends it -------------------------------------------------------

CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
SC_IMAGE = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage
CLASS_OF_MODALITY = {"DX": DX_IMAGE, "CR": CR_IMAGE, "CT": CT_IMAGE, "SC": SC_IMAGE}


def dicom_raw(pixels: np.ndarray, photometric: str = "MONOCHROME2", **attrs) -> Dataset:
    """A dataset whose pixel data hold ``pixels`` byte for byte, for what pydicom's
    set_pixel_data refuses: 32-bit integers (Pixel Data), float32 (Float Pixel Data), or
    big-endian values (a '>' dtype; the file must then be written Explicit VR Big Endian)."""
    ds = dicom_dataset(None, **attrs)
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 1 if pixels.ndim == 2 else pixels.shape[2]
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    if pixels.dtype.kind == "f":
        ds.FloatPixelData = pixels.tobytes()
        return ds
    ds.BitsStored = ds.BitsAllocated
    ds.HighBit = ds.BitsAllocated - 1
    ds.PixelRepresentation = int(pixels.dtype.kind == "i")
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OW" if ds.BitsAllocated > 8 else "OB"
    return ds


def _study(ds: Dataset, study_uid: str, series: int, instance: int) -> Dataset:
    """The patient, study and series attributes a DICOMDIR record needs."""
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "PAT-001"
    ds.PatientBirthDate = ""
    ds.PatientSex = "F"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate, ds.StudyTime = "20240115", "101500"
    ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "ACC1", ""
    ds.SeriesInstanceUID = f"{study_uid}.{series}"
    ds.SeriesNumber, ds.InstanceNumber = series, instance
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def film_dataset(
    gray: np.ndarray,
    modality: str = "DX",
    study_uid: str = "1.2.826.0.1.3680043.8.498.1",
    series: int = 1,
    instance: int = 1,
    **attrs,
) -> Dataset:
    """An 8-bit gray picture as a PACS stores a film of ``modality``: 12-bit MONOCHROME2
    (value x 16), the SOP class of the modality, patient, study and series attributes."""
    pixels = np.asarray(gray).astype(np.uint16) * 16
    ds = dicom_dataset(pixels, bits_stored=12, sop_class=CLASS_OF_MODALITY[modality])
    ds.Modality = modality
    _study(ds, study_uid, series, instance)
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def report_dataset(
    study_uid: str = "1.2.826.0.1.3680043.8.498.1", series: int = 9, instance: int = 1
) -> Dataset:
    """A Basic Text SR (a radiologist's report) in the study: no pixels."""
    from pydicom.sequence import Sequence

    ds = dicom_dataset(None, sop_class=BASIC_TEXT_SR)
    ds.Modality = "SR"
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    ds.ContentDate, ds.ContentTime = "20240115", "103000"
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    title = Dataset()
    title.CodeValue, title.CodingSchemeDesignator = "18748-4", "LN"
    title.CodeMeaning = "Diagnostic imaging report"
    ds.ConceptNameCodeSequence = Sequence([title])
    text = Dataset()
    text.RelationshipType, text.ValueType = "CONTAINS", "TEXT"
    text.TextValue = "No focal consolidation."
    ds.ContentSequence = Sequence([text])
    return _study(ds, study_uid, series, instance)


# --- public data sets: archives laid out like the publishers', and a local HTTP server ----


def mendeley_zip(path: Path, n_per_class: dict[str, int] | None = None, seed: int = 0) -> bytes:
    """A small zip laid out like Mendeley's ChestXRay2017.zip (``chest_xray/train|test/
    NORMAL|PNEUMONIA/`` with pediatric file names, plus macOS debris); returns its bytes."""
    import zipfile

    tree = path.with_suffix("") / "tree"
    write_kaggle_layout(tree / "chest_xray", n_per_class or {"train": 6, "test": 3}, seed=seed)
    with zipfile.ZipFile(path, "w") as zf:
        for f in sorted(tree.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(tree).as_posix())
        zf.writestr("chest_xray/.DS_Store", b"\0\0\0\1Bud1")
        zf.writestr("__MACOSX/chest_xray/._.DS_Store", b"\0\5\26\7")
    shutil.rmtree(tree.parent)
    return path.read_bytes()


def medmnist_npz(path: Path, n: dict[str, int] | None = None, px: int = 28, seed: int = 0) -> bytes:
    """A small .npz laid out like MedMNIST's PneumoniaMNIST (``{split}_images`` N x px x px
    uint8, ``{split}_labels`` N x 1, 0 normal / 1 pneumonia); returns its bytes."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, k in (n or {"train": 8, "val": 4, "test": 4}).items():
        labels = (np.arange(k) % 2).astype(np.uint8).reshape(k, 1)
        arrays[f"{split}_images"] = np.stack([fake_xray(rng, bool(y), px) for y in labels[:, 0]])
        arrays[f"{split}_labels"] = labels
    np.savez_compressed(path, **arrays)
    return path.read_bytes()


class FileServer:
    """An HTTP server on 127.0.0.1, in a thread, serving ``files`` (name -> bytes) at
    ``url + "/" + name`` with Range requests (206; 416 past the end), and faults to inject:
    ``status[name] = 500`` answers that status; ``drops[name] = [n, ...]`` makes each next
    request send only n bytes of the body and close the connection; ``ignore_range`` answers
    every request with the whole file. ``requests`` logs (name, Range header)."""

    def __init__(self, files: dict[str, bytes]):
        self.files = dict(files)
        self.status: dict[str, int] = {}
        self.drops: dict[str, list[int]] = {}
        self.ignore_range = False
        self.requests: list[tuple[str, str]] = []
        self.url = ""

    def __enter__(self) -> FileServer:
        import threading
        from http.server import ThreadingHTTPServer

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def _handler_for(server: FileServer):
    import re
    from http.server import BaseHTTPRequestHandler
    from urllib.parse import urlsplit

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet
            pass

        def do_GET(self) -> None:
            name = urlsplit(self.path).path.lstrip("/")
            asked = self.headers.get("Range", "")
            server.requests.append((name, asked))
            if name in server.status or name not in server.files:
                self.send_error(server.status.get(name, 404))
                return
            data = server.files[name]
            m = re.match(r"bytes=(\d+)-$", asked)
            start = int(m.group(1)) if m and not server.ignore_range else 0
            if start >= len(data) > 0:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206 if start else 200)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            drops = server.drops.get(name)
            body = data[start:] if not drops else data[start : start + drops.pop(0)]
            self.wfile.write(body)
            self.close_connection = True

    return Handler


def sr_probability(sr) -> float:
    """The calibrated probability (DCM 122157) a pneumoscope SR holds; ``sr`` is a dataset
    or a path to one."""
    ds = sr if isinstance(sr, Dataset) else pydicom.dcmread(sr)
    stack = list(ds.ContentSequence)
    while stack:
        item = stack.pop()
        stack += list(item.get("ContentSequence", []))
        if item.ConceptNameCodeSequence[0].CodeValue == "122157":
            return float(item.MeasuredValueSequence[0].FloatingPointValue)
    raise AssertionError("no probability in the SR")


def invoke_cli(*args: str, env: dict[str, str] | None = None):
    """The same command in this process (Typer's CliRunner), for tests where a subprocess
    adds nothing but a second or two of imports: the exit status, stdout and stderr
    ``main()`` gives (a UserError: one ``error:`` line, status 2), as ``run_cli``'s."""
    from types import SimpleNamespace

    from typer.testing import CliRunner

    from pneumoscope.cli.main import app
    from pneumoscope.core.errors import UserError

    r = CliRunner().invoke(app, list(args), env=env, prog_name="pneumoscope")
    stdout, stderr, code = r.stdout, r.stderr, r.exit_code
    if isinstance(r.exception, UserError):
        stderr, code = f"{stderr}error: {r.exception}\n", 2
    elif r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return SimpleNamespace(returncode=code, stdout=stdout, stderr=stderr)
