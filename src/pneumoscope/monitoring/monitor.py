"""`pneumoscope monitor`: the service's audit log, window by window, against the run's
validation: volume, errors, refusals, OOD and out-of-population films, positive calls and
the drift of the probabilities, each judged against a limit; with labels, the observed
sensitivity, specificity and calibration. Writes monitor.json, the figures and
monitor.html into one folder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from pneumoscope.core import __version__
from pneumoscope.core.errors import UserError
from pneumoscope.core.io import write_json_atomic
from pneumoscope.monitoring import plots
from pneumoscope.monitoring.audit import (
    ANALYSED,
    AuditRecords,
    count_lines,
    keep_model,
    parse_since,
    read_audit_log,
)
from pneumoscope.monitoring.labels import join_labels, labelled_figures, read_labels, reliability
from pneumoscope.monitoring.reference import MonitoredRun, Reference, load_reference
from pneumoscope.monitoring.report import write_report
from pneumoscope.monitoring.thresholds import Thresholds
from pneumoscope.monitoring.windows import cut, judge, parse_by, window_figures

EXIT_ALERT = 3  # a window crossed a limit (0: all within; 2: a user mistake)


@dataclass(frozen=True)
class MonitorFiles:
    """What `monitor` writes into its --out folder."""

    root: Path

    JSON: ClassVar[str] = "monitor.json"
    REPORT: ClassVar[str] = "monitor.html"
    RATES: ClassVar[str] = "monitor_rates.png"
    HISTOGRAMS: ClassVar[str] = "monitor_histograms.png"
    RELIABILITY: ClassVar[str] = "monitor_reliability.png"

    @property
    def json(self) -> Path:
        return self.root / self.JSON

    @property
    def report(self) -> Path:
        return self.root / self.REPORT

    @property
    def rates(self) -> Path:
        return self.root / self.RATES

    @property
    def histograms(self) -> Path:
        return self.root / self.HISTOGRAMS

    @property
    def reliability(self) -> Path:
        return self.root / self.RELIABILITY


def monitor(
    run: str | Path,
    audit_log: str | Path,
    by: str = "day",
    out: str | Path = "monitor",
    reference: str | Path | None = None,
    labels: str | Path | None = None,
    limits: Thresholds | None = None,
    since: str | None = None,
    population: str | None = None,
) -> dict[str, Any]:
    """The monitor's result (monitor.json's content), its files written into ``out``."""
    limits = limits or Thresholds()
    per = parse_by(by)
    since_time = parse_since(since)
    target = MonitoredRun.load(run, population)
    ref = load_reference(target, reference)
    truth = read_labels(labels) if labels else None
    audit = read_audit_log(audit_log, need_time=per is None, since=since_time)
    keep_model(audit, target.weights_prefix, target.model_id)
    records = audit.records
    if records.empty:
        after = f" since {since_time.isoformat()}" if since_time else ""
        raise UserError(f"no audit records in {audit.path}{after}: nothing to monitor")
    y = join_labels(records, truth) if truth is not None else None
    windows, window_probs = [], []
    for label, rows in cut(records, per):
        w = window_figures(label, rows, target, ref)
        analysed = (rows["status"] == ANALYSED) & rows["probability"].notna()
        if y is not None:
            w.labels = _labelled(rows[analysed], y, target.threshold)
        judge(w, limits)
        windows.append(w)
        window_probs.append(rows.loc[analysed, "probability"].to_numpy(dtype=float))
    analysed = (records["status"] == ANALYSED) & records["probability"].notna()
    result = _clean(
        {
            "run": str(target.root),
            "model_id": target.model_id,
            "audit_log": str(audit.path),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "pneumoscope_version": __version__,
            "by": "day" if per is None else per,
            "since": since_time.isoformat() if since_time else None,
            "threshold": target.threshold,
            "positive_class": target.positive_class,
            "population": {
                "age_groups": list(target.population_groups or []) or None,
                "from": target.population_from,
            },
            "thresholds": limits.to_dict(),
            "drift_statistic": (
                "two-sample Kolmogorov-Smirnov test of the window's probabilities against "
                "the reference's (scipy.stats.ks_2samp); drifted when p < drift_alpha"
            ),
            "reference": ref.to_dict(),
            "lines": _lines(audit),
            "windows": [w.to_dict() for w in windows],
            "labels": (
                None
                if y is None
                else _overall_labels(records[analysed], y, target.threshold, labels)
            ),
            "alerts": [f"{w.label}: {a}" for w in windows for a in w.alerts],
            "within": not any(w.alerts for w in windows),
            "warnings": _warnings(audit, ref, target, limits, y, records[analysed]),
        }
    )
    _write(MonitorFiles(Path(out).expanduser()), result, window_probs, ref)
    return result


def _labelled(rows: pd.DataFrame, y: pd.Series, threshold: float) -> dict:
    known = y.loc[rows.index].notna()
    sel = rows[known.to_numpy()]
    return labelled_figures(y.loc[sel.index].to_numpy(), sel["probability"], threshold)


def _overall_labels(rows: pd.DataFrame, y: pd.Series, threshold: float, path) -> dict:
    known = y.loc[rows.index].notna().to_numpy()
    sel = rows[known]
    yy, pp = y.loc[sel.index].to_numpy(dtype=int), sel["probability"].to_numpy(dtype=float)
    return {
        "csv": str(path),
        "overall": labelled_figures(yy, pp, threshold),
        "reliability": reliability(yy, pp) if len(yy) else [],
        "interval": "Wilson score, 95%",
    }


def _lines(audit: AuditRecords) -> dict:
    return {
        "read": audit.lines_read,
        "used": len(audit.records),
        "not_records": audit.bad_lines,
        "no_time": audit.no_time,
        "before_since": audit.before_since,
        "other_models": audit.other_models,
    }


def _warnings(
    audit: AuditRecords,
    ref: Reference,
    target: MonitoredRun,
    limits: Thresholds,
    y: pd.Series | None,
    analysed: pd.DataFrame,
) -> list[str]:
    out = list(ref.warnings)
    if audit.bad_lines:
        out.append(
            f"{audit.path}: {_lines_are(audit.bad_lines)} not audit records (not JSON, or no "
            "status), counted and skipped"
        )
    if audit.other_models:
        ids = ", ".join(f"{k} ({count_lines(v)})" for k, v in audit.other_models.items())
        out.append(
            f"{audit.path} also holds lines of another model than {target.model_id}: {ids}; "
            "left out (monitor them with --run of that model)"
        )
    if audit.no_time:
        out.append(f"{audit.path}: {_lines_are(audit.no_time)} without a readable time, left out")
    if ref.ood_rate is not None and ref.ood_rate >= limits.max_ood_rate:
        out.append(
            f"the run's validation OOD rate ({ref.ood_rate:.3f}, {ref.ood_from}) is not below "
            f"--max-ood-rate {limits.max_ood_rate:g}: traffic like validation's would alarm; "
            "raise the limit"
        )
    if target.population_groups is None:
        out.append(
            "the model card records no training population (a run of pneumoscope 0.1.0): "
            "the out-of-population rate is not measured; name the groups the model is meant "
            "for with --population child (or child,adult)"
        )
    if y is not None and not y.loc[analysed.index].notna().any():
        out.append("no analysed film of the log found its label in the labels file")
    return out


def _lines_are(n: int) -> str:
    return "1 line is" if n == 1 else f"{n} lines are"


def _write(files: MonitorFiles, result: dict, window_probs: list, ref: Reference) -> None:
    files.root.mkdir(parents=True, exist_ok=True)
    write_json_atomic(files.json, result)
    plots.rates(result["windows"], result["thresholds"], result["reference"], files.rates)
    plots.histograms(result["windows"], window_probs, ref.probabilities, files.histograms)
    lab = result["labels"]
    if lab and lab["reliability"]:
        plots.reliability(lab["reliability"], lab["overall"].get("ece"), files.reliability)
    else:
        files.reliability.unlink(missing_ok=True)  # not a stale one from an earlier report
    write_report(files.report, result, files)


def _clean(value: Any) -> Any:
    """Strict JSON: NaN and infinities as null, NumPy scalars as Python numbers."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
