"""The audit log: one JSON line per prediction request outcome, nothing that names a person.

A line holds the time, request id, client address, the input's SHA-256 and size, the
model id, probability, call, OOD flag, latency and status. Never a file name (a DICOM's
is often the patient's name), never DICOM header values, never pixels.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from datetime import datetime, timezone
from pathlib import Path

from pneumoscope.serving.engine import Outcome

log = logging.getLogger("pneumoscope.serve")


def _private(path: Path) -> None:
    """Create the log readable by its owner only (0600); tighten one that is not."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
            log.warning("the audit log was readable by others; it is now 0600 (owner only)")
    finally:
        os.close(fd)


class AuditLog:
    """Appends JSON lines to ``path`` (None: keeps nothing); safe from several threads."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path).expanduser() if path else None
        self._lock = threading.Lock()
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _private(self.path)

    def write(self, **fields) -> None:
        if self.path is None:
            return
        record = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds")}
        record.update(fields)
        line = json.dumps(record, allow_nan=False, default=str) + "\n"
        with self._lock, open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line)

    def outcome(
        self, request_id: str, client: str, model_id: str, outcome: Outcome, latency_ms: float
    ) -> None:
        p = outcome.prediction
        self.write(
            request_id=request_id,
            client=client,
            sha256=outcome.sha256,
            size=outcome.size,
            model_id=model_id,
            probability=p.probability,
            label=p.label or None,
            ood=p.ood,
            estimated_age_group=p.estimated_age_group or None,
            adult_probability=p.adult_probability,
            latency_ms=round(latency_ms, 1),
            status=p.status,
            http_status=outcome.http_status,
        )

    def refused(
        self, request_id: str, client: str, model_id: str, http_status: int, latency_ms: float
    ) -> None:
        """A request refused or failed as a whole (401, 408, 413, 499 client gone, 503,
        504, 500): no input hash."""
        self.write(
            request_id=request_id,
            client=client,
            sha256=None,
            size=None,
            model_id=model_id,
            probability=None,
            label=None,
            ood=None,
            latency_ms=round(latency_ms, 1),
            status="error",
            http_status=http_status,
        )
