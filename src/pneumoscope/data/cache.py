"""The dataset cache: every image decoded and preprocessed once, stored as one uint8 array.

Layout of a cache directory:
    images.npy    (N, S, S) uint8, memory-mapped by training and evaluation
    manifest.csv  one row per cached image (see MANIFEST_COLUMNS)
    rejected.csv  every file that could not be read, with its reason
    cache.json    preprocessing parameters, counts and how the splits were made

``pneumoscope data prepare`` adds excluded.csv, duplicates.csv, data_report.json/.md and
prepare_config.yaml (see prepare.py). Each image is decoded once, in a worker process,
which also hashes it: the exact hash of the decoded full-resolution pixels and the
perceptual hash of a normalised thumbnail (dedupe.py), so duplicate search costs no
second decode.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pneumoscope.core import CLASS_NAMES, __version__
from pneumoscope.core.errors import ImageReadError, UserError
from pneumoscope.core.io import atomic_write, write_json_atomic
from pneumoscope.data.dedupe import exact_hash, perceptual_hash
from pneumoscope.data.groups import patient_key
from pneumoscope.data.preprocess import (
    PreprocessConfig,
    decode_gray,
    preprocess_gray,
)
from pneumoscope.data.records import SourceRow

MANIFEST_COLUMNS = [
    "index",
    "path",
    "label",
    "class_name",
    "patient",  # namespaced by source: "pediatric:person12"
    "split",
    "source",
    "group",  # patient and duplicate group: never in two splits
    "age_group",  # child | adult | unknown
    "age",
    "sex",
    "view",
    "source_split",  # the split the source gave ("" when none)
    "sha1",  # exact hash of the decoded grayscale pixels
    "phash",  # 256-bit perceptual hash (hex) of the normalised thumbnail
    "height",  # decoded size before preprocessing
    "width",
]
STRING_COLUMNS = (
    "patient", "split", "source", "group", "age_group", "sex", "view", "source_split",
    "sha1", "phash",
)  # fmt: skip


@dataclass
class PrepareResult:
    manifest: pd.DataFrame
    rejected: pd.DataFrame
    split_note: str
    report: dict = field(default_factory=dict)  # data_report.json's content (prepare only)


@dataclass
class Decoded:
    """Every row decoded once: preprocessed pixels in a partial memmap, hashes, failures."""

    tmp_path: Path
    ok: np.ndarray  # bool per row
    reasons: dict[int, str]
    sha1: list[str]
    phash: list[str]
    height: np.ndarray
    width: np.ndarray
    img_size: int

    @classmethod
    def start(cls, out: Path, n: int, img_size: int) -> tuple[Decoded, np.ndarray]:
        """Nothing decoded yet for ``n`` rows, and the partial memmap
        ``out/.images.partial.npy`` that the images go into (every engine uses it)."""
        out.mkdir(parents=True, exist_ok=True)
        tmp_path = out / ".images.partial.npy"
        shape = (n, img_size, img_size)
        arr = np.lib.format.open_memmap(tmp_path, mode="w+", dtype=np.uint8, shape=shape)
        dec = cls(
            tmp_path, np.zeros(n, bool), {}, [""] * n, [""] * n, np.zeros(n, int),
            np.zeros(n, int), img_size,
        )  # fmt: skip
        return dec, arr

    def record(self, arr: np.ndarray, i: int, result: tuple) -> None:
        """Row ``i``'s :func:`decode_and_hash` result: the image into ``arr``, or the reason."""
        img, err, sha1, phash, h, w = result
        if img is None:
            self.reasons[i] = err
            return
        arr[i] = img
        self.ok[i] = True
        self.sha1[i], self.phash[i], self.height[i], self.width[i] = sha1, phash, h, w


def decode_and_hash(path: str, cfg: PreprocessConfig) -> tuple:
    """(image, "", sha1, phash, height, width) or (None, reason, "", "", 0, 0) for one file.

    The image is exactly ``preprocess.load_image(path, cfg)``; the hashes come from the
    same decode, before resizing and CLAHE.
    """
    try:
        gray = decode_gray(path)
        img = preprocess_gray(gray, cfg)
        return img, "", exact_hash(gray), perceptual_hash(gray), *gray.shape
    except ImageReadError as exc:
        return None, str(exc), "", "", 0, 0
    except Exception as exc:  # one odd file never stops the batch
        return None, f"unexpected error: {type(exc).__name__}: {exc}", "", "", 0, 0


