"""What every experiment script writes beside its figures: the machine it ran on and how
loaded it was, and the method paragraph of its docstring. Scripts run as
``python experiments/NAME/script.py`` put this folder on their path to import it."""

from __future__ import annotations

import os
import platform
import sys


def machine(load_before: tuple[float, float, float], **versions) -> dict:
    """CPU, cores, Python, the versions given (name=value) and the load average before
    and now: on a busy machine the wall times are not the method's alone."""
    return {
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        **versions,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
    }


def method(doc: str) -> str:
    """A script's docstring from its third paragraph on: how it measures."""
    return doc.split("\n\n", 2)[2].strip()
