"""`serve --workers N`: N replicas of the service behind one listening socket.

The per-request work (receiving, decoding, JSON, the heat map's PNG) runs on one event
loop per process, so one process tops out well below what the model can score. Here the
parent binds the socket and starts N replica processes (spawned, so none inherits another
one's threads); each loads its own copy of the model, its own decoding workers and its
own batcher, and accepts connections on the shared socket, the kernel spreading them.
The parent only supervises: a replica that dies is started again (at most
``MAX_RESTARTS`` times in ``RESTART_WINDOW_S``, then the service stops with a message),
and SIGTERM or Ctrl+C stops every replica. ``/readyz`` answers per replica, so a load
balancer in front sees each one it reaches.
"""

from __future__ import annotations

import logging
import logging.config
import multiprocessing
import signal
import socket
import threading
import time
from collections import deque

from pneumoscope.core.errors import UserError
from pneumoscope.serving.settings import ServeSettings

log = logging.getLogger("pneumoscope.serve")
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
STOP_GRACE_S = 20.0


def bind(settings: ServeSettings) -> socket.socket:
    """The listening socket every replica accepts on (port 0: a free port)."""
    family = socket.AF_INET6 if ":" in settings.host.strip("[]") else socket.AF_INET
    try:
        sock = socket.create_server(
            (settings.host.strip("[]"), settings.port), family=family, backlog=2048
        )
    except OSError as exc:
        raise UserError(
            f"cannot listen on {settings.host}:{settings.port}: {exc.strerror}"
        ) from None
    sock.set_inheritable(True)
    return sock


def _replica(settings: ServeSettings, sock: socket.socket) -> None:
    """One replica: its engine, then the server on the shared socket (runs in a child)."""
    from pneumoscope.serving.engine import Engine
    from pneumoscope.serving.server import run_server

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the replicas
    engine = Engine.load(settings.run, settings.backend, settings.allow, **settings.batching)
    run_server(settings, engine, sockets=[sock])


class Replicas:
    """The replica processes on one socket, supervised until stopped."""

    def __init__(self, settings: ServeSettings, workers: int, sock: socket.socket):
        self.settings, self.workers, self.sock = settings, workers, sock
        self._ctx = multiprocessing.get_context("spawn")
        self._procs: list = []
        self._restarts: deque[float] = deque()
        self._stop = threading.Event()

    def _start(self):
        proc = self._ctx.Process(
            target=_replica, args=(self.settings, self.sock), name="pneumoscope-replica"
        )
        proc.start()
        return proc

    def run(self) -> None:
        """Start the replicas and keep them running until SIGTERM/SIGINT."""
        from pneumoscope.serving.logs import LOG_CONFIG

        logging.config.dictConfig(LOG_CONFIG)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self._stop.set())
        self._procs = [self._start() for _ in range(self.workers)]
        try:
            while not self._stop.wait(0.5):
                self._replace_dead()
        finally:
            self.stop()

    def _replace_dead(self) -> None:
        for i, proc in enumerate(self._procs):
            if proc.is_alive():
                continue
            now = time.monotonic()
            while self._restarts and now - self._restarts[0] > RESTART_WINDOW_S:
                self._restarts.popleft()
            if len(self._restarts) >= MAX_RESTARTS:
                log.error("replicas keep dying (%d restarts in %.0f s): stopping",
                          len(self._restarts), RESTART_WINDOW_S)  # fmt: skip
                self._stop.set()
                return
            log.warning("replica %d ended (exit code %s): starting another", i, proc.exitcode)
            self._restarts.append(now)
            self._procs[i] = self._start()

    def stop(self) -> None:
        """SIGTERM to every replica (uvicorn finishes the requests in flight), then kill
        what is still there after the grace period."""
        for proc in self._procs:
            if proc.is_alive():
                proc.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in self._procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join()
        self.sock.close()
