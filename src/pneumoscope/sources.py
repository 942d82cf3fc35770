"""Readers that turn an on-disk layout into manifest rows (one per image file).

Supported here: class folders, with split folders (``train|val|test/NORMAL|PNEUMONIA``,
the Kaggle pediatric layout) or without (``NORMAL|PNEUMONIA`` directly).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

LABEL_FOLDERS = {"normal": 0, "pneumonia": 1}
SPLIT_FOLDERS = {
    "train": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
}

# Patient id from the pediatric set's file names; the prefix keeps IM-P and NORMAL2-IM-P apart.
_PATIENT_PATTERNS = (
    re.compile(r"^(person\d+)_(?:bacteria|virus)_", re.IGNORECASE),
    re.compile(r"^(NORMAL\d*-IM-\d+)-", re.IGNORECASE),
    re.compile(r"^(IM-\d+)-", re.IGNORECASE),
)


@dataclass
class SourceRow:
    path: str
    label: int
    split: str  # "train", "val", "test" or "" when the source has no split folders
    patient: str
    source: str


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
    """
    return patient_from_name(path.name) or str(path.relative_to(root).with_suffix("")).lower()


def _class_dirs(folder: Path) -> dict[int, Path]:
    out: dict[int, Path] = {}
    for child in folder.iterdir():
        if child.is_dir() and child.name.lower() in LABEL_FOLDERS:
            out[LABEL_FOLDERS[child.name.lower()]] = child
    return out


def _split_dirs(folder: Path) -> dict[str, Path]:
    return {
        SPLIT_FOLDERS[c.name.lower()]: c
        for c in folder.iterdir()
        if c.is_dir() and c.name.lower() in SPLIT_FOLDERS
    }


def scan_class_folders(root: str | Path, source: str | None = None) -> list[SourceRow]:
    """Scan a class-folder layout, with or without split folders.

    Raises UserError with what to do when the path is missing or holds no class folders.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise UserError(
            f"source folder not found: {root} (give the folder that holds NORMAL/ "
            "and PNEUMONIA/, or train/ and test/ with those inside)"
        )
    if not root.is_dir():
        raise UserError(f"source is not a folder: {root}")
    root = root.resolve()  # the manifest stores absolute paths: valid from any working folder
    source = source or root.name
    # Accept the Kaggle zip's extra nesting (chest_xray/chest_xray/...) by descending
    # through single sub-folders that hold no images of their own.
    root = _descend_single(root)
    splits = _split_dirs(root)
    rows: list[SourceRow] = []
    if splits:
        for split, sdir in sorted(splits.items()):
            classes = _class_dirs(sdir)
            for label, cdir in sorted(classes.items()):
                rows += _rows_in(cdir, label, split, source, root)
        if not any(_class_dirs(d) for d in splits.values()):
            raise UserError(
                f"no class folders in the split folders of {root}: expected "
                f"{'/'.join(sorted(splits))}/NORMAL and .../PNEUMONIA"
            )
    else:
        classes = _class_dirs(root)
        if not classes:
            raise UserError(
                f"no class folders in {root}: expected NORMAL/ and PNEUMONIA/ (or train/ and "
                "test/ holding them); found " + _describe(root)
            )
        for label, cdir in sorted(classes.items()):
            rows += _rows_in(cdir, label, "", source, root)
    if not rows:
        raise UserError(f"no image files (.jpeg/.jpg/.png/...) under the class folders of {root}")
    return rows


def _descend_single(root: Path) -> Path:
    for _ in range(3):
        if _split_dirs(root) or _class_dirs(root):
            return root
        subdirs = [c for c in root.iterdir() if c.is_dir() and not c.name.startswith((".", "__"))]
        if len(subdirs) != 1:
            return root
        root = subdirs[0]
    return root


def _describe(folder: Path) -> str:
    names = sorted(c.name + ("/" if c.is_dir() else "") for c in folder.iterdir())
    if not names:
        return "an empty folder"
    shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
    return shown


def _rows_in(cdir: Path, label: int, split: str, source: str, root: Path) -> list[SourceRow]:
    # Every visible file is offered to the decoder, whatever its extension: a stray
    # non-image then shows up in rejected.csv with its reason instead of vanishing.
    files = sorted(p for p in cdir.rglob("*") if p.is_file() and not is_hidden(p, cdir))
    return [SourceRow(str(p), label, split, patient_or_file_id(p, root), source) for p in files]


def is_hidden(path: Path, below: Path) -> bool:
    """Dot files and macOS zip debris (``__MACOSX``, ``._name``) are not data."""
    return any(part.startswith((".", "__MACOSX")) for part in path.relative_to(below).parts)
