"""The server's log: one line per event, no tracebacks, no exception messages.

An exception's message can quote the request (a DICOM header value, a file name a
decoder echoed), and a traceback shows local values' reprs in some tools; so every
record that reaches the handlers of ``pneumoscope serve`` keeps its own message and only
the *type* of an attached exception. The access line comes from
``middleware.RequestContext`` (route templates, not raw paths), so uvicorn's own access
log, which prints the raw request line and the client's address, is off.
"""

from __future__ import annotations

import logging


class NoDetails(logging.Filter):
    """Drops a record's traceback and stack, naming the exception's type instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info:
            kind = record.exc_info[0].__name__ if record.exc_info[0] else "error"
            record.msg = f"{record.getMessage()} ({kind})"
            record.args = None
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        return True


LOG_CONFIG = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"no_details": {"()": NoDetails}},
    "formatters": {
        "line": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
    },
    "handlers": {
        "stderr": {
            "class": "logging.StreamHandler",
            "formatter": "line",
            "filters": ["no_details"],
            "stream": "ext://sys.stderr",
        },
    },
    "loggers": {
        "uvicorn": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
        "uvicorn.error": {"level": "INFO"},
        "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
        "pneumoscope": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
    },
}
