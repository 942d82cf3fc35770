"""`pneumoscope predict`: files, folders, globs and CSV lists in; one CSV row per input out.

Rows stream to the CSV in input order as batches finish, so memory stays bounded
whatever the number of inputs. An unreadable input gets a row with status ``error`` and
its reason; every other input still gets its prediction.
"""

from __future__ import annotations

import csv
import glob
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pneumoscope.core.errors import UserError
from pneumoscope.data.layouts.base import is_hidden
from pneumoscope.data.preprocess import PreprocessConfig, is_image_file, try_load_image
from pneumoscope.model.ood import OodGuard
from pneumoscope.model.run import LoadedRun, load_run

CSV_COLUMNS = [
    "path",
    "probability",
    "label",
    "threshold",
    "model_id",
    "ood",
    "ood_score",
    "status",
    "error",
]
BACKENDS = ("torch", "onnx", "onnx-int8")


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


def expand_inputs(inputs: list[str]) -> list[str]:
    """Files as given; folders scanned recursively for images; globs expanded; a .csv file
    is a list of inputs. A name that is neither an existing path nor a matching glob is
    kept, so it gets an error row ("file not found") rather than vanishing silently."""
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
                raise UserError(f"no image files (.jpeg/.jpg/.png/.dcm/...) in folder {p}")
            out += found
        elif p.is_file() and p.suffix.lower() == ".csv":
            out += _paths_from_csv(p)
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
    flagged_ood: int = 0


def _batches(
    paths: list[str], cfg: PreprocessConfig, batch_size: int, workers: int
) -> Iterator[list[tuple[str, np.ndarray | None, str]]]:
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # OpenCV releases the GIL
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            yield [
                (p, *r)
                for p, r in zip(
                    chunk, pool.map(lambda q: try_load_image(q, cfg), chunk), strict=True
                )
            ]


def make_runner(loaded: LoadedRun, backend: str):
    """Whatever computes (logits, features) from uint8 images: torch or ONNX Runtime."""
    if backend not in BACKENDS:
        raise UserError(f"--backend must be one of {', '.join(BACKENDS)}, got '{backend}'")
    if backend == "torch":
        return loaded
    from pneumoscope.inference.export import OnnxRunner

    return OnnxRunner(loaded.root, int8=backend == "onnx-int8")


def model_id(loaded: LoadedRun) -> str:
    """Run folder name and the start of the weights' SHA-256: names the exact model."""
    return f"{loaded.root.name}@{loaded.files.weights_sha256()[:12]}"


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


@dataclass
class Prediction:
    """One input's outcome: the predict CSV's row, with typed values."""

    path: str
    threshold: float
    model_id: str
    probability: float | None = None
    label: str = ""
    ood: bool | None = None
    ood_score: float | None = None
    status: str = "ok"
    error: str = ""
    heatmap: str = ""

    def csv_cells(self, with_heatmap: bool = False) -> list[str]:
        """The row as `predict` writes it (fixed decimals, empty cells for missing values)."""
        ok = self.probability is not None
        cells = [
            self.path,
            f"{self.probability:.6f}" if ok else "",
            self.label,
            f"{self.threshold:.6f}",
            self.model_id,
            "" if self.ood is None else str(self.ood).lower(),
            "" if self.ood_score is None else f"{self.ood_score:.4f}",
            self.status,
            self.error,
        ]
        return cells + ([self.heatmap] if with_heatmap else [])


def score_batch(
    loaded: LoadedRun, runner, guard: OodGuard | None, pixels: np.ndarray, paths, mid: str
) -> list[Prediction]:
    """Predictions for a stack of preprocessed images: logits and features from the runner,
    the run's temperature and threshold, the OOD guard. `predict` and the service share it."""
    logits, feats = runner.logits_and_features(pixels)
    probs = loaded.proba_from_logits(logits)
    scores, flags = guard.score(feats) if guard else (None, None)
    thr, names = loaded.threshold, loaded.card.class_names
    return [
        Prediction(
            path,
            thr,
            mid,
            float(p),
            names[int(p >= thr)],
            None if guard is None else bool(flags[k]),
            None if guard is None else float(scores[k]),
        )
        for k, (path, p) in enumerate(zip(paths, probs, strict=True))
    ]


def predict_rows(
    loaded: LoadedRun,
    runner,
    paths: list[str],
    batch_size: int = 32,
    workers: int | None = None,
    gradcam_dir: str | Path | None = None,
) -> Iterator[Prediction]:
    """One Prediction per path, in input order, batch by batch: the inference path shared by
    `predict`, the Python API and the service. An unreadable file gets status "error"."""
    guard = OodGuard.load(loaded.files)
    thr, mid = loaded.threshold, model_id(loaded)
    workers = workers or os.cpu_count() or 1
    for batch in _batches(paths, loaded.preprocess, batch_size, workers):
        good = [i for i, (_, img, _) in enumerate(batch) if img is not None]
        done: dict[int, Prediction] = {}
        if good:
            imgs = np.stack([batch[i][1] for i in good])
            names = [batch[i][0] for i in good]
            preds = score_batch(loaded, runner, guard, imgs, names, mid)
            probs = np.array([r.probability for r in preds])
            heat = _heatmaps(loaded, imgs, names, probs, gradcam_dir)
            for k, i in enumerate(good):
                preds[k].heatmap = heat[k] if heat else ""
                done[i] = preds[k]
        for i, (path, _, err) in enumerate(batch):
            yield done.get(i) or Prediction(path, thr, mid, status="error", error=err)


def predict_to_csv(
    run: str | Path | LoadedRun,
    inputs: list[str],
    out_csv: str | Path,
    batch_size: int = 32,
    workers: int | None = None,
    backend: str = "torch",
    gradcam_dir: str | Path | None = None,
    progress: bool = False,
) -> Counts:
    """Stream one CSV row per input to ``out_csv`` (flushed as batches finish)."""
    loaded = run if isinstance(run, LoadedRun) else load_run(run)
    runner = make_runner(loaded, backend)
    paths = expand_inputs(inputs)
    if not paths:
        raise UserError("no inputs: give image files, folders, glob patterns or a CSV list")
    out_csv = Path(out_csv).expanduser()
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    heat = bool(gradcam_dir)
    counts = Counts()
    rows = predict_rows(loaded, runner, paths, batch_size, workers, gradcam_dir)
    with (
        open(out_csv, "w", newline="", encoding="utf-8") as fh,
        _progress(len(paths), progress) as prog,
    ):
        task = prog.add_task("predict", total=len(paths))
        writer = csv.writer(fh)
        writer.writerow(CSV_COLUMNS + (["heatmap"] if heat else []))
        for n, row in enumerate(rows, 1):
            writer.writerow(row.csv_cells(heat))
            counts.ok += row.status == "ok"
            counts.failed += row.status != "ok"
            counts.flagged_ood += bool(row.ood)
            if n % batch_size == 0 or n == len(paths):
                fh.flush()
                prog.update(task, completed=n)
    return counts


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
