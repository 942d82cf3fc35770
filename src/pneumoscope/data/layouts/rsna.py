"""The RSNA Pneumonia Detection Challenge layout (adult chest X-rays as DICOM).

A folder holding ``stage_2_train_labels.csv`` (``patientId,x,y,width,height,Target``;
one line per box, so a patient with two opacities has two lines and is one image),
optionally ``stage_2_detailed_class_info.csv`` (``patientId,class``) and the DICOM
files, ``stage_2_train_images/{patientId}.dcm`` (any sub-folder holding them is found).

Labels: Target 1 ("Lung Opacity") is pneumonia; class "Normal" is normal. The third
class, "No Lung Opacity / Not Normal", is neither a pneumonia nor a normal chest: it is
left out by default (``not_normal="exclude"``) or counted as normal (``"normal"``).
Without the detailed class file every Target 0 image is labelled normal, and a note
says so. Age, sex and view come from each file's DICOM header (pixels are not read).
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pneumoscope.core.errors import ImageReadError, UserError
from pneumoscope.data.dicom import dicom_metadata
from pneumoscope.data.layouts.base import Layout, ReadOptions
from pneumoscope.data.records import MAX_AGE, Excluded, SourceRead, SourceRow, age_group_of

NAME = "rsna"
LABEL_FILES = ("stage_2_train_labels.csv", "stage_1_train_labels.csv")
DETAIL_FILES = ("stage_2_detailed_class_info.csv", "stage_1_detailed_class_info.csv")
IMAGE_DIRS = ("stage_2_train_images", "stage_1_train_images")
CLASS_OPACITY = "lung opacity"
CLASS_NORMAL = "normal"
CLASS_NOT_NORMAL = "no lung opacity / not normal"
_MAX_DEPTH = 3  # how deep below the labels file to look for the .dcm folder


def find_rsna_labels(folder: Path) -> Path | None:
    """The labels CSV of an RSNA folder (also one wrapper folder down), or None."""
    for _ in range(3):
        if not folder.is_dir():
            return None
        for name in LABEL_FILES:
            if (folder / name).is_file():
                return folder / name
        subdirs = [c for c in folder.iterdir() if c.is_dir() and not c.name.startswith((".", "__"))]
        if len(subdirs) != 1 or any(folder.glob("*.csv")):
            return None
        folder = subdirs[0]
    return None


@dataclass
class _Download:
    """What an RSNA folder holds: the labels, the optional classes and the DICOM files."""

    labels_csv: Path
    targets: dict[str, int]  # patientId -> Target, in file order
    classes: dict[str, str] | None  # patientId -> class; None without the detail file
    files: dict[str, Path]  # patientId -> its .dcm file, where found
    image_dir: Path  # where the listed files are (or would be)
    unlisted: int  # .dcm files not in the labels


def read_rsna(
    name: str, root: Path, not_normal: str = "exclude", default_age_group: str = ""
) -> SourceRead:
    """One row per listed patientId (one image), labelled by the rules in the module doc."""
    found, excluded = _scan(Path(root).expanduser(), name)
    rows: list[SourceRow] = []
    counts: Counter[str] = Counter()
    for pid, target in found.targets.items():
        path = found.files.get(pid) or found.image_dir / f"{pid}.dcm"
        label, reason = _label(target, found.classes, pid, not_normal)
        if label is None:
            excluded.append(Excluded(str(path), name, reason))
            continue
        row = SourceRow(str(path), label, "", pid, name, age_group=default_age_group)
        if pid not in found.files:
            counts["missing"] += 1  # stays a row: the decoder reports "file not found"
        else:
            counts[_fill_from_header(row, path, default_age_group)] += 1
        rows.append(row)
    return SourceRead(rows, excluded, NAME, _notes(found, excluded, counts))


def _scan(root: Path, name: str) -> tuple[_Download, list[Excluded]]:
    """The folder's labels, classes and files, and the label lines not understood."""
    if root.is_file() and root.name.lower() in LABEL_FILES:
        root = root.parent  # the labels file given instead of its folder
    labels_csv = find_rsna_labels(root)
    if labels_csv is None:
        raise UserError(
            f"not an RSNA folder: {root} has no {LABEL_FILES[0]} (the RSNA Pneumonia Detection "
            "Challenge download; for a plain listing use --layout csv with a path,label CSV)"
        )
    folder = labels_csv.parent.resolve()
    targets, excluded = _read_targets(labels_csv, name)
    detail_csv = next((folder / n for n in DETAIL_FILES if (folder / n).is_file()), None)
    classes = _read_classes(detail_csv) if detail_csv else None
    files, image_dir, unlisted = _find_dicoms(folder, set(targets))
    return _Download(labels_csv, targets, classes, files, image_dir, unlisted), excluded


