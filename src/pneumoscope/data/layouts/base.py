"""What a layout reader is (:class:`Layout`) and the helpers the readers share.

A layout module imports from here (and from ``data.records``), never from another layout
or from ``data.sources``, so the readers form no import cycle.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pneumoscope.core.errors import ImageReadError
from pneumoscope.data.dicom import DICOM_EXTENSIONS, dicom_metadata
from pneumoscope.data.records import MAX_AGE, SourceRead, SourceRow, age_group_of

LABEL_FOLDERS = {"normal": 0, "pneumonia": 1}
SPLIT_FOLDERS = {
    "train": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
}

# Patient id from the pediatric set's file names; the prefix keeps IM-P and NORMAL2-IM-P apart.
# person{P}_bacteria_* and person{P}_virus_* are numbered separately: on the real set,
# images sharing P and type are closer in perceptual hash than random pairs (median 114
# vs 118 bits of 256; 1.8% vs 0.1% under 80) while a bacteria/virus pair sharing P is
# exactly as far apart as a random pair, and by eye they are different children. So the
# type is part of the patient id; keying on P alone would merge 170 unrelated children
# across the official train/test split.
_PATIENT_PATTERNS = (
    re.compile(r"^(person\d+_(?:bacteria|virus))_", re.IGNORECASE),
    re.compile(r"^(NORMAL\d*-IM-\d+)-", re.IGNORECASE),
    re.compile(r"^(IM-\d+)-", re.IGNORECASE),
)


@dataclass(frozen=True)
class ReadOptions:
    """The label policies and defaults a reader may need (the ``data prepare`` flags)."""

    covid_as: str = "exclude"  # COVID19 folder: "exclude" or "pneumonia"
    rsna_not_normal: str = "exclude"  # RSNA "No Lung Opacity / Not Normal": or "normal"
    default_age_group: str = ""  # for rows whose age the source does not give


@dataclass(frozen=True)
class Layout:
    """One dataset layout: how to recognise it on disk and how to read it into rows.

    A module of ``pneumoscope.data.layouts`` that sets ``LAYOUT = Layout(...)`` is found by
    the registry; ``detect`` sees the source path (a file or a folder) and must not raise.
    Automatic detection asks the layouts in ``priority`` order (lower first, then by name)
    and takes the first that answers True.
    """

    name: str  # the --layout value
    detect: Callable[[Path], bool]
    read: Callable[[str, Path, ReadOptions], SourceRead]  # (source name, path, options)
    priority: int = 100


# --- helpers shared by the readers -------------------------------------------------------


def fill_from_dicom(rows: list[SourceRow], default_age_group: str = "") -> None:
    """Age, sex and view from the headers of DICOM files (by extension) where a row lacks
    them. The patient is left alone: anonymised exports often share one PatientID."""
    for row in rows:
        if not row.path.lower().endswith(DICOM_EXTENSIONS) or not Path(row.path).is_file():
            continue
        try:
            meta = dicom_metadata(row.path)
        except ImageReadError:
            continue  # the decoder reports the file later
        age = meta["age_years"]
        if row.age is None and age is not None and 0.0 <= age <= MAX_AGE:
            row.age = age
            row.age_group = age_group_of(age, default_age_group)
        row.sex = row.sex or meta["sex"] or ""
        row.view = row.view or meta["view"] or ""


def patient_from_name(filename: str) -> str | None:
    """Patient id parsed from a pediatric file name, or None when the name has no pattern."""
    stem = Path(filename).stem
    for pat in _PATIENT_PATTERNS:
        m = pat.match(stem)
        if m:
            return m.group(1).lower()
    return None


def patient_or_file_id(path: Path, root: Path) -> str:
    """The parsed patient, else the file's own path below the source root.

    The fallback makes every unknown file its own group: safe (never merges two
    patients, not even NORMAL/x.png and PNEUMONIA/x.png) but blind to same-patient pairs.
    A file outside ``root`` (an absolute path in a CSV) is named by its full path.
    """
    found = patient_from_name(path.name)
    if found:
        return found
    try:
        rel = path.relative_to(root)
    except ValueError:
        rel = path
    return str(rel.with_suffix("")).lower()


def is_hidden(path: Path, below: Path) -> bool:
    """Dot files and macOS zip debris (``__MACOSX``, ``._name``) are not data."""
    return any(part.startswith((".", "__MACOSX")) for part in path.relative_to(below).parts)


def describe(folder: Path) -> str:
    """A short listing of a folder for error messages."""
    names = sorted(c.name + ("/" if c.is_dir() else "") for c in folder.iterdir())
    if not names:
        return "an empty folder"
    return ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
