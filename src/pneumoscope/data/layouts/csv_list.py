"""A CSV listing: ``path,label[,patient_id,age,sex,view,split]``, one image per line.

Headers are matched case-insensitively with common variants (``patient``,
``patient_id``, ``PatientID``; ``sex``/``gender``; ...). Labels are 0/1 or the class
names NORMAL/PNEUMONIA; a COVID-19 label (``COVID-19``, ``COVID19``, ``covid``, ...) follows
``covid_as`` (``data prepare --covid-as``): left out by default, read as PNEUMONIA with
``"pneumonia"``. Relative paths are relative to the CSV's own folder.

Nothing listed disappears: a line with an empty path, an unknown label or an unknown
split becomes an :class:`~pneumoscope.data.records.Excluded` naming its line; a path that
does not exist stays a row, and the decoder later lists it as "file not found".
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from pneumoscope.core.errors import UserError
from pneumoscope.data.dicom import parse_age
from pneumoscope.data.layouts.base import (
    SPLIT_FOLDERS,
    Layout,
    ReadOptions,
    fill_from_dicom,
    patient_or_file_id,
)
from pneumoscope.data.records import MAX_AGE, Excluded, SourceRead, SourceRow, age_group_of

NAME = "csv"

# canonical column -> accepted header spellings (after lower-casing, spaces/dashes -> "_")
COLUMNS = {
    "path": ("path", "file", "filename", "file_name", "filepath", "file_path", "image",
             "image_path", "img", "img_path"),
    "label": ("label", "class", "class_name", "target", "y", "diagnosis"),
    "patient": ("patient_id", "patient", "patientid", "subject", "subject_id"),
    "age": ("age", "patient_age", "age_years"),
    "age_group": ("age_group", "agegroup"),
    "sex": ("sex", "gender", "patient_sex"),
    "view": ("view", "view_position", "viewposition", "projection"),
    "split": ("split", "subset", "fold_name"),
}  # fmt: skip
REQUIRED = ("path", "label")
LABEL_TEXT = {"0": 0, "1": 1, "normal": 0, "pneumonia": 1, "0.0": 0, "1.0": 1}
SEX_TEXT = {"m": "M", "male": "M", "f": "F", "female": "F"}
GROUP_TEXT = {"child": "child", "pediatric": "child", "paediatric": "child", "adult": "adult"}
# COVID-19 labels (lower-cased): --covid-as decides, as for the Covid-19 & Pneumonia layout
COVID_TEXT = frozenset({"covid-19", "covid19", "covid_19", "covid 19", "covid"})
COVID_EXCLUDED = "COVID-19 left out (use --covid-as pneumonia to include)"  # ends each reason


def read_csv_source(
    name: str, path: Path, default_age_group: str = "", covid_as: str = "exclude"
) -> SourceRead:
    """Rows from a CSV file (or from the single .csv file in a folder). ``covid_as``:
    ``"exclude"`` (COVID-19 lines become exclusions) or ``"pneumonia"`` (label 1)."""
    csv_path = _csv_file(Path(path).expanduser())
    text = _read_text(csv_path)
    first = text.lstrip("\r\n").split("\n", 1)[0]
    if not first.strip():
        raise UserError(f"{csv_path} is empty: expected a header line path,label[,patient_id,...]")
    reader = csv.reader(io.StringIO(text, newline=""), dialect=_dialect(first))
    header = next((r for r in reader if any(c.strip() for c in r)), [])
    columns = _map_columns(header, csv_path)
    base = csv_path.parent.resolve()  # relative paths start here
    listing = _Listing(name, csv_path, base, columns, default_age_group, covid_as)
    rows: list[SourceRow] = []
    excluded: list[Excluded] = []
    bad_ages = 0
    for cells in reader:
        if not any(c.strip() for c in cells):
            continue  # a blank line lists no file
        # reader.line_num: the file's own line number, as a spreadsheet shows it
        got = listing.line(cells, reader.line_num)
        if isinstance(got, Excluded):
            excluded.append(got)
            continue
        rows.append(got)
        bad_ages += bool(listing.cell(cells, "age")) and got.age is None
    if not rows and not excluded:
        raise UserError(f"{csv_path} lists no images (only a header line)")
    fill_from_dicom(rows, default_age_group)
    notes = []
    if bad_ages:
        notes.append(f"{csv_path.name}: {bad_ages} ages not understood (kept as unknown)")
    if excluded:
        notes.append(f"{csv_path.name}: {len(excluded)} lines left out (see the excluded list)")
    n_covid = sum(e.reason.endswith(COVID_EXCLUDED) for e in excluded)
    if n_covid:
        notes.append(
            f"{csv_path.name}: {n_covid} COVID-19 lines left out (--covid-as pneumonia "
            "includes them)"
        )
    return SourceRead(rows, excluded, NAME, notes)


@dataclass(frozen=True)
class _Listing:
    """One CSV listing being read: turns each line into a row or an exclusion."""

    name: str  # the source name
    csv_path: Path
    base: Path  # the CSV's folder: relative paths start there
    columns: dict[str, int]  # canonical column -> index
    default_age_group: str
    covid_as: str = "exclude"

    def cell(self, cells: list[str], key: str) -> str:
        i = self.columns.get(key)
        return cells[i].strip() if i is not None and i < len(cells) else ""

    def line(self, cells: list[str], lineno: int) -> SourceRow | Excluded:
        """The row of one line, or an Excluded naming the line and what is wrong with it."""
        name, cell = self.name, partial(self.cell, cells)
        raw_path = cell("path")
        if not raw_path:
            return Excluded(f"{self.csv_path}:{lineno}", name, f"line {lineno}: empty path")
        file = _resolve(raw_path, self.base)
        raw_label = cell("label")
        label = LABEL_TEXT.get(raw_label.lower())
        if raw_label.lower() in COVID_TEXT:
            if self.covid_as != "pneumonia":
                reason = f"line {lineno}: label {raw_label!r}: {COVID_EXCLUDED}"
                return Excluded(str(file), name, reason)
            label = 1
        if label is None:
            reason = f"line {lineno}: label {raw_label!r} is not 0/1, NORMAL/PNEUMONIA or COVID-19"
            return Excluded(str(file), name, reason)
        raw_split = cell("split")
        split = SPLIT_FOLDERS.get(raw_split.lower(), None) if raw_split else ""
        if split is None:
            reason = f"line {lineno}: split {raw_split!r} is not train/val/test (or empty)"
            return Excluded(str(file), name, reason)
        age = _age(cell("age"))
        group = GROUP_TEXT.get(cell("age_group").lower(), "")
        return SourceRow(
            str(file),
            label,
            split,
            cell("patient") or patient_or_file_id(file, self.base),
            name,
            age_group=age_group_of(age, group or self.default_age_group),
            age=age,
            sex=SEX_TEXT.get(cell("sex").lower(), ""),
            view=cell("view").upper(),
        )


def _read_text(csv_path: Path) -> str:
    """The file's text: UTF-8 (with or without a BOM), else Latin-1 (older spreadsheets)."""
    try:
        return csv_path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        return csv_path.read_text(encoding="latin-1")
    except OSError as exc:
        raise UserError(f"cannot read {csv_path}: {exc.strerror or exc}") from None