def _fill_from_header(row: SourceRow, path: Path, default_age_group: str) -> str:
    """Patient, age, sex and view from the DICOM header; what went wrong ("unreadable",
    "bad_age") or "" when nothing did."""
    try:
        meta = dicom_metadata(path)
    except ImageReadError:
        return "unreadable"  # the decoder gives the reason later
    age, problem = meta["age_years"], ""
    if age is not None and not 0.0 <= age <= MAX_AGE:
        age, problem = None, "bad_age"
    row.patient = meta["patient_id"] or row.patient
    row.age = age
    row.age_group = age_group_of(age, default_age_group)
    row.sex = meta["sex"] or ""
    row.view = meta["view"] or ""
    return problem


def _notes(found: _Download, excluded: list[Excluded], counts: Counter[str]) -> list[str]:
    """What the user should know about this download, in one line each."""
    notes: list[str] = []
    if found.classes is None:
        n0 = sum(1 for t in found.targets.values() if t == 0)
        notes.append(
            f"{DETAIL_FILES[0]} not found beside {found.labels_csv.name}: all {n0} Target-0 "
            "images are labelled NORMAL, including any 'No Lung Opacity / Not Normal' ones (put "
            "the file there to tell them apart)"
        )
    n_not_normal = sum(1 for e in excluded if "Not Normal" in e.reason)
    if n_not_normal:
        notes.append(
            f"{n_not_normal} 'No Lung Opacity / Not Normal' images left out "
            "(--rsna-not-normal normal counts them as NORMAL)"
        )
    if counts["missing"]:
        folder = found.labels_csv.parent.resolve()
        where = found.image_dir if found.files else f"{folder} (no .dcm files found)"
        notes.append(f"{counts['missing']} listed images have no DICOM file in {where}")
    if counts["unreadable"]:
        notes.append(
            f"{counts['unreadable']} DICOM headers unreadable (the decoder gives the reasons)"
        )
    if counts["bad_age"]:
        notes.append(
            f"{counts['bad_age']} implausible DICOM ages (over {MAX_AGE:.0f}) kept as unknown"
        )
    if found.unlisted:
        notes.append(
            f"{found.unlisted} .dcm files not in {found.labels_csv.name} (unlabelled) not read"
        )
    return notes


def _label(
    target: int, classes: dict[str, str] | None, pid: str, not_normal: str
) -> tuple[int | None, str]:
    """(label, "") or (None, why it is left out)."""
    if target == 1:
        return 1, ""
    if classes is None:
        return 0, ""
    cls = classes.get(pid)
    if cls == CLASS_NORMAL:
        return 0, ""
    if cls == CLASS_NOT_NORMAL or cls is None:
        if not_normal == "normal":
            return 0, ""
        if cls is None:
            return None, "Target 0 but not in the detailed class file (Normal or Not Normal?)"
        return None, "No Lung Opacity / Not Normal left out (use --rsna-not-normal normal)"
    if cls == CLASS_OPACITY:
        return None, "Target 0 but class 'Lung Opacity': the two label files disagree"
    return None, f"Target 0 with unknown class {cls!r}"


