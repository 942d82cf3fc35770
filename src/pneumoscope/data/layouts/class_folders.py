"""The class-folders layout: ``NORMAL/`` and ``PNEUMONIA/`` folders, with or without split
folders (``train|val|test/NORMAL|PNEUMONIA``, the Kaggle pediatric layout).

Pediatric file names give the patient; other names make each file its own patient.
"""

from __future__ import annotations

from pathlib import Path

from pneumoscope.core.errors import UserError
from pneumoscope.data.layouts.base import (
    LABEL_FOLDERS,
    Layout,
    ReadOptions,
    fill_from_dicom,
    patient_or_file_id,
)
from pneumoscope.data.layouts.tree import check_tree, tree_classes, walk_class_tree
from pneumoscope.data.records import SourceRead, SourceRow

NAME = "class-folders"
_EXPECTED = "NORMAL/ and PNEUMONIA/"
_LABEL_ONLY = {k: k for k in LABEL_FOLDERS}


def read_class_folders(name: str, root: Path, default_age_group: str = "") -> SourceRead:
    """NORMAL/PNEUMONIA folders, optionally inside train|val|test; pediatric file names
    give the patient, other names make each file its own patient."""
    check_tree(Path(root).expanduser(), _LABEL_ONLY, _EXPECTED)
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
    return SourceRead(rows, [], NAME, notes)


def _detect(path: Path) -> bool:
    """NORMAL/ or PNEUMONIA/ folders (a COVID19 one beside them is the covid layout's,
    which is asked first)."""
    return bool(tree_classes(path) & set(LABEL_FOLDERS))


def _read(name: str, path: Path, options: ReadOptions) -> SourceRead:
    return read_class_folders(name, path, options.default_age_group)


LAYOUT = Layout(NAME, _detect, _read, priority=30)
