"""metrics.json, read back typed: what `evaluate` found for a run on one split.

`compare` puts runs side by side from it and the service shows it on /v1/model; both
read it here, so its keys are named in one place and a record that is missing or
unreadable is one clear line (or None for a run never evaluated), never a KeyError.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pneumoscope.core.errors import UserError

SERVER_PATHS = ("run", "data")  # where the run and the cache lay: never shown to clients


@dataclass(frozen=True)
class EvaluationRecord:
    """The split, its size, the threshold and policy, every scalar figure and its 95%
    interval (``ci``: figure -> (low, high))."""

    split: str
    n: int
    threshold: float
    threshold_policy: str
    figures: Mapping[str, float | int | str] = field(default_factory=dict)
    ci: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EvaluationRecord:
        scalars = {
            k: v
            for k, v in d.items()
            if isinstance(v, int | float | str) and not isinstance(v, bool)
            and k not in SERVER_PATHS
        }  # fmt: skip
        ci = {k: (float(v[0]), float(v[1])) for k, v in (d.get("ci") or {}).items()}
        return cls(
            split=str(d.get("split", "")),
            n=int(d.get("n", 0)),
            threshold=float(d.get("threshold", math.nan)),
            threshold_policy=str(d.get("threshold_policy", "")),
            figures=scalars,
            ci=ci,
        )

    @classmethod
    def read(cls, path: str | Path) -> EvaluationRecord:
        """The record at ``path``; UserError (one line) when it is missing or unreadable."""
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            raise UserError(
                f"{path} not found: run 'pneumoscope evaluate --run RUN --data DATA' first"
            ) from None
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            raise UserError(f"{path} is not an evaluation record ({exc})") from None

    @classmethod
    def read_if_any(cls, path: str | Path) -> EvaluationRecord | None:
        """The record, or None when the run has none or it cannot be read."""
        try:
            return cls.read(path)
        except UserError:
            return None

    def figure(self, key: str) -> float | None:
        value = self.figures.get(key)
        if not isinstance(value, int | float) or math.isnan(value):
            return None
        return float(value)

    def public(self) -> dict[str, Any]:
        """The scalar figures and their intervals, nothing that names a server path."""
        return {**self.figures, "ci": {k: list(v) for k, v in self.ci.items()}}
