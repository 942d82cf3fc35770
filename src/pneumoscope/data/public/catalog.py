"""The catalog of public sets: their files, published checksums, licences and citations.

Facts and where they come from:

- ``pediatric``: Kermany, Zhang, Goldbaum, "Labeled Optical Coherence Tomography (OCT) and
  Chest X-Ray Images for Classification", Mendeley Data v2, doi:10.17632/rscbjbr9sj.2,
  CC BY 4.0; the file ChestXRay2017.zip (about 1.2 GB). Mendeley publishes neither an
  exact size nor a checksum, so the download is checked against the server's length and
  the zip's own CRC-32 of every member (checked while unpacking).
- ``pneumoniamnist``: the URLs and MD5s are those of the ``medmnist`` package's
  ``INFO["pneumoniamnist"]`` (medmnist 3.0.2, ``medmnist/info.py``; Zenodo record 10519652,
  MedMNIST+ v3), licence CC BY 4.0 as that entry says.
- ``rsna``: Kaggle competition data; a Kaggle account is needed, so nothing is fetched.

``PNEUMOSCOPE_DOWNLOAD_BASE_URL`` (or the ``base_url`` argument) replaces every URL by
``BASE/<file name>``: a mirror, or the local server of the tests.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from pneumoscope.core.errors import UserError

MARKER = "pneumoscope-dataset.json"  # written into every folder `data download` fills
BASE_URL_ENV = "PNEUMOSCOPE_DOWNLOAD_BASE_URL"
CACHE_ENV = "PNEUMOSCOPE_CACHE"


@dataclass(frozen=True)
class RemoteFile:
    """One file of a set: its name in the cache, where to fetch it, what it must be."""

    name: str
    url: str  # "" when it cannot be fetched without an account
    md5: str = ""  # as published; "" when the publisher gives none
    size: int = 0  # bytes as published; 0 when the publisher gives none


@dataclass(frozen=True)
class PublicSet:
    """One public dataset: what it holds, its terms, and its files (by variant)."""

    name: str  # the NAME of `pneumoscope data download NAME`
    title: str
    licence: str
    citation: str
    holds: str
    grouping: str  # what grouping its contents allow (patients, duplicates)
    page: str  # where a person downloads it by hand
    kind: str  # "zip": unpacked; "npz": used as it is; "kaggle": needs an account
    files: dict[str, RemoteFile] = field(default_factory=dict)  # variant -> file
    default_variant: str = ""

    def file(self, variant: str | int | None = None) -> RemoteFile:
        """The file of ``variant`` (an image size for PneumoniaMNIST), or a UserError."""
        key = self.default_variant if variant in (None, "") else str(variant)
        if key not in self.files:
            if len(self.files) == 1 and variant not in (None, ""):
                raise UserError(f"--size applies to pneumoniamnist only, not to {self.name}")
            raise UserError(
                f"no {self.name} file for --size {variant}: choose {' | '.join(self.files)}"
            )
        return self.files[key]

    def folder_name(self, variant: str | int | None = None) -> str:
        """The folder name of the set in the cache (``pneumoniamnist_64``, ``pediatric``)."""
        key = self.default_variant if variant in (None, "") else str(variant)
        return f"{self.name}_{key}" if len(self.files) > 1 else self.name


_KERMANY_DATA = (
    "Kermany D, Zhang K, Goldbaum M (2018). Labeled Optical Coherence Tomography (OCT) and "
    "Chest X-Ray Images for Classification. Mendeley Data, v2. doi:10.17632/rscbjbr9sj.2"
)
_KERMANY = (
    _KERMANY_DATA + "; and Kermany DS et al. Identifying Medical Diagnoses and Treatable "
    "Diseases by Image-Based Deep Learning. Cell 2018;172(5):1122-1131. "
    "doi:10.1016/j.cell.2018.02.010"
)
_MEDMNIST = (
    "Yang J, Shi R, Wei D, Liu Z, Zhao L, Ke B, Pfister H, Ni B. MedMNIST v2 - A large-scale "
    "lightweight benchmark for 2D and 3D biomedical image classification. Scientific Data "
    "2023;10:41. doi:10.1038/s41597-022-01721-8; files: Zenodo doi:10.5281/zenodo.10519652; "
    "source images: " + _KERMANY_DATA
)
_RSNA = (
    "Shih G, Wu CC, Halabi SS, et al. Augmenting the National Institutes of Health Chest "
    "Radiograph Dataset with Expert Annotations of Possible Pneumonia. Radiology: Artificial "
    "Intelligence 2019;1(1):e180041. doi:10.1148/ryai.2019180041; images from NIH "
    "ChestX-ray14 (Wang X et al., CVPR 2017)"
)
_MENDELEY_ZIP = (
    "https://data.mendeley.com/public-files/datasets/rscbjbr9sj/files/"
    "f12eaf6d-6023-432f-acc9-80c9d7393433/file_downloaded"
)
_ZENODO = "https://zenodo.org/records/10519652/files/{name}?download=1"
# medmnist 3.0.2, medmnist/info.py, INFO["pneumoniamnist"]: MD5, MD5_64, MD5_128, MD5_224
_MEDMNIST_MD5 = {
    "28": "28209eda62fecd6e6a2d98b1501bb15f",
    "64": "8f4eceb4ccffa70c672198ea285246c6",
    "128": "05b46931834c231683c68f40c47b2971",
    "224": "d6a3c71de1b945ea11211b03746c1fe1",
}
MEDMNIST_SPLIT_SIZES = {"train": 4708, "val": 524, "test": 624}  # INFO["n_samples"]
KAGGLE_RSNA_COMMAND = "kaggle competitions download -c rsna-pneumonia-detection-challenge"


def _medmnist_name(size: str) -> str:
    return "pneumoniamnist.npz" if size == "28" else f"pneumoniamnist_{size}.npz"


SETS: dict[str, PublicSet] = {
    "pediatric": PublicSet(
        name="pediatric",
        title='Chest X-Ray Images (Pneumonia), Kermany et al. 2018 ("ChestXRay2017")',
        licence="CC BY 4.0",
        citation=_KERMANY,
        holds="5,856 pediatric chest X-rays (JPEG), NORMAL/PNEUMONIA, official train/test "
        "split (Guangzhou Women and Children's Medical Center, ages 1 to 5)",
        grouping="by patient (the file names carry the patient) and by duplicates",
        page="https://data.mendeley.com/datasets/rscbjbr9sj/2",
        kind="zip",
        files={"": RemoteFile("ChestXRay2017.zip", _MENDELEY_ZIP)},
    ),
    "pneumoniamnist": PublicSet(
        name="pneumoniamnist",
        title="PneumoniaMNIST (MedMNIST v2/v3), centre-cropped and resized Kermany images",
        licence="CC BY 4.0",
        citation=_MEDMNIST,
        holds="5,856 images of the pediatric set, centre-cropped and resized to 28/64/128/224 "
        "px, official splits train 4,708 / val 524 / test 624 (the same 624 test images)",
        grouping="by duplicates only: MedMNIST gives no patient ids",
        page="https://zenodo.org/records/10519652",
        kind="npz",
        files={
            s: RemoteFile(_medmnist_name(s), _ZENODO.format(name=_medmnist_name(s)), md5)
            for s, md5 in _MEDMNIST_MD5.items()
        },
        default_variant="64",
    ),
    "rsna": PublicSet(
        name="rsna",
        title="RSNA Pneumonia Detection Challenge (2018)",
        licence="RSNA terms of use: research, education, commercial or non-commercial use "
        "with attribution; the Kaggle competition rules apply to the Kaggle copy",
        citation=_RSNA,
        holds="26,684 adult chest X-rays (DICOM) from NIH ChestX-ray14 with radiologists' "
        "lung opacity labels and boxes",
        grouping="by patient (one image per patient id) and by duplicates",
        page="https://www.kaggle.com/c/rsna-pneumonia-detection-challenge",
        kind="kaggle",
        files={"": RemoteFile("rsna-pneumonia-detection-challenge.zip", "")},
    ),
}


def set_names() -> tuple[str, ...]:
    return tuple(SETS)


def get_set(name: str) -> PublicSet:
    """The set called ``name``, or a UserError listing the choices."""
    key = (name or "").strip().lower()
    if key not in SETS:
        raise UserError(f"unknown dataset {name!r}: choose one of {', '.join(SETS)}")
    return SETS[key]


def cache_root() -> Path:
    """``$PNEUMOSCOPE_CACHE``, else ``$XDG_CACHE_HOME/pneumoscope``, else
    ``~/.cache/pneumoscope``: downloads, unpacked sets and MedMNIST images live here."""
    given = os.environ.get(CACHE_ENV, "").strip()
    if given:
        return Path(given).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg) if xdg else Path.home() / ".cache") / "pneumoscope"


def file_url(rf: RemoteFile, base_url: str | None = None) -> str:
    """Where to fetch ``rf``: ``BASE/<name>`` when a base URL is given (argument, then
    ``$PNEUMOSCOPE_DOWNLOAD_BASE_URL``), else the publisher's URL."""
    base = base_url if base_url is not None else os.environ.get(BASE_URL_ENV, "")
    return f"{base.rstrip('/')}/{rf.name}" if base.strip() else rf.url


def pneumoniamnist_size_of(md5: str) -> str | None:
    """The image size of the official PneumoniaMNIST file with this MD5, if any."""
    return next((s for s, m in _MEDMNIST_MD5.items() if m == md5), None)


def read_marker(folder: Path) -> dict | None:
    """The marker `data download` left in ``folder``, or None."""
    try:
        return json.loads((Path(folder) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def identify(path: str | Path, layout: str = "") -> PublicSet | None:
    """The public set a ``data prepare`` source is, from the marker `data download` left
    (in the source folder or up to two folders above), else from its layout."""
    p = Path(path)
    here = p if p.is_dir() else p.parent
    for folder in [here, *list(here.parents)[:2]]:
        marker = read_marker(folder)
        if marker and marker.get("dataset") in SETS:
            return SETS[marker["dataset"]]
    return {"medmnist": SETS["pneumoniamnist"], "rsna": SETS["rsna"]}.get(layout)
