"""The MedMNIST layout: PneumoniaMNIST's ``.npz`` file (``pneumoniamnist[_SIZE].npz``), or a
folder holding it (what ``pneumoscope data download pneumoniamnist`` leaves).

The file holds ``{train,val,test}_images`` (N x H x W, uint8) and ``{train,val,test}_labels``
(N x 1: 0 normal, 1 pneumonia): MedMNIST's official splits, kept as the rows' splits. The
decoder reads image files, so the images are written once, losslessly, as PNG into the
cache (``CACHE/medmnist/<file stem>-<MD5 prefix>/<split>/<CLASS>/<split>_<index>.png``; the
cache is ``data.public.catalog.cache_root``), atomically, and reused while the file is
unchanged. MedMNIST gives no patient ids: each image is its own patient, so images are
grouped by duplicates only (a note says so). Only PneumoniaMNIST is read: the labels of the
other MedMNIST sets mean other things. The images are the pediatric set's: children.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import numpy as np

from pneumoscope.core import CLASS_NAMES
from pneumoscope.core.errors import UserError
from pneumoscope.data.layouts.base import Layout, ReadOptions
from pneumoscope.data.public.catalog import cache_root, pneumoniamnist_size_of
from pneumoscope.data.public.fetch import md5_of
from pneumoscope.data.public.install import npz_problem
from pneumoscope.data.records import SourceRead, SourceRow

NAME = "medmnist"
SPLITS = ("train", "val", "test")
NOTE = (
    "MedMNIST gives no patient ids: each image is its own patient, so images are grouped "
    "by duplicates only"
)


def read_medmnist(name: str, path: Path, default_age_group: str = "") -> SourceRead:
    """Rows for every image of a PneumoniaMNIST file (or the folder holding it)."""
    npz = _the_file(Path(path).expanduser())
    md5 = md5_of(npz)
    if not npz.name.lower().startswith("pneumoniamnist") and not pneumoniamnist_size_of(md5):
        raise UserError(
            f"{npz} is a MedMNIST file but not PneumoniaMNIST (its labels mean something "
            "else): give pneumoniamnist[_SIZE].npz"
        )
    folder = _images_folder(npz, md5)
    rows = []
    for split in SPLITS:
        for label, cls in enumerate(CLASS_NAMES):
            for png in sorted((folder / split / cls).glob("*.png")):
                group = default_age_group or "child"
                rows.append(SourceRow(str(png), label, split, png.stem, name, age_group=group))
    return SourceRead(rows, [], NAME, [NOTE])


def _the_file(path: Path) -> Path:
    """The one MedMNIST file at ``path`` (the file, or the only one in the folder)."""
    if path.is_file():
        problem = npz_problem(path)
        if problem:
            raise UserError(f"{path}: {problem}")
        return path
    found = _medmnist_files(path)
    if len(found) != 1:
        names = ", ".join(p.name for p in found) or "none"
        raise UserError(
            f"{path} must hold one MedMNIST .npz file, found {names}: give the file itself "
            f"(--source {path / (found[0].name if found else 'pneumoniamnist_64.npz')})"
        )
    return found[0]


def _medmnist_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return [p for p in sorted(folder.glob("*.npz")) if p.is_file() and not npz_problem(p)]


def _images_folder(npz: Path, md5: str) -> Path:
    """The PNG tree of ``npz`` in the cache, written (atomically) the first time."""
    folder = cache_root() / "medmnist" / f"{npz.stem}-{md5[:12]}"
    if folder.is_dir():
        return folder
    tmp = folder.parent / f".{folder.name}.writing"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with np.load(npz, allow_pickle=False) as z:
            for split in SPLITS:
                _write_split(z[f"{split}_images"], z[f"{split}_labels"], tmp / split, npz)
        os.rename(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _write_split(images: np.ndarray, labels: np.ndarray, out: Path, npz: Path) -> None:
    """One split's images as PNG under ``out/NORMAL`` and ``out/PNEUMONIA``."""
    labels = labels.reshape(len(labels), -1)
    gray = images.ndim == 3 or (images.ndim == 4 and images.shape[-1] in (1, 3))
    if labels.shape[1] != 1 or not set(np.unique(labels).tolist()) <= {0, 1}:
        raise UserError(f"{npz}: {out.name}_labels are not binary 0/1 (not PneumoniaMNIST?)")
    if images.dtype != np.uint8 or not gray or len(images) != len(labels):
        raise UserError(
            f"{npz}: {out.name}_images must be {len(labels)} uint8 images (N x H x W), found "
            f"{images.dtype} {tuple(images.shape)}"
        )
    for cls in CLASS_NAMES:
        (out / cls).mkdir(parents=True, exist_ok=True)
    for i, (img, y) in enumerate(zip(images, labels[:, 0], strict=True)):
        if img.ndim == 3:
            img = img[..., 0] if img.shape[-1] == 1 else cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
        png = out / CLASS_NAMES[int(y)] / f"{out.name}_{i:05d}.png"
        if not cv2.imwrite(str(png), img):
            raise UserError(f"cannot write {png} (is the cache folder writable?)")


def _detect(path: Path) -> bool:
    """A MedMNIST .npz file, or a folder holding some."""
    if path.is_file():
        return path.suffix.lower() == ".npz" and not npz_problem(path)
    return bool(_medmnist_files(path))


def _read(name: str, path: Path, options: ReadOptions) -> SourceRead:
    return read_medmnist(name, path, options.default_age_group)


LAYOUT = Layout(NAME, _detect, _read, priority=50)
