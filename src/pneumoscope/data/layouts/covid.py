"""The "Chest X-Ray Covid-19 & Pneumonia" layout: ``[Data/]train|test/COVID19|NORMAL|PNEUMONIA``.

Its NORMAL and PNEUMONIA folders are the pediatric set renamed and re-split (see the
data README), so they are children; its COVID19 folder holds adults. COVID-19 is not
the bacterial/viral pneumonia the other sources label, so it is left out unless asked
for (``covid_as="pneumonia"``); left-out files are listed, never dropped silently.
File names (``NORMAL(12).jpg``) carry no patient, so each file is its own patient.
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
from pneumoscope.data.layouts.tree import TREE_CLASSES, check_tree, tree_classes, walk_class_tree
from pneumoscope.data.records import Excluded, SourceRead, SourceRow

NAME = "covid19-pneumonia"
COVID_EXCLUDED = "COVID19 left out (use --covid-as pneumonia to include)"
_EXPECTED = "COVID19/, NORMAL/ and PNEUMONIA/ (inside Data/train/ and Data/test/)"


def read_covid(
    name: str, root: Path, covid_as: str = "exclude", default_age_group: str = ""
) -> SourceRead:
    """Rows for NORMAL/PNEUMONIA (children unless told otherwise) and, with
    ``covid_as="pneumonia"``, COVID19 (adults, label 1); else COVID19 files are Excluded."""
    root = Path(root).expanduser()
    check_tree(root, TREE_CLASSES, _EXPECTED)
    files, top, notes = walk_class_tree(root, TREE_CLASSES)
    rows: list[SourceRow] = []
    excluded: list[Excluded] = []
    for path, key, split in files:
        patient = patient_or_file_id(path, top)
        if key == "covid19":
            if covid_as == "pneumonia":
                rows.append(SourceRow(str(path), 1, split, patient, name, age_group="adult"))
            else:
                excluded.append(Excluded(str(path), name, COVID_EXCLUDED))
            continue
        group = default_age_group or "child"
        rows.append(SourceRow(str(path), LABEL_FOLDERS[key], split, patient, name, group))
    if not rows and not excluded:
        raise UserError(f"no image files (.jpeg/.jpg/.png/...) under the class folders of {top}")
    fill_from_dicom(rows, default_age_group)
    if excluded:
        notes.append(
            f"{len(excluded)} COVID19 images left out (--covid-as pneumonia includes them)"
        )
    return SourceRead(rows, excluded, NAME, notes)


def _detect(path: Path) -> bool:
    """A COVID19 class folder in the tree (with or without NORMAL/PNEUMONIA beside it)."""
    return "covid19" in tree_classes(path)


def _read(name: str, path: Path, options: ReadOptions) -> SourceRead:
    return read_covid(name, path, options.covid_as, options.default_age_group)


LAYOUT = Layout(NAME, _detect, _read, priority=20)
