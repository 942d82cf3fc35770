"""monitor.html: one self-contained page (figures embedded) for whoever watches the model.

The page is the template templates/monitor.html.j2; this module turns monitor.json's content
into the rows it shows.
"""

from __future__ import annotations

import base64
import functools
from pathlib import Path

import jinja2

from pneumoscope.core.io import write_text_atomic
from pneumoscope.monitoring.thresholds import RATE_CHECKS, Thresholds


@functools.cache
def _templates() -> jinja2.Environment:
    """The package's templates, found in a wheel as in a checkout; every value escaped, a
    value the template names but the context lacks an error."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader("pneumoscope.monitoring", "templates"),
        autoescape=jinja2.select_autoescape(["html", "html.j2"]),
        undefined=jinja2.StrictUndefined,
    )


def rate(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def p_value(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2g}"


def with_ci(v: float | None, ci: list[float] | None) -> str:
    if v is None:
        return "n/a"
    return f"{v:.3f}" + ("" if not ci else f" ({ci[0]:.3f} to {ci[1]:.3f})")


def write_report(path: Path, result: dict, files) -> None:
    """monitor.html at ``path``; the figures are read from ``files`` (MonitorFiles)."""
    context = {
        "r": result,
        "run_name": Path(result["run"]).name,
        "by": "UTC day" if result["by"] == "day" else f"{result['by']} requests",
        "limit_rows": _limit_rows(result["thresholds"]),
        "reference_rows": _reference_rows(result["reference"]),
        "val_ood": rate(result["reference"]["ood_rate"]),
        "val_positive": rate(result["reference"]["positive_rate"]),
        "line_rows": _line_rows(result["lines"]),
        "window_rows": [_window_row(w) for w in result["windows"]],
        "labels": _labels(result),
        "figures": [
            f
            for f in (
                _img(files.rates, "rates over the windows: limits dashed, validation dotted"),
                _img(files.histograms, "each window's probabilities against validation's"),
                _img(files.reliability, "observed calibration of the labelled films"),
            )
            if f
        ],
    }
    write_text_atomic(path, _templates().get_template("monitor.html.j2").render(context))


def _limit_rows(limits: dict) -> list[list[str]]:
    """[what, limit, flag] per limit."""
    rows = [[name, key] for _, key, name in RATE_CHECKS]
    rows += [["drift: KS p-value below", "drift_alpha"], ["judged from (lines)", "min_requests"]]
    return [[name, f"{limits[key]:g}", Thresholds.flag(key)] for name, key in rows]


def _reference_rows(ref: dict) -> list[list[str]]:
    return [
        ["predictions", ref["csv"]],
        ["films", str(ref["n"])],
        ["positive-call rate", rate(ref["positive_rate"])],
        ["true PNEUMONIA share", rate(ref["prevalence"])],
        ["OOD rate", f"{rate(ref['ood_rate'])} ({ref['ood_rate_from'] or 'unknown'})"],
    ]


def _line_rows(lines: dict) -> list[list[str]]:
    rows = [
        ["lines read", lines["read"]],
        ["used", lines["used"]],
        ["not audit records (skipped)", lines["not_records"]],
        ["without a readable time (left out)", lines["no_time"]],
        ["before --since", lines["before_since"]],
    ]
    rows += [[f"of another model: {k}", v] for k, v in lines["other_models"].items()]
    return [[k, str(v)] for k, v in rows]


def _window_row(w: dict) -> dict:
    d = w["drift"]
    return {
        "alert": bool(w["alerts"]),
        "cells": [
            w["window"],
            str(w["n"]),
            str(w["analysed"]),
            rate(w["error_rate"]),
            rate(w["refusal_rate"]),
            rate(w["ood_rate"]),
            rate(w["out_of_population_rate"]),
            rate(w["positive_rate"]),
            rate(d["ks_d"]),
            p_value(d["ks_p"]),
            rate(d["psi"]),
            w["verdict"],
        ],
        "alerts": w["alerts"],
    }


def _labels(result: dict) -> dict | None:
    lab = result["labels"]
    if lab is None:
        return None

    def row(name: str, m: dict | None) -> list[str]:
        m = m or {"n": 0}
        if not m["n"]:
            return [name, "0", "", "", "", ""]
        return [
            name,
            str(m["n"]),
            with_ci(m["sensitivity"], m["sensitivity_ci"]),
            with_ci(m["specificity"], m["specificity_ci"]),
            rate(m["auroc"]),
            rate(m["ece"]),
        ]

    rows = [row(w["window"], w["labels"]) for w in result["windows"]]
    rows.append(row("all windows", lab["overall"]))
    bins = [
        [
            f"{b['bin'][0]:.2f}-{b['bin'][1]:.2f}",
            str(b["n"]),
            f"{b['mean_probability']:.3f}",
            with_ci(b["observed_rate"], b["observed_ci"]),
        ]
        for b in lab["reliability"]
    ]
    return {"csv": lab["csv"], "rows": rows, "bins": bins, "interval": lab["interval"]}


def _img(path: Path, caption: str) -> dict | None:
    if not path.is_file():
        return None
    return {"png": base64.b64encode(path.read_bytes()).decode(), "caption": caption}
