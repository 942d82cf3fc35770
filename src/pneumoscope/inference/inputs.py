"""What `predict`, `explain` and the Python API take as inputs: files, folders scanned by
content (a PACS export without extensions), a DICOMDIR and the files it indexes, glob
patterns and CSV lists; every input named gets a row, and the files a folder scan finds
to be no image are listed (OUT.skipped.txt), never dropped silently."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from pneumoscope.core.errors import ImageReadError, UserError
from pneumoscope.core.io import write_text_atomic
from pneumoscope.data.dicom import dicomdir_references, is_dicom, is_dicomdir
from pneumoscope.data.layouts.base import is_hidden
from pneumoscope.data.preprocess import is_image_file, sniff_image


def _paths_from_csv(csv_path: Path) -> list[str]:
    """A CSV listing inputs: column ``path`` (else the first column), relative to the CSV."""
    try:
        df = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise UserError(f"cannot read the input list {csv_path}: {exc}") from None
    if df.empty:
        raise UserError(f"the input list {csv_path} has no rows")
    col = "path" if "path" in df.columns else df.columns[0]
    base = csv_path.parent
    return [str(p if Path(p).is_absolute() else base / p) for p in df[col] if p.strip()]


@dataclass
class Inputs:
    """What the inputs name: ``paths`` that each get a row, the files folder scans left
    out as no image (``not_images``), and ``notes`` (e.g. an unreadable DICOMDIR)."""

    paths: list[str] = field(default_factory=list)
    not_images: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    _indexed: set[str] = field(default_factory=set, repr=False)  # found by scan or index

    def add_found(self, path: str | Path) -> None:
        """A file a folder scan or a DICOMDIR found: once, however it was found."""
        key = os.path.realpath(path)
        if key not in self._indexed:
            self._indexed.add(key)
            self.paths.append(str(path))

    def add_index(self, dicomdir: Path) -> None:
        """The files a DICOMDIR names (a missing one too: its row says it is missing)."""
        try:
            refs = dicomdir_references(dicomdir)
        except ImageReadError as exc:
            self.notes.append(f"cannot read the index {dicomdir}: {exc}")
            return
        for ref in refs:
            self.add_found(ref)


def is_input_file(path: Path) -> bool:
    """Whether a folder scan offers the file to the decoder: an image by name, or by
    content (PNG, JPEG, TIFF, BMP or DICOM, whatever the name)."""
    if is_image_file(path):
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return True  # unreadable: its row says why
    return sniff_image(head) is not None or is_dicom(path)


def _scan_folder(folder: Path, found: Inputs) -> None:
    files = sorted(f for f in folder.rglob("*") if f.is_file() and not is_hidden(f, folder))
    offered = {f: is_input_file(f) for f in files}
    inputs = [f for f in files if offered[f]]
    others = [str(f) for f in files if not offered[f]]
    if not inputs:
        listing = f" (only files that are not images: {_listing(others)})" if others else ""
        raise UserError(f"no image files (JPEG, PNG, DICOM, ...) in folder {folder}{listing}")
    found.not_images += others
    for f in inputs:
        found.add_found(f)
    for f in inputs:  # what the scan found keeps its order; what only an index names follows
        if f.suffix.lower() not in (".jpg", ".jpeg", ".png") and is_dicomdir(f):
            found.add_index(f)


def _listing(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(Path(n).name for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def scan_inputs(inputs: Iterable[str]) -> Inputs:
    """Files as given (a DICOMDIR also brings the files it indexes); folders scanned
    recursively by content; globs expanded; a .csv file is a list of inputs. A name that
    is neither an existing path nor a matching glob is kept, so it gets an error row
    ("file not found") rather than vanishing silently."""
    found = Inputs()
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            _scan_folder(p, found)
        elif p.is_file() and p.suffix.lower() == ".csv":
            found.paths += _paths_from_csv(p)
        elif p.is_file() and is_dicomdir(p):
            found.paths.append(str(p))
            found.add_index(p)
        elif p.exists():
            found.paths.append(str(p))
        elif glob.has_magic(item):
            matches = sorted(
                m for m in glob.glob(os.path.expanduser(item), recursive=True) if Path(m).is_file()
            )
            if not matches:
                raise UserError(f"the pattern {item} matches no files")
            found.paths += matches
        else:
            found.paths.append(str(p))
    return found


def expand_inputs(inputs: list[str]) -> list[str]:
    """The paths of :func:`scan_inputs`: one row each."""
    return scan_inputs(inputs).paths


def skipped_list_path(out_csv: str | Path) -> Path:
    """Where `predict` lists the files its folder scans left out: OUT.skipped.txt."""
    out_csv = Path(out_csv)
    return out_csv.with_name(f"{out_csv.stem}.skipped.txt")


def write_skipped_list(found: Inputs, target: Path) -> Path | None:
    """List the files left out (one path a line), or remove a stale list; its path or None."""
    if not found.not_images:
        target.unlink(missing_ok=True)
        return None
    write_text_atomic(target, "".join(f"{p}\n" for p in found.not_images))
    return target


