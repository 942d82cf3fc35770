"""report.html: one self-contained page (plots embedded) to attach to a paper or send on."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import cv2
import numpy as np

from pneumoscope.core import __version__
from pneumoscope.core.io import write_text_atomic

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;
margin:24px auto;padding:0 16px;color:#1d2430}
h1{font-size:22px;margin-bottom:2px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid
#dde;padding-bottom:3px}table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid
#d5d9e0;padding:4px 9px;text-align:right}th{background:#f1f3f7}td:first-child,th:first-child
{text-align:left}.note{color:#5a6270;font-size:13px}.warn{background:#fff6e0;border:1px solid
#f0d18a;padding:8px 12px;border-radius:4px}.grid{display:flex;flex-wrap:wrap;gap:12px}
.grid figure{margin:0}.grid img{max-width:520px;width:100%;border:1px solid #e3e6ea}
figcaption{font-size:12px;color:#5a6270}code{background:#f3f4f6;padding:1px 4px}
.thumbs{display:flex;flex-wrap:wrap;gap:8px}.thumbs figure{margin:0;width:132px}
.thumbs img{width:128px;height:128px;border:1px solid #e3e6ea}.thumbs figcaption{
overflow-wrap:anywhere}
"""


def _e(x) -> str:
    return html.escape(str(x))


def _fmt(v) -> str:
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.3f}"
    return _e(v)


