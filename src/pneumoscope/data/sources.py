"""Readers that turn an on-disk layout into manifest rows (one per image file).

Layouts (``read_source(..., layout=...)``; ``"auto"`` detects them):

- ``class-folders``: ``NORMAL|PNEUMONIA`` folders, with or without split folders
  (``train|val|test/NORMAL|PNEUMONIA``, the Kaggle pediatric layout); here.
- ``covid19-pneumonia``: ``[Data/]train|test/COVID19|NORMAL|PNEUMONIA``; ``source_covid``.
- ``csv``: a CSV of ``path,label[,patient_id,age,sex,view,split]``; ``source_csv``.
- ``rsna``: RSNA Pneumonia Detection Challenge (labels CSV + DICOM); ``source_rsna``.

A reader never drops a file silently: a file left out on purpose (a label policy, an
unparseable CSV line) is an :class:`Excluded` with its reason, and a file that is listed
but unreadable or missing stays a row, for the decoder to reject with its reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from pneumoscope.core.errors import UserError

LAYOUTS = ("auto", "class-folders", "covid19-pneumonia", "csv", "rsna")
AGE_GROUPS = ("child", "adult", "")
ADULT_AGE = 18.0  # years; younger is "child"
MAX_AGE = 120.0  # older is a typing error (the RSNA set has a few ages such as 148)

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
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


@dataclass
class SourceRow:
    path: str
    label: int  # 1 PNEUMONIA, 0 NORMAL
    split: str  # "train", "val", "test" or "" when the source gives none
    patient: str  # unique within its source only (grouping prefixes the source name)
    source: str  # the source name
    age_group: str = ""  # "child", "adult" or "" (unknown)
    age: float | None = None  # years
    sex: str = ""  # "M", "F" or ""
    view: str = ""  # e.g. "PA", "AP" or ""


@dataclass
class Excluded:
    """A file left out on purpose by a label policy or a bad listing (not a read error)."""

    path: str
    source: str
    reason: str


@dataclass
class SourceRead:
    rows: list[SourceRow]
    excluded: list[Excluded]
    layout: str  # the layout actually read
    notes: list[str] = field(default_factory=list)  # warnings worth showing to the user


# --- public entry points ---------------------------------------------------------------


def parse_source_spec(spec: str) -> tuple[str, Path]:
    """``NAME=PATH`` or ``PATH`` -> (name, path); a plain path is named after its stem
    (other characters than letters, digits, ``_.-`` become ``_``).

    A spec that is itself an existing path is taken whole, so a folder whose name holds
    ``=`` still works without a name.
    """
    text = (spec or "").strip()
    if not text:
        raise UserError("empty --source: give PATH or NAME=PATH (e.g. pediatric=data/chest_xray)")
    name, sep, rest = text.partition("=")
    if sep and not Path(text).expanduser().exists():
        name, raw = name.strip(), rest.strip()
        if not name or not raw:
            raise UserError(
                f"bad --source {spec!r}: give NAME=PATH with both parts (e.g. pediatric=data/cx)"
            )
        path = Path(raw).expanduser()
    else:
        path = Path(text).expanduser()
        stem = (path.resolve() if path.name in ("", ".", "..") else path).stem
        name = re.sub(r"[^A-Za-z0-9_.\-]+", "_", stem).strip("_.-") or "source"
    if not _NAME.match(name):
        raise UserError(
            f"bad source name {name!r} in --source {spec!r}: use letters, digits, '_', '-' "
            "or '.', starting with a letter or digit (give NAME=PATH to choose one)"
        )
    return name, path


def detect_layout(path: Path) -> str:
    """The layout of ``path``, or a UserError saying what was found and how to choose."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"source not found: {path}")
    from pneumoscope.data.layouts.rsna import LABEL_FILES, find_rsna_labels

    if path.is_file():
        if path.name.lower() in LABEL_FILES:
            return "rsna"  # the RSNA labels file given instead of its folder
        if path.suffix.lower() == ".csv":
            return "csv"
        raise UserError(
            f"source {path} is a file but not a .csv: give a folder of images, a CSV of "
            "path,label, or an RSNA folder (choose with --layout " + "|".join(LAYOUTS[1:]) + ")"
        )
    if find_rsna_labels(path) is not None:
        return "rsna"
    kind = _tree_kind(descend_single(path))
    if kind:
        return kind
    below = {}
    for child in _subdirs(path):
        if find_rsna_labels(child) is not None:
            below[child.name] = "rsna"
        elif k := _tree_kind(descend_single(child)):
            below[child.name] = k
    if len(below) > 1:
        listed = ", ".join(f"{n}/ ({k})" for n, k in sorted(below.items()))
        raise UserError(
            f"{path} holds several sources: {listed}; give each as its own --source "
            "NAME=PATH, or pick one folder (and --layout " + "|".join(LAYOUTS[1:]) + ")"
        )
    if below:
        ((n, k),) = below.items()
        raise UserError(
            f"no layout recognised in {path}, but its sub-folder {n}/ looks like a {k} "
            f"source: give --source {path / n}"
        )
    csvs = sorted(p.name for p in path.glob("*.csv") if p.is_file())
    hint = f"; for a CSV give the file itself (e.g. {path / csvs[0]})" if csvs else ""
    raise UserError(
        f"no known layout in {path} (found: {describe(path)}): expected NORMAL/ and "
        "PNEUMONIA/ (optionally inside train/ and test/), Data/train|test/COVID19|NORMAL|"
        f"PNEUMONIA, an RSNA folder with stage_2_train_labels.csv, or a .csv file{hint}; "
        "or choose with --layout " + "|".join(LAYOUTS[1:])
    )


