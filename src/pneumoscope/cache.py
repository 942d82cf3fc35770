"""The dataset cache: every image decoded and preprocessed once, stored as one uint8 array.

Layout of a cache directory:
    images.npy    (N, S, S) uint8, memory-mapped by training and evaluation
    manifest.csv  one row per cached image: index, path, label, class_name, patient, split, source
    rejected.csv  every file that could not be read, with its reason
    cache.json    preprocessing parameters, counts and how the splits were made
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import CLASS_NAMES, __version__
from .errors import UserError
from .io_utils import atomic_write, write_json_atomic
from .preprocess import PreprocessConfig, try_load_image
from .sources import SourceRow

MANIFEST_COLUMNS = ["index", "path", "label", "class_name", "patient", "split", "source"]


@dataclass
class PrepareResult:
    manifest: pd.DataFrame
    rejected: pd.DataFrame
    split_note: str


def _work(args: tuple[int, str, PreprocessConfig]) -> tuple[int, np.ndarray | None, str]:
    i, path, cfg = args
    return (i, *try_load_image(path, cfg))


def preprocess_many(
    paths: list[str], cfg: PreprocessConfig, workers: int, chunksize: int = 32
) -> Iterator[tuple[int, np.ndarray | None, str]]:
    """Yield (index, image or None, error) for each path, in input order, using ``workers``."""
    jobs = ((i, p, cfg) for i, p in enumerate(paths))
    if workers <= 1:
        yield from map(_work, jobs)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(_work, jobs, chunksize=chunksize)


def build_cache(
    rows: list[SourceRow],
    out: str | Path,
    cfg: PreprocessConfig,
    split_note: str,
    workers: int | None = None,
    progress: bool = True,
) -> PrepareResult:
    """Decode, preprocess and store every row; unreadable files go to rejected.csv."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    workers = workers or (os.cpu_count() or 1)
    n, s = len(rows), cfg.img_size
    tmp_path = out / ".images.partial.npy"
    arr = np.lib.format.open_memmap(tmp_path, mode="w+", dtype=np.uint8, shape=(n, s, s))
    ok = np.zeros(n, dtype=bool)
    reasons: dict[int, str] = {}
    results = preprocess_many([r.path for r in rows], cfg, workers)
    for i, img, err in _with_progress(results, n, progress, "preprocessing"):
        if img is None:
            reasons[i] = err
        else:
            arr[i] = img
            ok[i] = True
    arr.flush()
    good = np.flatnonzero(ok)
    if len(good) == 0:
        del arr
        tmp_path.unlink()
        raise UserError(
            f"none of the {n} image files could be read; see the reasons in {out / 'rejected.csv'}"
        )
    if len(good) < n:  # compact: the cache holds readable images only
        final = np.lib.format.open_memmap(
            out / ".images.compact.npy", mode="w+", dtype=np.uint8, shape=(len(good), s, s)
        )
        for start in range(0, len(good), 512):
            final[start : start + 512] = arr[good[start : start + 512]]
        final.flush()
        del final, arr
        os.replace(out / ".images.compact.npy", out / "images.npy")
        tmp_path.unlink()
    else:
        del arr
        os.replace(tmp_path, out / "images.npy")

    manifest = pd.DataFrame(
        {
            "index": np.arange(len(good)),
            "path": [rows[i].path for i in good],
            "label": [rows[i].label for i in good],
            "class_name": [CLASS_NAMES[rows[i].label] for i in good],
            "patient": [rows[i].patient for i in good],
            "split": [rows[i].split for i in good],
            "source": [rows[i].source for i in good],
        },
        columns=MANIFEST_COLUMNS,
    )
    rejected = pd.DataFrame(
        {
            "path": [rows[i].path for i in sorted(reasons)],
            "source": [rows[i].source for i in sorted(reasons)],
            "split": [rows[i].split for i in sorted(reasons)],
            "reason": [reasons[i] for i in sorted(reasons)],
        }
    )
    _write_csv(out / "manifest.csv", manifest)
    _write_csv(out / "rejected.csv", rejected)
    write_json_atomic(
        out / "cache.json",
        {
            "pneumoscope_version": __version__,
            "preprocess": cfg.to_dict(),
            "n_images": int(len(good)),
            "n_rejected": int(len(reasons)),
            "split_note": split_note,
            "counts": counts_table(manifest),
        },
    )
    return PrepareResult(manifest, rejected, split_note)


def _write_csv(path: Path, df: pd.DataFrame) -> None:
    atomic_write(path, lambda tmp: df.to_csv(tmp, index=False, quoting=csv.QUOTE_MINIMAL))


def _with_progress(it: Iterable, total: int, enabled: bool, label: str) -> Iterator:
    if not enabled:
        yield from it
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    cols = (f"[bold]{label}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*cols, transient=False) as prog:
        task = prog.add_task(label, total=total)
        for item in it:
            yield item
            prog.advance(task)


def counts_table(manifest: pd.DataFrame) -> dict[str, dict[str, int]]:
    """{split: {NORMAL: n, PNEUMONIA: n, total: n}} in train/val/test order."""
    out: dict[str, dict[str, int]] = {}
    for split in ("train", "val", "test"):
        sub = manifest[manifest["split"] == split]
        if len(sub) == 0:
            continue
        row = {name: int((sub["label"] == lab).sum()) for lab, name in enumerate(CLASS_NAMES)}
        row["total"] = int(len(sub))
        out[split] = row
    return out


@dataclass
class Cache:
    """A prepared dataset directory, opened read-only."""

    root: Path
    images: np.ndarray  # memory-mapped (N, S, S) uint8
    manifest: pd.DataFrame
    info: dict

    @property
    def preprocess(self) -> PreprocessConfig:
        return PreprocessConfig.from_dict(self.info["preprocess"])

    def split(self, name: str) -> pd.DataFrame:
        sub = self.manifest[self.manifest["split"] == name]
        if len(sub) == 0:
            have = ", ".join(sorted(self.manifest["split"].unique()))
            raise UserError(f"split '{name}' is empty in {self.root} (it has: {have})")
        return sub


def open_cache(root: str | Path) -> Cache:
    root = Path(root).expanduser()
    if not (root / "cache.json").is_file() or not (root / "images.npy").is_file():
        raise UserError(
            f"not a prepared dataset: {root} (run 'pneumoscope data prepare "
            f"--source IMAGES --out {root}' first)"
        )
    info = json.loads((root / "cache.json").read_text())
    images = np.load(root / "images.npy", mmap_mode="r")
    manifest = pd.read_csv(root / "manifest.csv", dtype={"patient": str, "split": str})
    manifest["split"] = manifest["split"].fillna("")
    if len(manifest) != images.shape[0]:
        raise UserError(
            f"{root}: manifest.csv has {len(manifest)} rows but images.npy has "
            f"{images.shape[0]}; prepare the dataset again"
        )
    return Cache(root, images, manifest, info)
