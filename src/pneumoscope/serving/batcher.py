"""Micro-batching: concurrent requests share one forward pass.

Each request hands its decoded images to ``MicroBatcher.run`` and waits. One worker thread
takes every job already queued, waits up to ``window_s`` for more while the batch holds
fewer than ``max_batch`` images, and scores them in one call. A lone request on an idle
server waits for the window only; under load, jobs gather while the previous batch runs,
so batches fill without added delay. A job whose caller gave up (time limit) is dropped
before its batch runs.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

ScoreFn = Callable[[np.ndarray], list]


@dataclass
class _Job:
    pixels: np.ndarray
    future: Future = field(default_factory=Future)


class MicroBatcher:
    """Batches jobs for ``score(stacked_pixels) -> one result per image``, in order."""

    def __init__(self, score: ScoreFn, max_batch: int = 16, window_s: float = 0.002):
        self.score = score
        self.max_batch = max_batch
        self.window_s = window_s
        self.batches: list[int] = []  # images per batch run, most recent last (bounded)
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._held: _Job | None = None  # the job that did not fit in the last batch
        self._thread = threading.Thread(target=self._loop, name="pneumoscope-batch", daemon=True)
        self._thread.start()

    def submit(self, pixels: np.ndarray) -> Future:
        """Queue ``pixels`` (N, H, W); the future gives their N results."""
        job = _Job(pixels)
        self._queue.put(job)
        return job.future

    def run(self, pixels: np.ndarray, timeout: float | None = None) -> list:
        return self.submit(pixels).result(timeout)

    def close(self) -> None:
        self._queue.put(None)

    def _loop(self) -> None:
        while True:
            jobs = self._gather()
            if jobs is None:
                return
            self._run(jobs)

    def _gather(self) -> list[_Job] | None:
        """The next batch: whatever is queued, then more until the window ends or the
        next job would pass ``max_batch`` images (a larger job runs alone)."""
        first, self._held = self._held or self._queue.get(), None
        if first is None:
            return None
        jobs, images = [first], len(first.pixels)
        deadline = time.monotonic() + self.window_s
        while images < self.max_batch:
            job = self._next(deadline)
            if job is None:
                break
            if images + len(job.pixels) > self.max_batch:
                self._held = job
                break
            jobs.append(job)
            images += len(job.pixels)
        return jobs

    def _next(self, deadline: float) -> _Job | None:
        """A queued job, waiting until ``deadline`` at most; None when none came (a stop
        request is put back for the loop to see)."""
        wait = deadline - time.monotonic()
        try:
            job = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
        except queue.Empty:
            return None
        if job is None:
            self._queue.put(None)
        return job

    def _run(self, jobs: list[_Job]) -> None:
        live = [j for j in jobs if j.future.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            results = self.score(np.concatenate([j.pixels for j in live]))
        except BaseException as exc:  # every waiting caller learns of it
            for job in live:
                job.future.set_exception(exc)
            return
        self.batches = [*self.batches[-999:], len(results)]
        start = 0
        for job in live:
            n = len(job.pixels)
            job.future.set_result(results[start : start + n])
            start += n
