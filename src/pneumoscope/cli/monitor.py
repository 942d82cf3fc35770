"""`pneumoscope monitor`: the live service's audit log against the run it serves."""

from __future__ import annotations

from pathlib import Path

import typer

from pneumoscope.cli.base import app, echo_table
from pneumoscope.monitoring.thresholds import Thresholds

# each limit's help is its settings field's description
HELP = {name: Thresholds.flag_help(name) for name in Thresholds.model_fields}
DEFAULTS = Thresholds()
# the terminal table's columns (monitor.html has them all, with PSI)
HEADER = [
    "window",
    "n",
    "errors",
    "refused",
    "OOD",
    "out pop.",
    "positive",
    "KS D",
    "KS p",
    "verdict",
]


@app.command(
    epilog="Examples:\n\n"
    "  pneumoscope monitor --run runs/fast-cpu --audit-log /var/log/pneumoscope/audit.jsonl\n\n"
    "  pneumoscope monitor --run runs/fast-cpu --audit-log audit.jsonl --by 500 "
    "--labels reads.csv --out monitor/\n\n"
    "  pneumoscope monitor --run runs/fast-cpu --audit-log audit.jsonl --since 2026-12-01 "
    "--reference eval_val/predictions_val.csv --max-ood-rate 0.05\n\n"
    "Exit status: 0 every judged window within its limits, 3 a window crossed one, 2 a "
    "mistake (a missing file, a run without validation predictions).",
)
def monitor(
    run: Path = typer.Option(..., help="The run folder the service serves."),
    audit_log: Path = typer.Option(
        ..., help="The service's audit log ('pneumoscope serve --audit-log FILE')."
    ),
    by: str = typer.Option(
        "day", help="Windows: day (UTC days) or N (every N requests, in the log's order)."
    ),
    out: Path = typer.Option(
        Path("monitor"), help="Folder for monitor.json, monitor.html and the figures."
    ),
    reference: Path = typer.Option(
        None,
        help="Validation predictions to compare with: a CSV with a probability column, "
        "from 'pneumoscope evaluate --split val' or 'pneumoscope predict'. Default: "
        "RUN/predictions_val.csv.",
    ),
    labels: Path = typer.Option(
        None,
        help="Ground truth for some requests: a CSV with request_id and/or sha256 and "
        "label (NORMAL/PNEUMONIA or 0/1); adds observed sensitivity, specificity (Wilson "
        "95% intervals) and calibration.",
    ),
    since: str = typer.Option(
        None, help="Only lines at or after this UTC date or time (e.g. 2026-12-01)."
    ),
    population: str = typer.Option(
        None,
        help="Age groups the model is meant for (child, adult; comma separated) where its "
        "card records none (runs of pneumoscope 0.1.0). Default: the card's population.",
    ),
    drift_alpha: float = typer.Option(DEFAULTS.drift_alpha, help=HELP["drift_alpha"]),
    max_ood_rate: float = typer.Option(DEFAULTS.max_ood_rate, help=HELP["max_ood_rate"]),
    max_refusal_rate: float = typer.Option(
        DEFAULTS.max_refusal_rate, help=HELP["max_refusal_rate"]
    ),
    max_error_rate: float = typer.Option(DEFAULTS.max_error_rate, help=HELP["max_error_rate"]),
    max_out_of_population_rate: float = typer.Option(
        DEFAULTS.max_out_of_population_rate, help=HELP["max_out_of_population_rate"]
    ),
    min_requests: int = typer.Option(DEFAULTS.min_requests, help=HELP["min_requests"]),
) -> None:
    """Watch the model once it is live: reads the service's audit log and reports, per
    day or per N requests, the volume, error, refusal, out-of-distribution,
    out-of-population and positive-call rates and the drift of the probabilities from the
    run's validation (two-sample Kolmogorov-Smirnov test), each against a limit; with
    --labels, the observed sensitivity, specificity and calibration. Writes monitor.json,
    monitor.html and figures into --out. Exit status 3 when a window crosses a limit."""
    from pneumoscope.monitoring.monitor import EXIT_ALERT, MonitorFiles
    from pneumoscope.monitoring.monitor import monitor as run_monitor

    limits = Thresholds(
        drift_alpha=drift_alpha,
        max_ood_rate=max_ood_rate,
        max_refusal_rate=max_refusal_rate,
        max_error_rate=max_error_rate,
        max_out_of_population_rate=max_out_of_population_rate,
        min_requests=min_requests,
    )
    result = run_monitor(run, audit_log, by, out, reference, labels, limits, since, population)
    _echo(result)
    files = MonitorFiles(out)
    typer.echo(f"written to {files.json} and {files.report}")
    for warning in result["warnings"]:
        typer.echo(f"warning: {warning}", err=True)
    if not result["within"]:
        for alert in result["alerts"]:
            typer.echo(f"alert: {alert}", err=True)
        raise typer.Exit(EXIT_ALERT)


def _echo(result: dict) -> None:
    """The windows as a table, then the labelled figures when there are labels."""
    from pneumoscope.monitoring.report import p_value, rate, with_ci

    ref = result["reference"]
    rows = [
        [
            w["window"],
            w["n"],
            rate(w["error_rate"]),
            rate(w["refusal_rate"]),
            rate(w["ood_rate"]),
            rate(w["out_of_population_rate"]),
            rate(w["positive_rate"]),
            rate(w["drift"]["ks_d"]),
            p_value(w["drift"]["ks_p"]),
            w["verdict"].replace(" to judge", ""),
        ]
        for w in result["windows"]
    ]
    echo_table(
        f"{result['model_id']}: validation n={ref['n']}, OOD rate {rate(ref['ood_rate'])}, "
        f"positive-call rate {rate(ref['positive_rate'])}",
        HEADER,
        rows,
    )
    lab = result["labels"]
    if lab is None:
        return
    body = []
    for name, m in [(w["window"], w["labels"]) for w in result["windows"]] + [
        ("all", lab["overall"])
    ]:
        if m and m["n"]:
            body.append(
                [
                    name,
                    m["n"],
                    with_ci(m["sensitivity"], m["sensitivity_ci"]),
                    with_ci(m["specificity"], m["specificity_ci"]),
                    rate(m["ece"]),
                ]
            )
    echo_table(
        f"labelled films ({lab['interval']} intervals)",
        ["window", "labelled", "sensitivity", "specificity", "ECE"],
        body,
    )