def read_source(
    name: str,
    path: Path,
    layout: str = "auto",
    covid_as: str = "exclude",
    rsna_not_normal: str = "exclude",
    default_age_group: str = "",
) -> SourceRead:
    """Read one source into rows (absolute paths) and deliberate exclusions.

    ``covid_as``: ``"exclude"`` or ``"pneumonia"`` (COVID19 images of the Covid-19 &
    Pneumonia layout). ``rsna_not_normal``: ``"exclude"`` or ``"normal"`` (RSNA's "No
    Lung Opacity / Not Normal"). ``default_age_group`` (``"child"``, ``"adult"`` or
    ``""``) is used for every row whose age the source does not give.
    """
    if layout not in LAYOUTS:
        raise UserError(f"unknown --layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    if covid_as not in ("exclude", "pneumonia"):
        raise UserError(f"unknown --covid-as {covid_as!r}: choose exclude or pneumonia")
    if rsna_not_normal not in ("exclude", "normal"):
        raise UserError(f"unknown --rsna-not-normal {rsna_not_normal!r}: choose exclude or normal")
    if default_age_group not in AGE_GROUPS:
        raise UserError(f"unknown age group {default_age_group!r}: choose child, adult or none")
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"source {name!r} not found: {path}")
    if layout == "auto":
        layout = detect_layout(path)
    if layout == "class-folders":
        read = read_class_folders(name, path, default_age_group)
    elif layout == "covid19-pneumonia":
        from pneumoscope.data.layouts.covid import read_covid

        read = read_covid(name, path, covid_as, default_age_group)
    elif layout == "csv":
        from pneumoscope.data.layouts.csv_list import read_csv_source

        read = read_csv_source(name, path, default_age_group)
    else:
        from pneumoscope.data.layouts.rsna import read_rsna

        read = read_rsna(name, path, rsna_not_normal, default_age_group)
    read.layout = layout
    return read


# --- helpers shared by the readers -------------------------------------------------------


def fill_from_dicom(rows: list[SourceRow], default_age_group: str = "") -> None:
    """Age, sex and view from the headers of DICOM files (by extension) where a row lacks
    them. The patient is left alone: anonymised exports often share one PatientID."""
    from pneumoscope.core.errors import ImageReadError
    from pneumoscope.data.dicom import DICOM_EXTENSIONS, dicom_metadata

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


def age_group_of(age: float | None, default: str = "") -> str:
    """Adult from 18 years, child below; ``default`` when the age is unknown."""
    if age is None:
        return default
    return "adult" if age >= ADULT_AGE else "child"


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


# --- class-folder trees (also the Covid-19 & Pneumonia layout) ---------------------------

COVID_FOLDERS = ("covid19", "covid-19", "covid_19", "covid")
_TREE_CLASSES = {**{k: k for k in LABEL_FOLDERS}, **{c: "covid19" for c in COVID_FOLDERS}}


def _subdirs(folder: Path) -> list[Path]:
    return sorted(c for c in folder.iterdir() if c.is_dir() and not c.name.startswith((".", "__")))


def _class_dirs(folder: Path, classes: dict[str, str] | None = None) -> dict[str, Path]:
    """{class key: folder} for the class folders directly in ``folder`` (any case)."""
    classes = classes or _TREE_CLASSES
    return {classes[c.name.lower()]: c for c in _subdirs(folder) if c.name.lower() in classes}