def _work_hashed(args: tuple[int, str, PreprocessConfig]) -> tuple:
    i, path, cfg = args
    return (i, *decode_and_hash(path, cfg))


def decode_rows(
    paths: Sequence[str],
    out: Path,
    cfg: PreprocessConfig,
    workers: int | None = None,
    progress: bool = True,
    chunksize: int = 16,
) -> Decoded:
    """Decode, hash and preprocess every path (``workers`` processes) into a partial memmap
    ``out/.images.partial.npy``; ``write_cache`` turns it into the cache."""
    workers = workers or (os.cpu_count() or 1)
    n = len(paths)
    dec, arr = Decoded.start(out, n, cfg.img_size)
    # Modules the workers need, imported before the pool forks: each worker would
    # otherwise pay ~0.5 s importing imagehash/scipy and pydicom on its first image.
    import imagehash  # noqa: F401

    from pneumoscope.data import dicom  # noqa: F401

    jobs = ((i, p, cfg) for i, p in enumerate(paths))
    if workers <= 1:
        results: Iterable = map(_work_hashed, jobs)
        pool = None
    else:
        pool = ProcessPoolExecutor(max_workers=workers)
        results = pool.map(_work_hashed, jobs, chunksize=chunksize)
    try:
        for i, *result in with_progress(results, n, progress, "decoding"):
            dec.record(arr, i, tuple(result))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    arr.flush()
    del arr
    return dec


def write_cache(
    out: Path,
    cfg: PreprocessConfig,
    rows: Sequence[SourceRow],
    dec: Decoded,
    keep: np.ndarray,
    columns: dict[str, Sequence],
    split_note: str,
    info: dict | None = None,
) -> PrepareResult:
    """Store the rows ``keep`` (indices into ``rows``, in cache order) as images.npy and
    manifest.csv, the unreadable rows as rejected.csv, and cache.json.

    ``columns`` holds manifest columns for the kept rows (split, group, patient, ...),
    overriding what the rows themselves say.
    """
    keep = np.asarray(keep, dtype=np.int64)
    if not dec.ok[keep].all():
        raise ValueError("write_cache: a kept row was not decoded")
    _store_images(out, dec, keep, len(rows))
    base = _manifest_columns(rows, dec, keep)
    base.update({k: list(v) for k, v in columns.items()})
    manifest = pd.DataFrame(base, columns=MANIFEST_COLUMNS)
    rejected = rejected_frame(rows, dec)
    write_csv(out / "manifest.csv", manifest)
    write_csv(out / "rejected.csv", rejected)
    write_json_atomic(
        out / "cache.json",
        {
            "pneumoscope_version": __version__,
            "preprocess": cfg.to_dict(),
            "n_images": int(len(keep)),
            "n_rejected": int(len(rejected)),
            "split_note": split_note,
            "counts": counts_table(manifest),
            **(info or {}),
        },
    )
    return PrepareResult(manifest, rejected, split_note)


def _store_images(out: Path, dec: Decoded, keep: np.ndarray, n_rows: int) -> None:
    """Move the decoded array into place as images.npy, compacted to the kept rows."""
    s = dec.img_size
    src = np.load(dec.tmp_path, mmap_mode="r")
    if len(keep) == n_rows and np.array_equal(keep, np.arange(n_rows)):
        del src
        os.replace(dec.tmp_path, out / "images.npy")
        return
    part = out / ".images.compact.npy"
    final = np.lib.format.open_memmap(part, mode="w+", dtype=np.uint8, shape=(len(keep), s, s))
    for start in range(0, len(keep), 512):
        final[start : start + 512] = src[keep[start : start + 512]]
    final.flush()
    del final, src
    os.replace(part, out / "images.npy")
    dec.tmp_path.unlink()


