"""`pneumoscope predict`: files, folders, globs and CSV lists in; one CSV row per input out.

Rows stream to the CSV (or Parquet file, :mod:`.outputs`) in input order as batches
finish, so memory stays bounded whatever the number of inputs. They are computed on this
machine, or with ``engine="ray"`` on a Ray cluster (:mod:`.ray_predict`), with the same
rows; ``shard`` keeps one of N parts of the inputs for batch systems (:mod:`.shards`).
An unreadable input gets a row with status ``error`` and its reason; every other input
still gets its prediction.

A folder is scanned by content, as a PACS export needs (``IM00001``, ``1``, ``2``, ...
without extensions): every DICOM object and every image gets a row, a DICOMDIR brings the
files it indexes (each read once, whether found by the scan or the index), and the other
files (``README.txt``, ``Thumbs.db``) are counted and listed, never dropped silently.
Before a DICOM is decoded its header meets the intended-use rules
(:mod:`pneumoscope.inference.intended_use`): a non-image object gets status ``skipped``,
an image the model was not made for ``out_of_scope``, each with its reason.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pneumoscope.core.errors import UserError
from pneumoscope.core.ray_session import check_engine
from pneumoscope.inference.backends import BACKENDS, resolve_backend
from pneumoscope.inference.inputs import Inputs, scan_inputs, skipped_list_path, write_skipped_list
from pneumoscope.inference.outputs import open_rows
from pneumoscope.inference.predictor import Predictor, Screened
from pneumoscope.inference.scoring import CSV_COLUMNS, Prediction
from pneumoscope.inference.shards import Shard, parse_shard
from pneumoscope.model.run import LoadedRun


@dataclass
class Counts:
    """What `predict` wrote: rows by status, and what the scan left out."""

    ok: int = 0
    failed: int = 0  # status "error"
    flagged_ood: int = 0
    out_of_scope: int = 0
    skipped: int = 0  # DICOM objects that are no image
    not_images: list[str] = field(default_factory=list)  # files no row was written for
    skipped_list: Path | None = None  # where they are listed
    notes: list[str] = field(default_factory=list)  # what could not be checked

    def add(self, row: Prediction) -> None:
        self.ok += row.status == "ok"
        self.failed += row.status == "error"
        self.out_of_scope += row.status == "out_of_scope"
        self.skipped += row.status == "skipped"
        self.flagged_ood += bool(row.ood)


def _batches(
    predictor: Predictor, paths: list[str], batch_size: int, workers: int
) -> Iterator[list[Screened]]:
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # OpenCV releases the GIL
        for start in range(0, len(paths), batch_size):
            yield list(pool.map(predictor.screen, paths[start : start + batch_size]))


def _progress(total: int, enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    return Progress(
        "[bold]predicting",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(file=sys.stderr),
        disable=not enabled,
        transient=False,
    )


def predict_rows(
    predictor: Predictor,
    paths: list[str],
    batch_size: int = 32,
    workers: int | None = None,
    gradcam_dir: str | Path | None = None,
) -> Iterator[Prediction]:
    """One Prediction per path, in input order, batch by batch: the file loop shared by
    `predict`, the Python API and the PACS worker. An unreadable file gets status "error",
    a DICOM the predictor's intended-use rules refuse "skipped" or "out_of_scope"."""
    workers = workers or os.cpu_count() or 1
    for batch in _batches(predictor, paths, batch_size, workers):
        rows = predictor.score_screened(batch)
        if gradcam_dir:
            _add_heatmaps(predictor, batch, rows, gradcam_dir)
        yield from rows


