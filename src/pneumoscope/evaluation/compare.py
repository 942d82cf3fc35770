"""`pneumoscope compare`: several runs' evaluations side by side, as a table and markdown."""

from __future__ import annotations

import math
from pathlib import Path

from pneumoscope.core.errors import UserError
from pneumoscope.core.io import write_text_atomic
from pneumoscope.evaluation.record import EvaluationRecord
from pneumoscope.model.contract import RunFiles, read_card

COLUMNS = (
    "auroc",
    "auprc",
    "accuracy",
    "balanced_accuracy",
    "sensitivity",
    "specificity",
    "f1",
    "brier",
    "ece",
)


def _cell(m: EvaluationRecord, key: str) -> str:
    v = m.figure(key)
    if v is None:
        return "n/a"
    lo, hi = m.ci.get(key, (float("nan"), float("nan")))
    return f"{v:.3f}" if math.isnan(lo) else f"{v:.3f} ({lo:.3f}-{hi:.3f})"


def collect(runs: list[str | Path], metrics_name: str = RunFiles.METRICS) -> list[dict]:
    rows = []
    for run in runs:
        run = Path(run).expanduser()
        card = read_card(run)
        mpath = run / metrics_name
        if not mpath.is_file():
            raise UserError(
                f"{mpath} not found: run 'pneumoscope evaluate --run {run} --data DATA' first"
            )
        m = EvaluationRecord.read(mpath)
        rows.append(
            {
                "run": run.name,
                "model": f"{card.architecture} {card.input.img_size}px",
                "split": f"{m.split} (n={m.n})",
                "threshold": f"{m.threshold:.3f} {m.threshold_policy.split(' ')[0]}",
                **{k: _cell(m, k) for k in COLUMNS},
            }
        )
    return rows


def transpose(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Runs as columns, fields as rows: reads well however many metrics there are."""
    header = ["", *(r["run"] for r in rows)]
    return header, [[k, *(str(r[k]) for r in rows)] for k in rows[0] if k != "run"]


def to_markdown(rows: list[dict]) -> str:
    header, body = transpose(rows)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines) + "\n"


def compare(runs: list[str | Path], out: str | Path | None = None) -> list[dict]:
    if not runs:
        raise UserError("give at least one run folder")
    rows = collect(runs)
    if out:
        write_text_atomic(out, to_markdown(rows))
    return rows
