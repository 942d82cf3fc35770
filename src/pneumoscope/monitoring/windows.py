"""The traffic cut into windows (a UTC day, or N consecutive audit lines), each window's
figures, and each judged against the thresholds.

Drift: the two-sample Kolmogorov-Smirnov test (scipy) between a window's probabilities and
the reference's. It needs no bins, its p-value accounts for both sample sizes (a window of
40 films and one of 4,000 are judged on the same scale of evidence), and the statistic D
(the largest gap between the two cumulative distributions) says how large the shift is.
The Population Stability Index is reported beside it for those used to it, not judged: it
has no sample size in it, and with no shift at all a window of 40 films drawn from the
reference's own distribution scores 0.35 on average (10 bins; 0.10 for 100 films, 0.03 for
400: simulated), over its usual 0.25 alarm.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.stats import ks_2samp

from pneumoscope.core.errors import UserError
from pneumoscope.monitoring.audit import ANALYSED, ERROR, REFUSED
from pneumoscope.monitoring.reference import MonitoredRun, Reference
from pneumoscope.monitoring.thresholds import RATE_CHECKS, Thresholds

PSI_BINS = 10
PSI_FLOOR = 1e-4  # a bin's share, so that an empty bin does not make the index infinite


def parse_by(text: str) -> int | None:
    """``--by``: ``day`` (None) or a number of audit lines per window."""
    if str(text).strip().lower() == "day":
        return None
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise UserError(f"--by {text!r}: give 'day' or a number of requests per window")
    return n


def cut(records: pd.DataFrame, per: int | None) -> list[tuple[str, pd.DataFrame]]:
    """(label, rows) per window, in order: UTC days, or ``per`` lines at a time (the last
    window may be shorter)."""
    if per is None:
        days = records["time"].dt.strftime("%Y-%m-%d")
        return [(day, rows) for day, rows in records.groupby(days, sort=True)]
    return [
        (f"{start + 1}-{min(start + per, len(records))}", records.iloc[start : start + per])
        for start in range(0, len(records), per)
    ]


@dataclass
class Window:
    """One window's figures (rates are shares of their own denominators; None where a
    denominator is empty or the figure unknown) and the verdict."""

    label: str
    first: str
    last: str
    n: int
    analysed: int
    errors: int
    client_errors: int  # 4xx answers among the errors (unreadable uploads, 401, 408, 413)
    server_errors: int  # 5xx
    refusals: int
    out_of_scope: int
    skipped: int
    ood: int
    ood_known: int
    estimated: dict[str, int]
    out_of_population: int | None
    positives: int
    probability_median: float | None
    ks_d: float | None
    ks_p: float | None
    psi: float | None
    judged: bool = True
    alerts: list[str] = field(default_factory=list)
    labels: dict | None = None  # sensitivity, specificity, ... (monitoring.labels)

    @property
    def error_rate(self) -> float | None:
        return _rate(self.errors, self.n)

    @property
    def refusal_rate(self) -> float | None:
        return _rate(self.refusals, self.n)

    @property
    def ood_rate(self) -> float | None:
        return _rate(self.ood, self.ood_known)

    @property
    def out_of_population_rate(self) -> float | None:
        if self.out_of_population is None:
            return None
        return _rate(self.out_of_population, sum(self.estimated.values()))

    @property
    def positive_rate(self) -> float | None:
        return _rate(self.positives, self.analysed)

    @property
    def verdict(self) -> str:
        if not self.judged:
            return "too few to judge"
        return "ALERT" if self.alerts else "within"

    def to_dict(self) -> dict:
        return {
            "window": self.label,
            "first": self.first,
            "last": self.last,
            "n": self.n,
            "analysed": self.analysed,
            "errors": self.errors,
            "client_errors": self.client_errors,
            "server_errors": self.server_errors,
            "error_rate": self.error_rate,
            "refusals": self.refusals,
            "out_of_scope": self.out_of_scope,
            "skipped": self.skipped,
            "refusal_rate": self.refusal_rate,
            "ood": self.ood,
            "ood_rate": self.ood_rate,
            "estimated_age_groups": self.estimated,
            "out_of_population": self.out_of_population,
            "out_of_population_rate": self.out_of_population_rate,
            "positives": self.positives,
            "positive_rate": self.positive_rate,
            "probability_median": self.probability_median,
            "drift": {"ks_d": self.ks_d, "ks_p": self.ks_p, "psi": self.psi},
            "labels": self.labels,
            "verdict": self.verdict,
            "alerts": self.alerts,
        }


def _rate(k: int, n: int) -> float | None:
    return k / n if n else None


def window_figures(
    label: str, rows: pd.DataFrame, run: MonitoredRun, reference: Reference
) -> Window:
    """The figures of one window's rows."""
    status = rows["status"].astype(str)
    http = rows["http_status"]
    analysed = (status == ANALYSED) & rows["probability"].notna()
    refused = status.isin(REFUSED)
    error = (status == ERROR) | ((http >= 400) & ~refused)
    ood_known = analysed & rows["ood"].isin([True, False])
    group = rows["estimated_age_group"].where(rows["estimated_age_group"].notna(), "")
    estimated = {str(g): int(c) for g, c in group[group != ""].value_counts().items()}
    outside = None
    if run.population_groups is not None:
        outside = sum(c for g, c in estimated.items() if g not in run.population_groups)
    p = rows.loc[analysed, "probability"].to_numpy(dtype=float)
    ks_d, ks_p = _ks(p, reference.probabilities)
    times = rows["time"].dropna()
    return Window(
        label=label,
        first=times.min().isoformat() if len(times) else "",
        last=times.max().isoformat() if len(times) else "",
        n=len(rows),
        analysed=int(analysed.sum()),
        errors=int(error.sum()),
        client_errors=int((error & (http >= 400) & (http < 500)).sum()),
        server_errors=int((error & (http >= 500)).sum()),
        refusals=int(refused.sum()),
        out_of_scope=int((status == "out_of_scope").sum()),
        skipped=int((status == "skipped").sum()),
        ood=int((ood_known & rows["ood"].isin([True])).sum()),
        ood_known=int(ood_known.sum()),
        estimated=estimated,
        out_of_population=outside,
        positives=int((rows.loc[analysed, "label"] == run.positive_class).sum()),
        probability_median=float(np.median(p)) if len(p) else None,
        ks_d=ks_d,
        ks_p=ks_p,
        psi=psi(p, reference.probabilities) if len(p) else None,
    )


