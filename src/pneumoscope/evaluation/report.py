"""report.html: one self-contained page (plots embedded) to attach to a paper or send on.

The page is the template templates/report.html.j2; this module gathers what it shows.
"""

from __future__ import annotations

import base64
import functools
import math
from pathlib import Path

import cv2
import jinja2
import numpy as np

from pneumoscope.core import __version__
from pneumoscope.core.io import write_text_atomic
from pneumoscope.data.cache import Cache
from pneumoscope.model.contract import ModelCard, RunFiles
from pneumoscope.model.run import LoadedRun

# the operating-point table's columns after the policy (metrics.json's keys)
OPERATING_COLUMNS = ("threshold", "sensitivity", "specificity", "ppv", "npv", "f1")


@functools.cache
def _templates() -> jinja2.Environment:
    """The package's HTML templates, found in an installed wheel as in a checkout; every
    value is escaped, and a value the template names but the context lacks is an error."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("pneumoscope.evaluation", "templates"),
        autoescape=jinja2.select_autoescape(["html", "html.j2"]),
        undefined=jinja2.StrictUndefined,
    )
    env.filters["cell"] = _cell
    return env


def _cell(v):
    """A table cell: floats with three decimals (n/a for NaN), anything else as it is."""
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.3f}"
    return v


def _ci(ci: dict, key: str) -> str:
    lo, hi = ci.get(key, [float("nan"), float("nan")])
    return "" if math.isnan(lo) else f"{lo:.3f} to {hi:.3f}"


def write_report(path: Path, result: dict, loaded: LoadedRun, cache: Cache) -> None:
    """report.html at ``path`` for an evaluation ``result`` (metrics.json's content); the
    plots are read from ``path``'s folder and the run, the error thumbnails from the cache."""
    card = _card_view(loaded.card)
    context = {
        **_heading(result),
        **_data_section(cache),
        "model_rows": _model_rows(card, result),
        **_metrics_section(result),
        "errors": _errors_section(result, cache),
        "figures": _figures(RunFiles(path.parent), loaded.files, result["split"]),
        **_limitations(card, result),
    }
    write_text_atomic(path, _templates().get_template("report.html.j2").render(context))


def _card_view(card: ModelCard) -> dict:
    """What the page shows of the model card (the typed card gives every field its default)."""
    spec = card.input
    return {
        "architecture": card.architecture,
        "img_size": spec.img_size,
        "clahe": bool(spec.preprocess.clahe),
        "mean": list(spec.normalization.mean),
        "std": list(spec.normalization.std),
        "epochs_run": card.training.epochs_run,
        "stopped_by": card.training.stopped_by,
        "best_epoch": card.best_epoch,
        "imbalance": card.training.imbalance,
        "seed": card.training.seed,
        "val_auroc": _or_nan(card.validation.auroc),
        "training_sources": list(card.training_data.sources),
    }


# --- sections, in page order ----------------------------------------------------------------


def _heading(result: dict) -> dict:
    return {
        "run_name": Path(result["run"]).name,
        "split": result["split"],
        "created": result["created"],
        "version": __version__,
        "run": result["run"],
        "data": result["data"],
    }


def _data_section(cache) -> dict:
    counts = cache.info.counts
    return {
        "data_rows": [
            [s, c.get("NORMAL", 0), c.get("PNEUMONIA", 0), c.get("total", 0)]
            for s, c in counts.items()
        ],
        "split_note": cache.info.split_note,
        "n_rejected": cache.info.n_rejected,
    }


def _model_rows(card: dict, result: dict) -> list[list]:
    norm = "mean " + ", ".join(f"{v:.4f}" for v in card["mean"])
    norm += "; std " + ", ".join(f"{v:.4f}" for v in card["std"])
    training = (
        f"{card['epochs_run']} epochs ({card['stopped_by']}), best epoch {card['best_epoch']} "
        f"by validation AUROC, imbalance {card['imbalance']}, seed {card['seed']}"
    )
    return [
        ["architecture", card["architecture"]],
        ["input", f"{card['img_size']} px grayscale, CLAHE {'on' if card['clahe'] else 'off'}"],
        ["normalisation", norm],
        ["training", training],
        ["validation AUROC", card["val_auroc"]],
        ["temperature", result["temperature"]],
        ["threshold", f"{result['threshold']:.4f}, policy {result['threshold_policy']}"],
    ]


def _metrics_section(result: dict) -> dict:
    """The metrics with their intervals, the confusion matrix, the operating points and the
    per-group tables."""
    labels = result["metric_labels"]
    ci = result.get("ci", {})
    (tn, fp), (fn, tp) = result["confusion_matrix"]
    b = result["bootstrap"]
    return {
        "n": result["n"],
        "n_normal": result["n_normal"],
        "n_pneumonia": result["n_pneumonia"],
        "metric_rows": [[labels[k], result[k], _ci(ci, k)] for k in labels],
        "tn": tn,
        "fp": fp,
        "fn": fn,
        "tp": tp,
        "bootstrap": {
            "replicates": b.get("replicates"),
            "n_patients": b.get("n_patients"),
            "unit": b.get("resampling_unit", "patient"),
        },
        "operating_rows": [
            [pol, *(op[k] for k in OPERATING_COLUMNS)]
            for pol, op in (result.get("operating_points") or {}).items()
        ],
        "group_tables": [
            (col, _group_rows(groups)) for col, groups in result.get("per_group", {}).items()
        ],
    }


def _group_rows(groups: dict) -> list[list]:
    nan = float("nan")
    return [
        [
            g,
            e["n"],
            e.get("auroc", nan),
            _ci(e.get("ci", {}), "auroc"),
            e.get("sensitivity", nan),
            e.get("specificity", nan),
        ]
        for g, e in groups.items()
    ]


def _errors_section(result: dict, cache) -> dict | None:
    """Thumbnails of the most confident errors, as the model saw them (the cached input)."""
    pi = result.get("per_image")
    if not pi:
        return None
    (_, n_fp), (n_fn, _) = result["confusion_matrix"]
    sections = []
    for key, title, total in (
        ("false_positives", "NORMAL called PNEUMONIA (highest probability first)", n_fp),
        ("false_negatives", "PNEUMONIA called NORMAL (lowest probability first)", n_fn),
    ):
        items = pi.get(key, [])
        thumbs = [_thumb(cache.images[int(e["index"])], _error_caption(e)) for e in items]
        sections.append(
            {
                "title": title,
                "total": total,
                "n_shown": len(items),
                "figures": [t for t in thumbs if t],
            }
        )
    return {"csv": pi["csv"], "sections": sections}


def _error_caption(e: dict) -> str:
    return f"{Path(e['path']).name}: p = {e['probability']:.3f}"


def _figures(out: RunFiles, run: RunFiles, split: str) -> list[dict]:
    """The evaluation's plots (beside the page) and the run's (from training); a missing
    file is left out."""
    figs = [
        _img(out.roc, "ROC with the operating point"),
        _img(out.pr, "precision-recall"),
        _img(out.confusion, "confusion matrix: counts and row rates"),
        _img(out.reliability, f"reliability on {split}, before and after temperature scaling"),
        _img(out.histograms, "probabilities per true class"),
        _img(run.reliability_val, "reliability on validation"),
        _img(run.curves, "training curves"),
    ]
    return [f for f in figs if f]


def _limitations(card: dict, result: dict) -> dict:
    """What the Limitations list needs: the training sources, and the validation AUROC when
    it is clearly above this split's (the evaluated images then differ from training)."""
    val_auroc = card["val_auroc"]
    gap = bool(val_auroc and result.get("auroc") and val_auroc - result["auroc"] > 0.02)
    return {
        "training_sources": ", ".join(card["training_sources"]) or "unknown",
        "val_auroc_gap": gap,
        "val_auroc": val_auroc,
        "auroc": result.get("auroc"),
    }


# --- embedded images ------------------------------------------------------------------------


def _figure(png: bytes, caption: str) -> dict:
    """An embedded PNG with its caption: the page stays one self-contained file."""
    return {"png": base64.b64encode(png).decode(), "caption": caption}


def _img(path: Path, caption: str) -> dict | None:
    return _figure(path.read_bytes(), caption) if path.is_file() else None


def _thumb(img, caption: str) -> dict | None:
    ok, png = cv2.imencode(".png", np.asarray(img))
    return _figure(png.tobytes(), caption) if ok else None


def _or_nan(value: float | None) -> float:
    return float("nan") if value is None else value
