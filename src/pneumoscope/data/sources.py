"""Dataset sources: ``NAME=PATH`` specs, layout detection and reading, through the layout
registry (``pneumoscope.data.layouts``, one module per layout).

Layouts (``read_source(..., layout=...)``; ``"auto"`` detects them):

- ``class-folders``: ``NORMAL|PNEUMONIA`` folders, with or without split folders
  (``train|val|test/NORMAL|PNEUMONIA``, the Kaggle pediatric layout); ``layouts.class_folders``.
- ``covid19-pneumonia``: ``[Data/]train|test/COVID19|NORMAL|PNEUMONIA``; ``layouts.covid``.
- ``csv``: a CSV of ``path,label[,patient_id,age,sex,view,split]``; ``layouts.csv_list``.
- ``rsna``: RSNA Pneumonia Detection Challenge (labels CSV + DICOM); ``layouts.rsna``.

A reader never drops a file silently: a file left out on purpose (a label policy, an
unparseable CSV line) is an :class:`Excluded` with its reason, and a file that is listed
but unreadable or missing stays a row, for the decoder to reject with its reason.
"""

from __future__ import annotations

import re
from pathlib import Path

from pneumoscope.core.errors import UserError
from pneumoscope.data.layouts import get_layout, layout_names, layouts_in_detection_order
from pneumoscope.data.layouts.base import ReadOptions, describe
from pneumoscope.data.layouts.tree import subdirs
from pneumoscope.data.records import AGE_GROUPS, SourceRead

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def layout_choices() -> tuple[str, ...]:
    """``auto`` and every registered layout name: the values ``--layout`` accepts."""
    return ("auto", *layout_names())


# The choices at import (the built-in layouts); layout_choices() also sees later registrations.
LAYOUTS = layout_choices()


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
    """The layout of ``path``, or a UserError saying what was found and how to choose.

    The layouts are asked in their detection order; a folder none of them recognises is
    searched one level down, to name the sources it holds in the error.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"source not found: {path}")
    found = _detected(path)
    if found:
        return found
    choices = "|".join(layout_names())
    if not path.is_dir():
        raise UserError(
            f"source {path} is a file but not a .csv or .npz: give a folder of images, a CSV "
            f"of path,label, a MedMNIST .npz or an RSNA folder (choose with --layout {choices})"
        )
    below = {child.name: k for child in subdirs(path) if (k := _detected(child))}
    if len(below) > 1:
        listed = ", ".join(f"{n}/ ({k})" for n, k in sorted(below.items()))
        raise UserError(
            f"{path} holds several sources: {listed}; give each as its own --source "
            f"NAME=PATH, or pick one folder (and --layout {choices})"
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
        f"or choose with --layout {choices}"
    )


def _detected(path: Path) -> str | None:
    """The name of the first layout, in detection order, that recognises ``path``."""
    return next((lay.name for lay in layouts_in_detection_order() if lay.detect(path)), None)


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
    choices = layout_choices()
    if layout not in choices:
        raise UserError(f"unknown --layout {layout!r}: choose one of {', '.join(choices)}")
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
    options = ReadOptions(covid_as, rsna_not_normal, default_age_group)
    read = get_layout(layout).read(name, path, options)
    read.layout = layout
    return read