def _ci(ci: dict, key: str) -> str:
    lo, hi = ci.get(key, [float("nan"), float("nan")])
    return "" if math.isnan(lo) else f"{lo:.3f} to {hi:.3f}"


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _figure(png: bytes, caption: str) -> str:
    """An embedded PNG with its caption: the page stays one self-contained file."""
    b64 = base64.b64encode(png).decode()
    return (
        f'<figure><img alt="{_e(caption)}" src="data:image/png;base64,{b64}">'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def _img(path: Path, caption: str) -> str:
    return _figure(path.read_bytes(), caption) if path.is_file() else ""


def _thumb(img, caption: str) -> str:
    ok, png = cv2.imencode(".png", np.asarray(img))
    return _figure(png.tobytes(), caption) if ok else ""


def _errors_section(result: dict, cache) -> list[str]:
    """Thumbnails of the most confident errors, as the model saw them (the cached input)."""
    pi = result.get("per_image")
    if not pi:
        return []
    parts = [
        "<h2>Most confident errors</h2>",
        f"<p class='note'>The model's input for each image, with its calibrated probability. "
        f"Every image's probability and outcome is in <code>{_e(pi['csv'])}</code>.</p>",
    ]
    (_, n_fp), (n_fn, _) = result["confusion_matrix"]
    for key, title, total in (
        ("false_positives", "NORMAL called PNEUMONIA (highest probability first)", n_fp),
        ("false_negatives", "PNEUMONIA called NORMAL (lowest probability first)", n_fn),
    ):
        items = pi.get(key, [])
        figs = [
            _thumb(
                cache.images[int(e["index"])], f"{Path(e['path']).name}: p = {e['probability']:.3f}"
            )
            for e in items
        ]
        parts += [f"<h3>{_e(title)}: {len(items)} of {total} shown</h3>"]
        parts += ["<div class='thumbs'>", *figs, "</div>"] if figs else ["<p>None.</p>"]
    return parts


def _limitations(card: dict, result: dict) -> list[str]:
    td = card.get("training_data", {})
    sources = ", ".join(td.get("sources", [])) or "unknown"
    items = [
        f"Trained on images from {sources} only. Performance on other hospitals, scanners, "
        "age groups (for example adults when training data are pediatric), lateral views or "
        "other diseases is unknown until measured on such data.",
        "The threshold and the temperature were chosen on validation images drawn from the "
        "training distribution; recalibrate on local data before relying on either.",
        "Confidence intervals resample patients parsed from file names; images whose names "
        "carry no patient id count as independent patients, which can make intervals too "
        "narrow.",
        "ECE is a binned, upward-biased estimate: resampling inflates it, so its bootstrap "
        "interval can lie above the point estimate; read it as an upper range.",
        "Public X-ray labels come from report review and contain errors; the metrics measure "
        "agreement with those labels, not with a clinical gold standard.",
        "For research and decision support only; not a medical device and not a diagnosis.",
    ]
    val_auroc = card.get("val_metrics", {}).get("val_auroc")
    if val_auroc and result.get("auroc") and val_auroc - result["auroc"] > 0.02:
        items.insert(
            1,
            f"Validation AUROC ({val_auroc:.3f}) is clearly higher than on this "
            f"split ({result['auroc']:.3f}): the evaluated images differ from the "
            "training distribution.",
        )
    return items


def write_report(path: Path, result: dict, loaded, cache) -> None:
    card = loaded.card
    out_dir = path.parent
    labels = result["metric_labels"]
    ci = result.get("ci", {})
    metric_rows = [[labels[k], result[k], _ci(ci, k)] for k in labels]
    counts = cache.info.get("counts", {})
    data_rows = [
        [s, c.get("NORMAL", 0), c.get("PNEUMONIA", 0), c.get("total", 0)] for s, c in counts.items()
    ]
    tr = card.get("training", {})
    pp = card.get("preprocess", {})
    (tn, fp), (fn, tp) = result["confusion_matrix"]
    parts = [
        f"<h1>pneumoscope evaluation: {_e(Path(result['run']).name)} on the "
        f"{_e(result['split'])} split</h1>",
        f"<p class='note'>{_e(result['created'])} &middot; pneumoscope {__version__} &middot; "
        f"run <code>{_e(result['run'])}</code> &middot; data <code>{_e(result['data'])}</code>"
        "</p>",
        "<p class='warn'><b>Intended use:</b> research and decision support. Not a medical "
        "device; not for diagnosis without a clinician.</p>",
        "<h2>Data</h2>",
        _table(["split", "NORMAL", "PNEUMONIA", "total"], data_rows),
        f"<p class='note'>Splits: {_e(cache.info.get('split_note', ''))}. "
        f"Unreadable files rejected at preparation: {cache.info.get('n_rejected', 0)}.</p>",
        "<h2>Model</h2>",
        _table(
            ["item", "value"],
            [
                ["architecture", card.get("architecture")],
                [
                    "input",
                    f"{pp.get('img_size')} px grayscale, CLAHE "
                    f"{'on' if pp.get('clahe') else 'off'}",
                ],
                [
                    "normalisation",
                    "mean "
                    + ", ".join(f"{v:.4f}" for v in card["normalization"]["mean"])
                    + "; std "
                    + ", ".join(f"{v:.4f}" for v in card["normalization"]["std"]),
                ],
                [
                    "training",
                    f"{tr.get('epochs_run')} epochs ({tr.get('stopped_by')}), best epoch "
                    f"{card.get('best_epoch')} by validation AUROC, imbalance "
                    f"{tr.get('imbalance')}, seed {tr.get('seed')}",
                ],
                ["validation AUROC", card.get("val_metrics", {}).get("val_auroc", float("nan"))],
                ["temperature", result["temperature"]],
                ["threshold", f"{result['threshold']:.4f}, policy {result['threshold_policy']}"],
            ],
        ),
        f"<h2>Metrics ({_e(result['split'])}, n = {result['n']}: {result['n_normal']} NORMAL, "
        f"{result['n_pneumonia']} PNEUMONIA)</h2>",
        _table(["metric", "value", "95% CI"], metric_rows),
        f"<p class='note'>Confusion matrix at the threshold: TN {tn}, FP {fp}, FN {fn}, TP {tp}."
        f" {_intervals_note(result['bootstrap'])}</p>",
    ]
    if result.get("operating_points"):
        rows = [
            [
                pol,
                op["threshold"],
                op["sensitivity"],
                op["specificity"],
                op["ppv"],
                op["npv"],
                op["f1"],
            ]
            for pol, op in result["operating_points"].items()
        ]
        parts += [
            "<h2>Operating points (thresholds chosen on validation)</h2>",
            _table(["policy", "threshold", "sensitivity", "specificity", "PPV", "NPV", "F1"], rows),
        ]
    for col, groups in result.get("per_group", {}).items():
        rows = [
            [
                g,
                e["n"],
                e.get("auroc", float("nan")),
                _ci(e.get("ci", {}), "auroc"),
                e.get("sensitivity", float("nan")),
                e.get("specificity", float("nan")),
            ]
            for g, e in groups.items()
        ]
        parts += [
            f"<h2>By {_e(col)}</h2>",
            _table([col, "n", "AUROC", "95% CI", "sensitivity", "specificity"], rows),
        ]
    figs = [
        _img(out_dir / "roc_curve.png", "ROC with the operating point"),
        _img(out_dir / "pr_curve.png", "precision-recall"),
        _img(out_dir / "confusion_matrix.png", "confusion matrix: counts and row rates"),
        _img(
            out_dir / "reliability.png",
            f"reliability on {result['split']}, before and after temperature scaling",
        ),
        _img(out_dir / "probability_histograms.png", "probabilities per true class"),
        _img(loaded.root / "reliability_val.png", "reliability on validation"),
        _img(loaded.root / "curves.png", "training curves"),
    ]
    parts += _errors_section(result, cache)
    parts += [
        "<h2>Plots</h2>",
        "<div class='grid'>",
        *figs,
        "</div>",
        "<h2>Limitations</h2>",
        "<ul>" + "".join(f"<li>{_e(x)}</li>" for x in _limitations(card, result)) + "</ul>",
    ]
    page = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>pneumoscope "
        f"report</title><style>{CSS}</style></head><body>{''.join(parts)}</body></html>"
    )
    write_text_atomic(path, page)


def _intervals_note(b: dict) -> str:
    if not b.get("replicates"):
        return "No intervals: evaluated with --bootstrap 0."
    unit = _unit_label(b.get("resampling_unit", "patient"))
    return (
        f"Intervals: percentile bootstrap, {b['replicates']} replicates resampling "
        f"{b['n_patients']} {unit}."
    )


def _unit_label(unit: str) -> str:
    return "patient groups (a patient's images and their copies)" if unit == "group" else "patients"
