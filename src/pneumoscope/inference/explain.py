"""``pneumoscope explain``: per-film heatmaps of the PNEUMONIA logit, drawn over the film
with its result, and the CSV that lists them.

The heatmaps are Grad-CAM's (:mod:`pneumoscope.inference.gradcam`, the training install).
This module keeps the pictures (overlay, caption, PNG names), which the service and the
DICOM captures share and which need no torch.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import unicodedata
from pathlib import Path

import cv2
import numpy as np

from pneumoscope.core.io import atomic_write, write_text_atomic
from pneumoscope.inference.intended_use import IntendedUse, Screened, load_screened
from pneumoscope.inference.predictor import Predictor
from pneumoscope.model.population_check import check_folder
from pneumoscope.model.run import LoadedRun, load_run, torch_missing

CSV_COLUMNS = [
    "path",
    "probability",
    "label",
    "threshold",
    "status",
    "error",
    "heatmap",
    "note",
    "estimated_age_group",
    "adult_probability",
]
CSV_NAME = "explanations.csv"
MIN_PANEL = 256  # PNG panels are upscaled to at least this many pixels so the caption fits


# --------------------------------------------------------------------------- pictures


def overlay(gray: np.ndarray, heat: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """JET-coloured heat over the gray X-ray: uint8 RGB (S, S, 3); ``alpha`` is the heat's
    weight."""
    gray = np.asarray(gray)
    if gray.ndim != 2:
        raise ValueError(f"expected a 2-D gray image, got shape {gray.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    gray = np.clip(gray, 0, 255).astype(np.uint8)
    heat = np.clip(np.nan_to_num(np.asarray(heat, np.float32)), 0.0, 1.0)
    if heat.shape != gray.shape:
        heat = cv2.resize(heat, (gray.shape[1], gray.shape[0]), interpolation=cv2.INTER_LINEAR)
    colour = cv2.applyColorMap(np.round(heat * 255).astype(np.uint8), cv2.COLORMAP_JET)
    colour = cv2.cvtColor(colour, cv2.COLOR_BGR2RGB)
    base = cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)
    return cv2.addWeighted(colour, float(alpha), base, 1.0 - float(alpha), 0.0)


def caption(label: str, prob: float, threshold: float) -> str:
    digits = 2
    if round(prob, 2) == round(threshold, 2) and prob != threshold:
        digits = 3  # "p=0.19 (threshold 0.19)" would hide which side of the threshold p is
    return f"{label} p={prob:.{digits}f} (threshold {threshold:.{digits}f})"


def render_explanation(
    gray: np.ndarray, heat: np.ndarray, prob: float, label: str, threshold: float
) -> np.ndarray:
    """RGB picture: a caption line above the preprocessed X-ray and its Grad-CAM overlay."""
    gray = np.clip(np.asarray(gray), 0, 255).astype(np.uint8)
    h, w = gray.shape
    scale = max(1.0, MIN_PANEL / max(h, w))
    size = (round(w * scale), round(h * scale))
    big = cv2.resize(gray, size, interpolation=cv2.INTER_LINEAR) if scale > 1 else gray
    heat = np.clip(np.nan_to_num(np.asarray(heat, np.float32)), 0.0, 1.0)
    big_heat = cv2.resize(heat, size, interpolation=cv2.INTER_LINEAR)
    left = cv2.cvtColor(big, cv2.COLOR_GRAY2RGB)
    right = overlay(big, big_heat)
    gap = np.zeros((size[1], 4, 3), np.uint8)
    panels = np.concatenate([left, gap, right], axis=1)
    text = caption(label, prob, threshold)
    font, thick = cv2.FONT_HERSHEY_SIMPLEX, 1
    font_scale = 0.6
    while font_scale > 0.3:
        (tw, th), _ = cv2.getTextSize(text, font, font_scale, thick)
        if tw <= panels.shape[1] - 12:
            break
        font_scale -= 0.05
    (tw, th), base = cv2.getTextSize(text, font, font_scale, thick)
    strip = np.full((th + base + 12, panels.shape[1], 3), 24, np.uint8)
    cv2.putText(strip, text, (6, th + 6), font, font_scale, (255, 255, 255), thick, cv2.LINE_AA)
    return np.concatenate([strip, panels], axis=0)


def _write_png(path: Path, rgb: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"could not encode PNG for {path}")
    data = buf.tobytes()
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def save_explanation(
    path: str | Path,
    gray: np.ndarray,
    heat: np.ndarray,
    prob: float,
    label: str,
    threshold: float,
) -> Path:
    """Write the side-by-side PNG (atomically; unicode paths work) and return its path."""
    path = Path(path)
    _write_png(path, render_explanation(gray, heat, prob, label, threshold))
    return path


# --------------------------------------------------------------------------- files


def heatmap_name(path: str | os.PathLike) -> str:
    """A filesystem-safe PNG name: the input's stem in ASCII plus a hash of its full path, so
    same-named inputs from different folders never overwrite each other."""
    full = os.path.abspath(os.fspath(path))
    digest = hashlib.sha256(os.fsencode(full)).hexdigest()[:10]
    stem = unicodedata.normalize("NFKD", Path(full).stem).encode("ascii", "ignore").decode()
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._-")[:60] or "image"
    return f"{stem}_{digest}.png"


def explain_files(
    run_or_loaded: str | Path | LoadedRun,
    paths: list[str],
    out_dir: str | Path,
    batch_size: int = 16,
    scope: IntendedUse | None = None,
    backend: str = "torch",
) -> list[dict]:
    """Predict and explain each input: one PNG per readable image in ``out_dir``, an error row
    for each unreadable one, a skipped or out_of_scope row for each DICOM the intended-use
    rules (``scope``; default: the run's, nothing relaxed) refuse, and
    ``out_dir/explanations.csv`` with every row in input order. ``backend``: torch (Grad-CAM)
    or an exported one (its class activation map; no torch needed)."""
    loaded = run_or_loaded if isinstance(run_or_loaded, LoadedRun) else load_run(run_or_loaded)
    scope = scope or IntendedUse.from_card(loaded.card, check=check_folder(loaded.root))
    out_dir = Path(out_dir).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    batch_size = max(1, int(batch_size))
    explainer = _Explainer(loaded, scope, backend)
    rows: list[dict] = []
    for start in range(0, len(paths), batch_size):
        chunk = [str(p) for p in paths[start : start + batch_size]]
        read = [load_screened(p, loaded.preprocess, scope) for p in chunk]
        good = [i for i, s in enumerate(read) if s.pixels is not None]
        done: dict[int, dict] = {}
        if good:
            made = _explain_chunk(explainer, [read[i] for i in good], out_dir, batch_size)
            done = dict(zip(good, made, strict=True))
        for i, s in enumerate(read):
            row = done.get(i) or _row(s.path, None, "", loaded.threshold, s.status, s.reason, "")
            rows.append(row | _estimate_cells(s))
    _write_csv(out_dir / CSV_NAME, rows)
    return rows


class _Explainer:
    """Probabilities and heatmaps of preprocessed films: the torch network and Grad-CAM (its
    layer found once), or an exported backend and its class activation map."""

    def __init__(self, loaded: LoadedRun, scope: IntendedUse, backend: str):
        self.loaded, self.spec = loaded, None
        self.predictor = None
        if backend != "torch":  # the backend's runner now: a missing export is one line
            self.predictor = Predictor(loaded, scope, None, "", backend).ready()
        elif problem := torch_missing("explain with the torch backend (Grad-CAM)"):
            raise problem

    def __call__(self, imgs: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        loaded = self.loaded
        if self.predictor is not None:
            logits = self.predictor.runner.predict_logits(imgs, batch_size)
            return loaded.proba_from_logits(logits), self.predictor.heatmaps(imgs, batch_size)
        from pneumoscope.inference.gradcam import cam_spec, gradcam

        size = loaded.preprocess.img_size
        self.spec = self.spec or cam_spec(loaded.model, size, loaded.in_chans)
        probs = loaded.proba_from_logits(loaded.scorer().predict_logits(imgs, batch_size))
        return probs, gradcam(loaded, imgs, batch_size, self.spec)


def _explain_chunk(explainer: _Explainer, read: list, out_dir: Path, batch_size: int) -> list:
    """Rows (and PNGs) for decoded images: probability, label and heatmap."""
    imgs = np.stack([s.pixels for s in read])
    probs, heats = explainer(imgs, batch_size)
    loaded = explainer.loaded
    thr, names = loaded.threshold, loaded.card.class_names
    rows = []
    for s, prob, heat in zip(read, probs, heats, strict=True):
        label = names[int(prob >= thr)]
        png = out_dir / heatmap_name(s.path)
        save_explanation(png, s.pixels, heat, float(prob), label, thr)
        rows.append(_row(s.path, float(prob), label, thr, "ok", "", str(png)) | {"note": s.reason})
    return rows


def _row(path, prob, label, thr, status, error, heatmap) -> dict:
    values = [path, prob, label, float(thr), status, error, heatmap]
    return dict(zip(CSV_COLUMNS, values, strict=False)) | {"note": ""}


def _estimate_cells(s: Screened) -> dict:
    """The population check's estimate, in the CSV's own columns."""
    est = s.estimate
    return {
        "estimated_age_group": est.group if est else "",
        "adult_probability": est.adult_probability if est else None,
    }


def _write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        prob = "" if r["probability"] is None else f"{r['probability']:.6f}"
        writer.writerow(
            [
                r["path"],
                prob,
                r["label"],
                f"{r['threshold']:.6f}",
                r["status"],
                r["error"],
                r["heatmap"],
                r["note"],
                r["estimated_age_group"],
                "" if r["adult_probability"] is None else f"{r['adult_probability']:.4f}",
            ]
        )
    write_text_atomic(path, buf.getvalue())
