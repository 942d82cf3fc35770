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

import glob
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pneumoscope.core.errors import ImageReadError, UserError
from pneumoscope.core.io import write_text_atomic
from pneumoscope.core.ray_session import check_engine
from pneumoscope.data.dicom import dicomdir_references, is_dicom, is_dicomdir
from pneumoscope.data.layouts.base import is_hidden
from pneumoscope.data.preprocess import PreprocessConfig, is_image_file, sniff_image
from pneumoscope.inference.intended_use import IntendedUse, load_screened
from pneumoscope.inference.outputs import open_rows
from pneumoscope.inference.scoring import (  # noqa: F401 (Prediction, score_batch: re-exported)
    CSV_COLUMNS,
    Prediction,
    model_id,
    score_batch,
    score_screened,
)
from pneumoscope.inference.shards import Shard, parse_shard
from pneumoscope.model.ood import OodGuard
from pneumoscope.model.run import LoadedRun, load_run

BACKENDS = ("torch", "torch-bf16", "onnx", "onnx-int8", "openvino", "auto")


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
    paths: list[str],
    cfg: PreprocessConfig,
    batch_size: int,
    workers: int,
    scope: IntendedUse | None,
) -> Iterator[list[tuple[str, np.ndarray | None, str, str]]]:
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # OpenCV releases the GIL
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            loaded = pool.map(lambda q: load_screened(q, cfg, scope), chunk)
            yield [(p, *r) for p, r in zip(chunk, loaded, strict=True)]


def make_runner(loaded: LoadedRun, backend: str):
    """Whatever computes (logits, features) from uint8 images: torch (float32 or bf16),
    ONNX Runtime (float32 or static int8) or OpenVINO (int8); "auto" picks the fastest
    this run and CPU allow (:func:`resolve_backend`). Wrapped in the run's test-time views
    when its calibration has them (``LoadedRun.scorer``), as every command scores."""
    return loaded.scorer(_backend_runner(loaded, resolve_backend(loaded, backend)))


def _backend_runner(loaded: LoadedRun, backend: str):
    if backend == "torch":
        return loaded
    if backend == "torch-bf16":
        from pneumoscope.inference.bf16 import TorchBf16Runner

        return TorchBf16Runner(loaded)
    if backend == "openvino":
        from pneumoscope.inference.ov_runner import OpenVinoRunner

        return OpenVinoRunner(loaded.root)
    from pneumoscope.inference.export import OnnxRunner

    return OnnxRunner(loaded.root, int8=backend == "onnx-int8")


def resolve_backend(loaded: LoadedRun, backend: str) -> str:
    """The backend ``backend`` names; for "auto", the fastest usable one, in the order
    measured on an AVX512-VNNI/BF16 CPU (bench/predict.py): OpenVINO int8, ONNX Runtime
    int8 (both need a current `pneumoscope export --int8`), torch bf16 (a CPU with native
    bf16), ONNX Runtime float32 (an export), torch float32."""
    if backend not in BACKENDS:
        raise UserError(f"--backend must be one of {', '.join(BACKENDS)}, got '{backend}'")
    if backend != "auto":
        return backend
    from pneumoscope.inference.export import export_problem
    from pneumoscope.model.hardware import cpu_features

    int8 = export_problem(loaded.root, int8=True) is None
    if int8 and _openvino_checked(loaded):
        return "openvino"
    if int8:
        return "onnx-int8"
    if cpu_features().bf16_fast:
        return "torch-bf16"
    return "onnx" if export_problem(loaded.root) is None else "torch"


def _openvino_checked(loaded: LoadedRun) -> bool:
    from pneumoscope.inference.ov_runner import openvino_checked

    return openvino_checked(loaded.files)


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
    loaded: LoadedRun,
    runner,
    paths: list[str],
    batch_size: int = 32,
    workers: int | None = None,
    gradcam_dir: str | Path | None = None,
    scope: IntendedUse | None = None,
) -> Iterator[Prediction]:
    """One Prediction per path, in input order, batch by batch: the inference path shared by
    `predict`, the Python API and the service. An unreadable file gets status "error", a
    DICOM the intended-use rules (``scope``; default: the run's, nothing relaxed) refuse
    gets "skipped" or "out_of_scope"."""
    guard = OodGuard.load(loaded.files)
    mid = model_id(loaded)
    workers = workers or os.cpu_count() or 1
    scope = scope or IntendedUse.from_card(loaded.card)
    for batch in _batches(paths, loaded.preprocess, batch_size, workers, scope):
        rows = score_screened(loaded, runner, guard, mid, batch)
        if gradcam_dir:
            _add_heatmaps(loaded, batch, rows, gradcam_dir)
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
    loaded = run if isinstance(run, LoadedRun) else load_run(run)
    scope = IntendedUse.from_card(loaded.card, allow)
    score, notes = _scorer(engine, loaded, backend, scope, (batch_size, workers, gradcam_dir))
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


def _scorer(engine: str, loaded: LoadedRun, backend: str, scope: IntendedUse, options):
    """(paths, ray_address) -> Prediction rows, for ``engine``, and notes on the model used.

    The model is made ready here, before any output is written: the local runner, or for
    Ray the ONNX model the workers receive (exported now when the run has no current one).
    """
    batch_size, workers, gradcam_dir = options
    if engine == "ray":
        if gradcam_dir:
            raise UserError("--gradcam needs --engine local (Grad-CAM runs the torch model)")
        if backend not in BACKENDS:
            resolve_backend(loaded, backend)  # the one-line error listing the backends
        from pneumoscope.inference.ray_predict import ray_model, ray_predict_rows

        model = ray_model(loaded, backend, scope)

        def remote(paths, address):
            return ray_predict_rows(model, paths, batch_size, address, scope)

        return remote, model.notes
    runner = make_runner(loaded, backend)

    def local(paths, _address):
        return predict_rows(loaded, runner, paths, batch_size, workers, gradcam_dir, scope)

    return local, []


def _add_heatmaps(loaded: LoadedRun, batch: list[tuple], rows: list[Prediction], where) -> None:
    """Grad-CAM PNGs of the batch's scored images; each row gets its file's path."""
    good = [i for i, (_, img, _, _) in enumerate(batch) if img is not None]
    if not good:
        return
    imgs = np.stack([batch[i][1] for i in good])
    probs = np.array([rows[i].probability for i in good])
    names = [batch[i][0] for i in good]
    for i, heat in zip(good, _heatmaps(loaded, imgs, names, probs, where), strict=True):
        rows[i].heatmap = heat


def _heatmaps(
    loaded: LoadedRun,
    imgs: np.ndarray,
    paths: list[str],
    probs: np.ndarray,
    gradcam_dir: str | Path | None,
) -> list[str]:
    """Grad-CAM PNG per image when asked; returns their paths (empty list otherwise)."""
    if not gradcam_dir:
        return []
    from pneumoscope.inference.explain import gradcam, heatmap_name, save_explanation

    out = Path(gradcam_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    heats = gradcam(loaded, imgs)
    names = loaded.card.class_names
    files = []
    for img, h, path, p in zip(imgs, heats, paths, probs, strict=True):
        target = out / heatmap_name(path)
        save_explanation(
            target, img, h, float(p), names[int(p >= loaded.threshold)], loaded.threshold
        )
        files.append(str(target))
    return files