def _ks(p: np.ndarray, ref: np.ndarray) -> tuple[float | None, float | None]:
    if len(p) == 0:
        return None, None
    res = ks_2samp(p, ref)
    return float(res.statistic), float(res.pvalue)


def psi(p: np.ndarray, ref: np.ndarray, bins: int = PSI_BINS) -> float:
    """Population Stability Index of ``p`` against ``ref`` on the reference's deciles:
    sum over bins of (share - ref share) * ln(share / ref share)."""
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
    expected = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=len(edges) + 1)
    actual = np.bincount(np.searchsorted(edges, p, side="right"), minlength=len(edges) + 1)
    e = np.maximum(expected / len(ref), PSI_FLOOR)
    a = np.maximum(actual / len(p), PSI_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def judge(window: Window, limits: Thresholds) -> None:
    """Set ``judged`` and the alerts: each rate over its limit, and drift."""
    window.judged = window.n >= limits.min_requests
    window.alerts = []
    if not window.judged:
        return
    for figure, limit_name, name in RATE_CHECKS:
        value, limit = getattr(window, figure), getattr(limits, limit_name)
        if value is not None and value > limit:
            window.alerts.append(f"{name} {value:.3f} > {limit:g}")
    if window.ks_p is not None and window.ks_p < limits.drift_alpha:
        window.alerts.append(
            f"probabilities drifted from validation (KS D {window.ks_d:.3f}, "
            f"p {window.ks_p:.2g} < {limits.drift_alpha:g})"
        )