def _csv_file(path: Path) -> Path:
    if path.is_file():
        return path
    if path.is_dir():
        found = sorted(p for p in path.glob("*.csv") if p.is_file())
        if len(found) == 1:
            return found[0]
        what = ", ".join(p.name for p in found) if found else "no .csv file"
        raise UserError(f"--layout csv needs one CSV file: {path} holds {what}; give the file")
    raise UserError(f"CSV not found: {path}")


def _dialect(header: str) -> type[csv.Dialect]:
    """Comma by default; a header with more semicolons or tabs than commas (spreadsheet
    exports in many locales) is read with that separator."""
    delimiter = max(",;\t", key=lambda d: (header.count(d), d == ","))

    class Listing(csv.excel):
        pass

    Listing.delimiter = delimiter
    return Listing


def _norm(header: str) -> str:
    return header.strip().lower().replace(" ", "_").replace("-", "_")


def _map_columns(header: list[str], csv_path: Path) -> dict[str, int]:
    found = [_norm(h) for h in header]
    columns: dict[str, int] = {}
    for key, names in COLUMNS.items():
        for i, h in enumerate(found):
            if h in names:
                columns[key] = i
                break
    missing = [k for k in REQUIRED if k not in columns]
    if missing:
        shown = ", ".join(h.strip() for h in header if h.strip()) or "none"
        raise UserError(
            f"{csv_path}: missing column {' and '.join(repr(m) for m in missing)} "
            f"(found: {shown}); "
            "expected a header path,label[,patient_id,age,sex,view,split]"
        )
    return columns


def _resolve(raw: str, base: Path) -> Path:
    if os.sep == "/" and "\\" in raw and not (base / raw).exists():
        raw = raw.replace("\\", "/")  # a listing written on Windows
    p = Path(raw).expanduser()
    return (p if p.is_absolute() else base / p).resolve()


def _age(text: str) -> float | None:
    """Years from ``7``, ``4.5`` or a DICOM age string (``058Y``, ``018M``); None when
    missing or implausible."""
    if not text:
        return None
    age = parse_age(text)
    if age is None:
        try:
            age = float(text)
        except ValueError:
            return None
    return age if 0.0 <= age <= MAX_AGE else None


def _detect(path: Path) -> bool:
    """A .csv file; a folder holding one is not detected (it may hold other things), but
    ``--layout csv`` reads it."""
    return path.is_file() and path.suffix.lower() == ".csv"


def _read(name: str, path: Path, options: ReadOptions) -> SourceRead:
    return read_csv_source(name, path, options.default_age_group, options.covid_as)


LAYOUT = Layout(NAME, _detect, _read, priority=40)