def _manifest_columns(rows: Sequence[SourceRow], dec: Decoded, keep: np.ndarray) -> dict:
    """The manifest's columns for the kept rows, as the rows and the decoder give them."""
    kept = [rows[i] for i in keep]
    return {
        "index": np.arange(len(keep)),
        "path": [r.path for r in kept],
        "label": [r.label for r in kept],
        "class_name": [CLASS_NAMES[r.label] for r in kept],
        "patient": [patient_key(r.source, r.patient) for r in kept],
        "split": [r.split for r in kept],
        "source": [r.source for r in kept],
        "group": [patient_key(r.source, r.patient) for r in kept],
        "age_group": [r.age_group or "unknown" for r in kept],
        "age": [np.nan if r.age is None else r.age for r in kept],
        "sex": [r.sex for r in kept],
        "view": [r.view for r in kept],
        "source_split": [r.split for r in kept],
        "sha1": [dec.sha1[i] for i in keep],
        "phash": [dec.phash[i] for i in keep],
        "height": dec.height[keep],
        "width": dec.width[keep],
    }


def rejected_frame(rows: Sequence[SourceRow], dec: Decoded) -> pd.DataFrame:
    bad = sorted(dec.reasons)
    return pd.DataFrame(
        {
            "path": [rows[i].path for i in bad],
            "source": [rows[i].source for i in bad],
            "split": [rows[i].split for i in bad],
            "reason": [dec.reasons[i] for i in bad],
        },
        columns=["path", "source", "split", "reason"],
    )


def fail_unreadable(out: Path, rows: Sequence[SourceRow], dec: Decoded) -> None:
    """Every file failed: write rejected.csv, remove the partial array, raise UserError."""
    write_csv(out / "rejected.csv", rejected_frame(rows, dec))
    dec.tmp_path.unlink(missing_ok=True)
    first = next(iter(dec.reasons.values()), "")
    raise UserError(
        f"none of the {len(rows)} image files could be read (first reason: {first}); "
        f"see every reason in {out / 'rejected.csv'}"
    )


def write_csv(path: Path, df: pd.DataFrame) -> None:
    atomic_write(path, lambda tmp: df.to_csv(tmp, index=False, quoting=csv.QUOTE_MINIMAL))


def with_progress(it: Iterable, total: int, enabled: bool, label: str) -> Iterator:
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
class CacheInfo:
    """cache.json, typed: how the images were preprocessed, how many were kept and
    rejected, how the splits were made, the counts per split and class, and what
    ``data prepare`` was told (``data``: its config and sources). Caches written by older
    releases lack some keys; this is the one place that gives them their defaults."""

    preprocess: PreprocessConfig
    n_images: int = 0
    n_rejected: int = 0
    split_note: str = ""
    counts: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    pneumoscope_version: str = "unknown"

    @classmethod
    def from_dict(cls, d: dict) -> CacheInfo:
        return cls(
            preprocess=PreprocessConfig.from_dict(d["preprocess"]),
            n_images=int(d.get("n_images", 0)),
            n_rejected=int(d.get("n_rejected", 0)),
            split_note=str(d.get("split_note", "")),
            counts=dict(d.get("counts") or {}),
            data=dict(d.get("data") or {}),
            pneumoscope_version=str(d.get("pneumoscope_version", "unknown")),
        )


@dataclass
class Cache:
    """A prepared dataset directory, opened read-only."""

    root: Path
    images: np.ndarray  # memory-mapped (N, S, S) uint8
    manifest: pd.DataFrame
    info: CacheInfo

    @property
    def preprocess(self) -> PreprocessConfig:
        return self.info.preprocess

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
    try:
        info = CacheInfo.from_dict(json.loads((root / "cache.json").read_text()))
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(
            f"{root}/cache.json is unreadable ({exc}); prepare the dataset again"
        ) from None
    images = np.load(root / "images.npy", mmap_mode="r")
    manifest = pd.read_csv(root / "manifest.csv", dtype={c: str for c in STRING_COLUMNS})
    for col in STRING_COLUMNS:  # older caches lack the newer columns
        if col in manifest:
            manifest[col] = manifest[col].fillna("")
    if len(manifest) != images.shape[0]:
        raise UserError(
            f"{root}: manifest.csv has {len(manifest)} rows but images.npy has "
            f"{images.shape[0]}; prepare the dataset again"
        )
    return Cache(root, images, manifest, info)