def _rows_of(path: Path, need: set[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row with lower-cased keys) for each line of a CSV that has the
    columns ``need`` (lower case); UserError naming the columns found otherwise."""
    try:
        f = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    with f:
        reader = csv.DictReader(f)
        header = [(h or "").strip() for h in reader.fieldnames or []]
        fields = [h.lower() for h in header]
        if not need <= set(fields):
            found = ", ".join(h for h in header if h) or "none"
            raise UserError(
                f"{path}: missing column {' and '.join(sorted(need - set(fields)))} "
                f"(found: {found})"
            )
        reader.fieldnames = fields
        for row in reader:
            yield reader.line_num, {k: (v or "").strip() for k, v in row.items() if k}


def _read_targets(path: Path, name: str) -> tuple[dict[str, int], list[Excluded]]:
    """{patientId: 0/1} in file order (a patient is positive if any of its lines is),
    and lines that could not be understood."""
    targets: dict[str, int] = {}
    bad: list[Excluded] = []
    for lineno, row in _rows_of(path, {"patientid", "target"}):
        pid, raw = row.get("patientid", ""), row.get("target", "")
        if not pid:
            bad.append(Excluded(f"{path}:{lineno}", name, f"line {lineno}: empty patientId"))
            continue
        if raw not in ("0", "1", "0.0", "1.0"):
            reason = f"{path.name} line {lineno}: Target {raw!r} is not 0 or 1"
            bad.append(Excluded(f"{path}:{lineno}", name, reason))
            continue
        targets[pid] = max(targets.get(pid, 0), int(float(raw)))
    if not targets and not bad:
        raise UserError(f"{path} lists no images (only a header line)")
    return targets, bad


def _read_classes(path: Path) -> dict[str, str]:
    """{patientId: lower-cased class}; the first line of a patient wins."""
    out: dict[str, str] = {}
    for _, row in _rows_of(path, {"patientid", "class"}):
        pid = row.get("patientid", "")
        if pid and pid not in out:
            out[pid] = " ".join(row.get("class", "").lower().split())
    return out


def _find_dicoms(folder: Path, ids: set[str]) -> tuple[dict[str, Path], Path, int]:
    """{patientId: file} for the listed ids found as ``{id}.dcm`` below ``folder``, the
    folder holding most of them (where missing files are expected), and how many other
    .dcm files were seen (not in the labels, e.g. the unlabelled test set)."""
    found: dict[str, Path] = {}
    per_dir: dict[Path, int] = {}
    unlisted = 0
    preferred = [folder / d for d in IMAGE_DIRS if (folder / d).is_dir()]
    for top in [*preferred, folder]:
        for dirpath, dirnames, filenames in _walk(top, _MAX_DEPTH):
            if top == folder and Path(dirpath) in preferred:
                dirnames.clear()  # already read
                continue
            for fn in filenames:
                stem, ext = os.path.splitext(fn)
                if ext.lower() != ".dcm" or fn.startswith("."):
                    continue
                if stem in ids and stem not in found:
                    found[stem] = Path(dirpath, fn)
                    per_dir[Path(dirpath)] = per_dir.get(Path(dirpath), 0) + 1
                elif stem not in ids:
                    unlisted += 1
    if per_dir:
        image_dir = max(per_dir, key=lambda d: per_dir[d])
    else:
        image_dir = preferred[0] if preferred else folder / IMAGE_DIRS[0]
    return found, image_dir, unlisted


def _walk(top: Path, max_depth: int) -> Iterator[tuple[str, list[str], list[str]]]:
    base = len(top.parts)
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__")))
        if len(Path(dirpath).parts) - base >= max_depth:
            dirnames.clear()
        yield dirpath, dirnames, sorted(filenames)


def _detect(path: Path) -> bool:
    """The labels CSV itself, or a folder holding it (asked first: an RSNA download may
    also hold folders that look like class folders)."""
    if path.is_file():
        return path.name.lower() in LABEL_FILES
    return find_rsna_labels(path) is not None


def _read(name: str, path: Path, options: ReadOptions) -> SourceRead:
    return read_rsna(name, path, options.rsna_not_normal, options.default_age_group)


LAYOUT = Layout(NAME, _detect, _read, priority=10)