def predict_to_csv(
    run: str | Path | LoadedRun,
    inputs: list[str],
    out_csv: str | Path,
    batch_size: int = 32,
    workers: int | None = None,
    backend: str = "torch",
    gradcam_dir: str | Path | None = None,
    progress: bool = False,
    allow: Iterable[str] = (),
    on_row: Callable[[Prediction], None] | None = None,
    engine: str = "local",
    ray_address: str | None = None,
    shard: str | Shard | None = None,
) -> Counts:
    """Stream one row per input to ``out_csv`` (CSV, or Parquet for .parquet; flushed as
    batches finish); files a folder scan left out are listed in OUT.skipped.txt. ``allow``
    relaxes intended-use rules (modality, body-part, view, multiframe, age); ``on_row``
    sees each row. ``engine`` "ray" scores on a Ray cluster (:mod:`.ray_predict`, ONNX
    models); ``shard`` "I/N" keeps the I-th of N parts of the inputs (:mod:`.shards`)."""
    check_engine(engine, ray_address)
    shard = parse_shard(shard)
    predictor = Predictor.from_run(run, backend, allow)
    scope = predictor.scope
    score, notes = _scorer(engine, predictor, (batch_size, workers, gradcam_dir))
    found = _inputs(inputs, shard)
    out_csv = Path(out_csv).expanduser()
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    counts = Counts(not_images=found.not_images, notes=list(found.notes) + notes)
    counts.skipped_list = write_skipped_list(found, skipped_list_path(out_csv))
    columns = CSV_COLUMNS + (["heatmap"] if gradcam_dir else [])
    n = len(found.paths)
    with open_rows(out_csv, columns) as writer, _progress(n, progress) as prog:
        task = prog.add_task("predict", total=n)
        for k, row in enumerate(score(found.paths, ray_address), 1):
            writer.write(row)
            counts.add(row)
            if on_row:
                on_row(row)
            if k % batch_size == 0 or k == n:
                writer.flush()
                prog.update(task, completed=k)
    counts.notes += scope.notes_for_inputs()
    return counts


def _inputs(inputs: list[str], shard: Shard | None) -> Inputs:
    """The scanned inputs, cut to ``shard``'s part (only shard 1 keeps the files the scan
    left out, so the shards' lists add up to the whole run's)."""
    found = scan_inputs(inputs)
    if not found.paths:
        raise UserError("no inputs: give image files, folders, glob patterns or a CSV list")
    if shard is not None:
        found.paths = shard.take(found.paths)
        found.not_images = found.not_images if shard.first else []
        if not found.paths:
            found.notes.append(f"shard {shard} has no inputs (fewer inputs than shards)")
    return found


def _scorer(engine: str, predictor: Predictor, options):
    """(paths, ray_address) -> Prediction rows, for ``engine``, and notes on the model used.

    The model is made ready here, before any output is written: the local runner, or for
    Ray the ONNX model the workers receive (exported now when the run has no current one).
    """
    batch_size, workers, gradcam_dir = options
    if engine == "ray":
        if gradcam_dir:
            raise UserError("--gradcam needs --engine local (Grad-CAM runs the torch model)")
        if predictor.backend not in BACKENDS:
            resolve_backend(predictor.loaded, predictor.backend)  # the one-line error
        from pneumoscope.inference.ray_predict import ray_model, ray_predict_rows

        model = ray_model(predictor)

        def remote(paths, address):
            return ray_predict_rows(model, paths, batch_size, address, predictor.scope)

        return remote, model.notes
    predictor.ready()

    def local(paths, _address):
        return predict_rows(predictor, paths, batch_size, workers, gradcam_dir)

    return local, []


def _add_heatmaps(predictor: Predictor, batch: list[Screened], rows: list[Prediction], where):
    """Heatmap PNGs of the batch's scored images; each row gets its file's path."""
    good = [i for i, s in enumerate(batch) if s.pixels is not None]
    if not good:
        return
    imgs = np.stack([batch[i].pixels for i in good])
    probs = np.array([rows[i].probability for i in good])
    names = [batch[i].path for i in good]
    for i, heat in zip(good, _heatmaps(predictor, imgs, names, probs, where), strict=True):
        rows[i].heatmap = heat


def _heatmaps(
    predictor: Predictor,
    imgs: np.ndarray,
    paths: list[str],
    probs: np.ndarray,
    gradcam_dir: str | Path | None,
) -> list[str]:
    """Heatmap PNG per image when asked (the predictor's: the export's class activation
    map or Grad-CAM); returns their paths (empty list otherwise)."""
    if not gradcam_dir:
        return []
    from pneumoscope.inference.explain import heatmap_name, save_explanation

    out = Path(gradcam_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    loaded = predictor.loaded
    heats = predictor.heatmaps(imgs)
    names = loaded.card.class_names
    files = []
    for img, h, path, p in zip(imgs, heats, paths, probs, strict=True):
        target = out / heatmap_name(path)
        save_explanation(
            target, img, h, float(p), names[int(p >= loaded.threshold)], loaded.threshold
        )
        files.append(str(target))
    return files
