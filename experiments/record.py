"""What every experiment script writes beside its figures: the same machine record and
method paragraph as the speed benchmarks' (``bench/record.py``). Scripts run as
``python experiments/NAME/script.py`` put this folder on their path to import it."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root

from bench.record import machine, method  # noqa: E402

__all__ = ["machine", "method"]
