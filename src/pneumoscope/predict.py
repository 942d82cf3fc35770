"""`pneumoscope predict`: files, folders and globs in; one CSV row per input out.

Rows stream to the CSV in input order as batches finish, so memory stays bounded
whatever the number of inputs. An unreadable input gets a row with status
``error`` and its reason; every other input still gets its prediction.
"""

from __future__ import annotations

import csv
import glob
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ImageReadError, UserError
from .preprocess import PreprocessConfig, is_image_file, load_image
from .runs import LoadedRun, load_run
from .sources import is_hidden

CSV_COLUMNS = ["path", "probability", "label", "threshold", "status", "error"]


def expand_inputs(inputs: list[str]) -> list[str]:
    """Files as given; folders scanned recursively for images; globs expanded.

    A name that is neither an existing path nor a matching glob is kept, so it gets an
    error row ("file not found") rather than vanishing silently.
    """
    out: list[str] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            found = sorted(
                str(f)
                for f in p.rglob("*")
                if f.is_file() and is_image_file(f) and not is_hidden(f, p)
            )
            if not found:
                raise UserError(f"no image files (.jpeg/.jpg/.png/...) in folder {p}")
            out += found
        elif p.exists():
            out.append(str(p))
        elif glob.has_magic(item):
            matches = sorted(
                m for m in glob.glob(os.path.expanduser(item), recursive=True) if Path(m).is_file()
            )
            if not matches:
                raise UserError(f"the pattern {item} matches no files")
            out += matches
        else:
            out.append(str(p))
    return out


@dataclass
class Counts:
    ok: int = 0
    failed: int = 0


def _load(path: str, cfg: PreprocessConfig) -> tuple[np.ndarray | None, str]:
    try:
        return load_image(path, cfg), ""
    except ImageReadError as exc:
        return None, str(exc)
    except Exception as exc:  # one odd file must never stop the batch
        return None, f"unexpected error: {type(exc).__name__}: {exc}"


def _batches(
    paths: list[str], cfg: PreprocessConfig, batch_size: int, workers: int
) -> Iterator[list[tuple[str, np.ndarray | None, str]]]:
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # OpenCV releases the GIL
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            yield [
                (p, *r)
                for p, r in zip(chunk, pool.map(lambda q: _load(q, cfg), chunk), strict=True)
            ]


def predict_to_csv(
    run: str | Path | LoadedRun,
    inputs: list[str],
    out_csv: str | Path,
    batch_size: int = 32,
    workers: int | None = None,
) -> Counts:
    loaded = run if isinstance(run, LoadedRun) else load_run(run)
    paths = expand_inputs(inputs)
    if not paths:
        raise UserError("no inputs: give image files, folders or glob patterns")
    out_csv = Path(out_csv).expanduser()
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    thr = loaded.threshold
    names = loaded.card.get("class_names", ["NORMAL", "PNEUMONIA"])
    counts = Counts()
    workers = workers or os.cpu_count() or 1
    with open(out_csv, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_COLUMNS)
        for batch in _batches(paths, loaded.preprocess, batch_size, workers):
            good = [(i, img) for i, (_, img, _) in enumerate(batch) if img is not None]
            probs = loaded.predict_proba(np.stack([g[1] for g in good])) if good else []
            prob_of = {i: float(p) for (i, _), p in zip(good, probs, strict=True)}
            for i, (path, _, err) in enumerate(batch):
                if i in prob_of:
                    p = prob_of[i]
                    writer.writerow(
                        [path, f"{p:.6f}", names[int(p >= thr)], f"{thr:.6f}", "ok", ""]
                    )
                    counts.ok += 1
                else:
                    writer.writerow([path, "", "", f"{thr:.6f}", "error", err])
                    counts.failed += 1
            fh.flush()
    return counts
