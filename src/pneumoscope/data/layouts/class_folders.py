"""The class-folders layout: ``NORMAL/`` and ``PNEUMONIA/`` folders, with or without split
folders (``train|val|test/NORMAL|PNEUMONIA``, the Kaggle pediatric layout).

Pediatric file names give the patient; other names make each file its own patient. A
folder whose files nearly all carry the pediatric set's names (Kermany 2018: children aged
1 to 5) is that set: its films are children's unless ``--age-group`` says otherwise.
"""

from __future__ import annotations

from pathlib import Path

from pneumoscope.core.errors import UserError
from pneumoscope.data.layouts.base import (
    LABEL_FOLDERS,
    Layout,
    ReadOptions,
    fill_from_dicom,
    patient_from_name,
    patient_or_file_id,
)
from pneumoscope.data.layouts.tree import check_tree, tree_classes, walk_class_tree
from pneumoscope.data.records import SourceRead, SourceRow

NAME = "class-folders"
_EXPECTED = "NORMAL/ and PNEUMONIA/"
_LABEL_ONLY = {k: k for k in LABEL_FOLDERS}
PEDIATRIC_SHARE = 0.9  # file names of the pediatric set on at least this share of files


def has_pediatric_names(paths: list[str]) -> bool:
    """Whether nearly all files (``PEDIATRIC_SHARE``) carry the pediatric set's names."""
    named = sum(patient_from_name(Path(p).name) is not None for p in paths)
    return bool(paths) and named >= PEDIATRIC_SHARE * len(paths)


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
    if not default_age_group and has_pediatric_names([r.path for r in rows]):
        for r in rows:
            r.age_group = "child"
        notes.append(
            f"age group child: the file names of {name} are the Kermany pediatric set's "
            f"(children aged 1 to 5); --age-group {name}=adult says otherwise"
        )
    fill_from_dicom(rows, default_age_group)
    return SourceRead(rows, [], NAME, notes)


def _detect(path: Path) -> bool:
    """NORMAL/ or PNEUMONIA/ folders (a COVID19 one beside them is the covid layout's,
    which is asked first)."""
    return bool(tree_classes(path) & set(LABEL_FOLDERS))


def _read(name: str, path: Path, options: ReadOptions) -> SourceRead:
    return read_class_folders(name, path, options.default_age_group)


LAYOUT = Layout(NAME, _detect, _read, priority=30)
