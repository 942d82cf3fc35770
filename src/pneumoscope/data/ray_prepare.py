"""`data prepare --engine ray`: the decode-and-hash stage as a Ray Data job.

The paths go to the cluster in blocks of ``batch_size``; each task runs
:func:`pneumoscope.data.cache.decode_and_hash` (the local engine's function: decode,
exact and perceptual hashes, preprocessing) on its files and sends back the preprocessed
images with the hashes and the per-file reasons. The driver writes them into the same
partial memmap as the local engine and returns the same :class:`Decoded`, so duplicates,
groups, splits, the cache and the report follow unchanged and come out identical.

The workers read the files by the paths the driver lists: on a multi-node cluster the
sources must be mounted at the same paths on every node (a shared file system), and
pneumoscope installed there (``pip install 'pneumoscope[ray]'``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pneumoscope.core.ray_session import data_job, ray_session
from pneumoscope.data.cache import Decoded, decode_and_hash, with_progress
from pneumoscope.data.preprocess import PreprocessConfig

BATCH_SIZE = 64  # files per task: large enough that Ray's per-task cost stays small


def decode_batch(batch: dict[str, np.ndarray], cfg: PreprocessConfig) -> dict[str, np.ndarray]:
    """One Ray Data batch of {"i", "path"} -> decode_and_hash's results as columns (an
    unreadable file gets a blank image, ``ok`` False and its reason)."""
    s = cfg.img_size
    n = len(batch["path"])
    images = np.zeros((n, s, s), np.uint8)
    ok = np.zeros(n, bool)
    cols: dict[str, list] = {k: [] for k in ("reason", "sha1", "phash", "height", "width")}
    for k, path in enumerate(batch["path"]):
        img, err, sha1, phash, h, w = decode_and_hash(str(path), cfg)
        if img is not None:
            images[k], ok[k] = img, True
        for key, value in zip(cols, (err, sha1, phash, h, w), strict=True):
            cols[key].append(value)
    return {
        "i": np.asarray(batch["i"], np.int64),
        "image": images,
        "ok": ok,
        "reason": np.array(cols["reason"], dtype=object),
        "sha1": np.array(cols["sha1"], dtype=object),
        "phash": np.array(cols["phash"], dtype=object),
        "height": np.array(cols["height"], np.int64),
        "width": np.array(cols["width"], np.int64),
    }


def decode_rows_ray(
    paths: Sequence[str],
    out: Path,
    cfg: PreprocessConfig,
    address: str | None = None,
    progress: bool = True,
    batch_size: int = BATCH_SIZE,
) -> Decoded:
    """:func:`pneumoscope.data.cache.decode_rows` on a Ray cluster (``address``; default
    RAY_ADDRESS or a local cluster started for the job): the same Decoded, row for row."""
    n = len(paths)
    dec, arr = Decoded.start(out, n, cfg.img_size)
    items = [{"i": i, "path": str(p)} for i, p in enumerate(paths)]
    with ray_session(address) as ray, data_job(ray, preserve_order=False):
        ds = ray.data.from_items(items, override_num_blocks=max(1, -(-n // batch_size)))
        ds = ds.map_batches(
            decode_batch, fn_kwargs={"cfg": cfg}, batch_size=batch_size, batch_format="numpy"
        )
        rows = _rows(ds.iter_batches(batch_size=None, batch_format="numpy"))
        for i, result in with_progress(rows, n, progress, "decoding"):
            dec.record(arr, i, result)
    arr.flush()
    got = int(dec.ok.sum()) + len(dec.reasons)
    if got != n:  # every row comes back exactly once
        raise RuntimeError(f"the Ray job returned {got} of {n} rows")
    del arr
    return dec


def _rows(batches):
    """(i, decode_and_hash result) for each row of the job's batches, in any order."""
    for b in batches:
        for k, i in enumerate(b["i"]):
            img = b["image"][k] if b["ok"][k] else None
            result = (img, str(b["reason"][k]), str(b["sha1"][k]), str(b["phash"][k]))
            yield int(i), (*result, int(b["height"][k]), int(b["width"][k]))
