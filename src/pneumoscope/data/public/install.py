"""Putting a downloaded file in place as a folder ``data prepare`` reads, atomically.

The folder is built beside its final place (``.NAME.unpacking``), checked, given its
marker (``pneumoscope-dataset.json``: which set, its licence, citation and the file's MD5)
and only then renamed into place: a folder under its final name is always complete, and
an interrupted unpack leaves nothing that looks usable. A zip is unpacked (zipfile checks
every member's CRC-32 as it goes, and keeps member names inside the folder); a MedMNIST
``.npz`` is linked (or copied) in as it is.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pneumoscope.core.errors import UserError
from pneumoscope.core.io import write_json_atomic
from pneumoscope.data.public.catalog import MARKER, PublicSet, read_marker

NPZ_KEYS = tuple(f"{s}_{k}" for s in ("train", "val", "test") for k in ("images", "labels"))
_JUNK = ("__MACOSX/", ".DS_Store")


def existing(dest: Path, ps: PublicSet, variant: str) -> bool:
    """True when ``dest`` already holds this set (a finished earlier download)."""
    marker = read_marker(dest)
    return bool(marker) and marker.get("dataset") == ps.name and marker.get("variant") == variant


def check_free(dest: Path) -> None:
    """``dest`` must be new or an empty folder: nothing of the user's is overwritten."""
    if not dest.exists():
        return
    if not dest.is_dir():
        raise UserError(f"--out {dest} exists and is not a folder: give a new folder")
    if any(dest.iterdir()):
        marker = read_marker(dest) or {}
        held = f"already holds {marker['dataset']}" if marker.get("dataset") else "is not empty"
        raise UserError(f"{dest} {held}: give a new or empty folder (--out), or remove it")


def into_place(dest: Path, build: Callable[[Path], None], marker: dict) -> None:
    """Run ``build(tmp)`` on a fresh folder beside ``dest``, add the marker, rename."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.unpacking"
    shutil.rmtree(tmp, ignore_errors=True)  # what a killed earlier run left
    tmp.mkdir()
    try:
        build(tmp)
        write_json_atomic(tmp / MARKER, marker)
        if dest.is_dir():
            dest.rmdir()  # empty (check_free)
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def unpack_zip(archive: Path, folder: Path, progress: bool = True) -> None:
    """Every member of ``archive`` (but macOS debris) into ``folder``; a damaged archive
    is one UserError line."""
    from rich.console import Console
    from rich.progress import Progress

    bar = Progress(console=Console(stderr=True), disable=not progress)
    try:
        with zipfile.ZipFile(archive) as zf, bar:
            members = [m for m in zf.infolist() if not any(j in m.filename for j in _JUNK)]
            for m in bar.track(members, description=f"unpacking {archive.name}"):
                zf.extract(m, folder)
    except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile) as exc:
        raise UserError(
            f"{archive} is not a complete, undamaged zip archive ({exc}): delete it and "
            "download it again"
        ) from None
    except OSError as exc:  # a full disk, a read-only folder
        raise UserError(f"cannot unpack {archive} into {folder}: {exc.strerror or exc}") from None


def link_or_copy(src: Path, dest: Path) -> None:
    """A hard link when both sit on one file system (no second copy), else a copy."""
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)


def npz_problem(path: Path) -> str:
    """Why ``path`` is not a MedMNIST .npz file, or "" when it is one."""
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        return f"not a readable .npz file ({' '.join(str(exc).split())})"
    missing = [k for k in NPZ_KEYS if k not in keys]
    return f"not a MedMNIST file (it lacks {', '.join(missing)})" if missing else ""


def content_problem(ps: PublicSet, folder: Path) -> str:
    """Why the unpacked ``folder`` is not ``ps`` as `data prepare` reads it, or ""."""
    if ps.kind == "npz":
        files = sorted(folder.glob("*.npz"))
        return npz_problem(files[0]) if files else "no .npz file"
    if ps.name == "rsna":
        labels = [
            *folder.glob("stage_*_train_labels.csv"),
            *folder.glob("*/stage_*_train_labels.csv"),
        ]
        if not labels:
            return "no stage_2_train_labels.csv in it (is it the competition's zip?)"
        return ""
    names = {p.name.lower() for p in _dirs_below(folder, 4)}
    if not {"normal", "pneumonia"} <= names:
        return "no NORMAL/ and PNEUMONIA/ folders in it"
    return ""


def _dirs_below(folder: Path, depth: int) -> list[Path]:
    """Sub-folders of ``folder`` down to ``depth`` levels."""
    level, found = [folder], []
    for _ in range(depth):
        level = [c for d in level for c in d.iterdir() if c.is_dir()]
        found += level
    return found
