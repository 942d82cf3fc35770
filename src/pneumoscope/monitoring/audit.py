"""The service's audit log read back: one record per line, a line that is not one counted.

`serve --audit-log FILE` appends one JSON object per outcome (``serving/audit.py``): time,
request_id, client, sha256, size, model_id, probability, label, ood, estimated_age_group,
adult_probability, latency_ms, status (ok | error | skipped | out_of_scope) and
http_status. A log is read as it is, line by line: a line cut short by a crash, or
anything else that is not such an object, is counted and skipped, never fatal.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from pneumoscope.core.errors import UserError

COLUMNS = (
    "time",
    "request_id",
    "sha256",
    "model_id",
    "probability",
    "label",
    "ood",
    "estimated_age_group",
    "adult_probability",
    "latency_ms",
    "status",
    "http_status",
)
ANALYSED = "ok"
REFUSED = ("skipped", "out_of_scope")  # the intended-use rules' refusals: no error
ERROR = "error"


@dataclass
class AuditRecords:
    """The log's records in file order (``COLUMNS``, ``time`` as UTC timestamps) and what
    was left out, by reason."""

    path: Path
    records: pd.DataFrame
    bad_lines: int = 0  # not JSON, not an object, no status
    no_time: int = 0  # a time needed (--by day, --since) but missing or unreadable
    before_since: int = 0
    other_models: dict[str, int] = field(default_factory=dict)  # model id -> lines left out

    @property
    def lines_read(self) -> int:
        left_out = self.bad_lines + self.no_time + self.before_since
        return len(self.records) + left_out + sum(self.other_models.values())


def parse_since(text: str | None) -> datetime | None:
    """``--since``: an ISO date or date and time (UTC unless it names its zone)."""
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise UserError(
            f"--since {text!r} is not an ISO date or time (e.g. 2026-12-01 or 2026-12-01T08:00)"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def read_audit_log(
    path: str | Path, need_time: bool = False, since: datetime | None = None
) -> AuditRecords:
    """Every record of the log at ``path``; ``need_time`` (windows by day) and ``since``
    leave out the records without a readable time, ``since`` those before it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(
            f"audit log not found: {path} (the service writes it with "
            "'pneumoscope serve --audit-log FILE')"
        )
    rows, bad = [], 0
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                record = _record(line)
                if record is None:
                    bad += line.strip() != ""
                else:
                    rows.append(record)
    except OSError as exc:
        raise UserError(f"cannot read the audit log {path}: {exc.strerror or exc}") from None
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    df["time"] = pd.to_datetime(df["time"], utc=True, errors="coerce", format="ISO8601")
    df["probability"] = pd.to_numeric(df["probability"], errors="coerce")
    df["adult_probability"] = pd.to_numeric(df["adult_probability"], errors="coerce")
    df["http_status"] = pd.to_numeric(df["http_status"], errors="coerce")
    out = AuditRecords(path, df, bad_lines=bad)
    if need_time or since is not None:
        timed = df["time"].notna()
        out.no_time = int((~timed).sum())
        df = df[timed]
    if since is not None:
        after = df["time"] >= pd.Timestamp(since)
        out.before_since = int((~after).sum())
        df = df[after]
    out.records = df.reset_index(drop=True)
    return out


def _record(line: str) -> dict | None:
    """The line's record, or None when it is no audit record."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("status"), str):
        return None
    return {k: record.get(k) for k in COLUMNS}


def keep_model(audit: AuditRecords, weights_prefix: str, model_id: str) -> None:
    """Leave out the records of another model than the run's (a model id ``NAME@HASH``
    whose hash is not the start of the run's weights' SHA-256; the folder name may
    differ where the run was copied). Records without a model id stay."""
    ids = audit.records["model_id"]
    digest = ids.map(lambda v: str(v).rpartition("@")[2] if isinstance(v, str) else None)
    other = digest.notna() & (digest != weights_prefix)
    if not other.any():
        return
    audit.other_models = {str(k): int(v) for k, v in ids[other].value_counts().items()}
    audit.records = audit.records[~other].reset_index(drop=True)
    if audit.records.empty:
        found = ", ".join(f"{k} ({count_lines(v)})" for k, v in audit.other_models.items())
        raise UserError(
            f"no line of {audit.path} is from the run's model {model_id}: the log holds "
            f"{found}; give --run the run that served it"
        )


def count_lines(n: int) -> str:
    return "1 line" if n == 1 else f"{n} lines"