def _split_dirs(folder: Path) -> dict[str, Path]:
    return {
        SPLIT_FOLDERS[c.name.lower()]: c
        for c in _subdirs(folder)
        if c.name.lower() in SPLIT_FOLDERS
    }


def descend_single(root: Path) -> Path:
    """Skip wrapper folders (a zip's ``chest_xray/chest_xray/``, the covid set's ``Data/``):
    descend through single sub-folders until split or class folders appear."""
    for _ in range(3):
        if _split_dirs(root) or _class_dirs(root):
            return root
        subdirs = _subdirs(root)
        if len(subdirs) != 1:
            return root
        root = subdirs[0]
    return root


def _tree_kind(root: Path) -> str | None:
    """The covid19-pneumonia layout when a COVID19 class folder is present, class-folders when
    only NORMAL/PNEUMONIA are, else None."""
    levels = list(_split_dirs(root).values()) or [root]
    keys = set().union(*(_class_dirs(d) for d in levels))
    if "covid19" in keys:
        return "covid19-pneumonia"
    if keys & set(LABEL_FOLDERS):
        return "class-folders"
    return None


def walk_class_tree(
    root: Path, classes: dict[str, str]
) -> tuple[list[tuple[Path, str, str]], Path, list[str]]:
    """Every visible file under the class folders: (path, class key, split), the root
    actually used (after wrapper folders), and notes on folders that were not read.

    Every visible file is offered, whatever its extension: a stray non-image then shows
    up in rejected.csv with its reason instead of vanishing.
    """
    root = descend_single(root.resolve())
    splits = _split_dirs(root)
    levels = sorted(splits.items()) if splits else [("", root)]
    out: list[tuple[Path, str, str]] = []
    notes: list[str] = []
    for split, sdir in levels:
        cdirs = _class_dirs(sdir, classes)
        others = [c.name for c in _subdirs(sdir) if c.name.lower() not in classes]
        if splits:
            others = [n for n in others if n.lower() not in SPLIT_FOLDERS]
        if others and cdirs:
            where = sdir.relative_to(root).as_posix() if sdir != root else "."
            notes.append(f"folders not read in {where}: {', '.join(others)} (not a class)")
        for key, cdir in sorted(cdirs.items()):
            files = sorted(p for p in cdir.rglob("*") if p.is_file() and not is_hidden(p, cdir))
            out += [(p, key, split) for p in files]
    return out, root, notes


def _check_tree(root: Path, classes: dict[str, str], expected: str) -> Path:
    if not root.exists():
        raise UserError(f"source folder not found: {root} (give the folder that holds {expected})")
    if not root.is_dir():
        raise UserError(f"source is not a folder: {root} (expected {expected})")
    top = descend_single(root.resolve())
    splits = _split_dirs(top)
    if splits:
        if not any(_class_dirs(d, classes) for d in splits.values()):
            raise UserError(
                f"no class folders in the split folders of {top}: expected "
                f"{'/'.join(sorted(splits))}/{expected}"
            )
    elif not _class_dirs(top, classes):
        raise UserError(
            f"no class folders in {top}: expected {expected} (optionally inside train/ and "
            f"test/); found {describe(top)}"
        )
    return top


_CLASS_FOLDERS_EXPECTED = "NORMAL/ and PNEUMONIA/"
_LABEL_ONLY = {k: k for k in LABEL_FOLDERS}


def scan_class_folders(root: str | Path, source: str | None = None) -> list[SourceRow]:
    """Scan a class-folder layout, with or without split folders.

    Raises UserError with what to do when the path is missing or holds no class folders.
    """
    root = Path(root).expanduser()
    return read_class_folders(source or root.resolve().name, root).rows


def read_class_folders(name: str, root: Path, default_age_group: str = "") -> SourceRead:
    """NORMAL/PNEUMONIA folders, optionally inside train|val|test; pediatric file names
    give the patient, other names make each file its own patient."""
    _check_tree(Path(root).expanduser(), _LABEL_ONLY, _CLASS_FOLDERS_EXPECTED)
    files, top, notes = walk_class_tree(Path(root).expanduser(), _LABEL_ONLY)
    rows = [
        SourceRow(
            str(p),
            LABEL_FOLDERS[key],
            split,
            patient_or_file_id(p, top),
            name,
            age_group=default_age_group,
        )
        for p, key, split in files
    ]
    if not rows:
        raise UserError(f"no image files (.jpeg/.jpg/.png/...) under the class folders of {top}")
    fill_from_dicom(rows, default_age_group)
    return SourceRead(rows, [], "class-folders", notes)
