"""Decoding uploads where a hostile file cannot take the service down.

An upload is untrusted bytes: the decoders refuse what their headers say is too large
(``pneumoscope.data.limits``), but a decoder bug, a slow codec or a file that lies about
itself must still not hold the service's memory or time. So the service decodes in a
small pool of worker processes, each with an address-space limit; a decode that passes
its time limit, or a worker that dies, ends with that worker (the pool starts another)
and the upload gets a 4xx with the reason. Every path that reads upload bytes goes
through here: JSON and ``format=dicom`` predictions, the intended-use header check, and
the DICOM results built from an upload.

``decode_upload`` is the one function both decoders run, in a worker or (tests, the
notebook API) in the calling process.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import resource
import threading
import time
from concurrent import futures
from dataclasses import dataclass, fields

import numpy as np
from pydicom.dataset import Dataset

from pneumoscope.core.errors import ImageReadError
from pneumoscope.data.dicom import decode_dicom_bytes, header_dataset
from pneumoscope.data.preprocess import PreprocessConfig, decode_image_bytes, sniff_image
from pneumoscope.inference.intended_use import ANALYSED, IntendedUse, screen_decoded
from pneumoscope.model.population_check import PopulationEstimate

NOT_AN_IMAGE = "not an image: the content is not PNG, JPEG, TIFF, BMP or DICOM"


@dataclass
class Decoded:
    """One upload decoded: ``pixels`` (the run's preprocessed square) and a ``note``, or
    the HTTP status, result status and reason that refuse it."""

    pixels: np.ndarray | None = None
    note: str = ""
    http_status: int = 200
    status: str = "ok"
    error: str = ""
    estimate: PopulationEstimate | None = None  # the population check's, once decoded

    @classmethod
    def refused(
        cls, http_status: int, reason: str, status: str = "error", estimate=None
    ) -> Decoded:
        return cls(http_status=http_status, status=status, error=reason, estimate=estimate)


def decode_upload(data: bytes, preprocess: PreprocessConfig, scope: IntendedUse) -> Decoded:
    """Bytes -> Decoded: 400 empty or unreadable, 415 not an image, 422 skipped or out of
    scope by the intended-use rules (DICOM headers; the age group the population check
    estimates from the pixels), 413 over the decoder's memory. The note is "" unless the
    film is analysed only because a rule was relaxed (--allow)."""
    if not data:
        return Decoded.refused(400, "empty file (0 bytes)")
    kind = sniff_image(data)
    if kind is None:
        return Decoded.refused(415, NOT_AN_IMAGE)
    try:
        header = scope.screen_header(data) if kind == "dicom" else (None, False)
        verdict = header[0]
        if verdict is not None and verdict.status != ANALYSED:
            return Decoded.refused(422, verdict.reason, verdict.status)
        screened = screen_decoded("", decode_image_bytes(data), preprocess, scope, header)
    except ImageReadError as exc:
        return Decoded.refused(400, str(exc))
    except MemoryError:
        return Decoded.refused(413, "the image needs more memory to decode than the limit")
    except Exception as exc:  # a decoder bug stays this upload's error; no message (data)
        return Decoded.refused(400, f"unexpected error while decoding: {type(exc).__name__}")
    if screened.pixels is None:
        return Decoded.refused(422, screened.reason, screened.status, screened.estimate)
    return Decoded(screened.pixels, screened.reason, estimate=screened.estimate)


def read_dicom_upload(data: bytes) -> tuple[Dataset, np.ndarray]:
    """A DICOM upload's header (no pixels) and its decoded film: what its DICOM results
    (SR, capture) are made from, read in a worker like every other use of upload bytes."""
    return header_dataset(data), decode_dicom_bytes(data)


def scope_args(scope: IntendedUse) -> dict:
    """The rules as plain values, to rebuild them in a worker (the object holds an Event)."""
    return {f.name: getattr(scope, f.name) for f in fields(scope) if not f.name.startswith("_")}


class InlineDecoder:
    """Decodes on the calling thread, ``parallel`` at once: for tests and in-process use."""

    def __init__(self, preprocess: PreprocessConfig, scope: IntendedUse, parallel: int = 2):
        self.preprocess = preprocess
        self.scope = scope
        self._slots = threading.BoundedSemaphore(parallel)

    def decode(self, uploads: list[bytes], deadline: float | None = None) -> list[Decoded]:
        with self._slots:
            return [decode_upload(d, self.preprocess, self.scope) for d in uploads]

    def call(self, fn, *args, deadline: float | None = None):
        return fn(*args)

    def close(self) -> None:
        pass


# --- the worker pool ------------------------------------------------------------------

_WORKER: dict = {}  # per worker process: the run's preprocessing and rules


def _init_worker(memory_bytes: int, preprocess: dict, scope: dict) -> None:
    """Runs once in each worker: cap its address space, keep the run's settings."""
    if memory_bytes > 0:
        limit = _vm_size() + memory_bytes
        with contextlib.suppress(ValueError, OSError):  # not permitted: the time limit holds
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    _WORKER["preprocess"] = PreprocessConfig.from_dict(preprocess)
    _WORKER["scope"] = IntendedUse(**scope)
    _WORKER["scope"].population_check()  # loaded now, not on the first upload


def _decode_in_worker(data: bytes) -> Decoded:
    return decode_upload(data, _WORKER["preprocess"], _WORKER["scope"])


def _ready() -> bool:
    return "preprocess" in _WORKER


def _vm_size() -> int:
    """This process's virtual size in bytes (Linux /proc), the base of its limit."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _context() -> multiprocessing.context.BaseContext:
    """forkserver: workers start from a small clean process with the decoders imported,
    never as forks of a server holding a model and threads."""
    try:
        ctx = multiprocessing.get_context("forkserver")
    except ValueError:  # not on this platform
        return multiprocessing.get_context("spawn")
    ctx.set_forkserver_preload(["pneumoscope.serving.decoders"])
    return ctx


class PoolDecoder:
    """Decodes in ``workers`` processes, each limited to ``memory_mb`` of address space
    beyond its start and ``timeout_s`` per upload; a worker that passes either is ended
    and replaced, and its upload refused with the reason."""

    def __init__(
        self,
        preprocess: PreprocessConfig,
        scope: IntendedUse,
        workers: int = 2,
        memory_mb: float = 1024,
        timeout_s: float = 10.0,
    ):
        from pebble import ProcessPool

        self.timeout_s = timeout_s
        self.memory_mb = memory_mb
        self.workers = workers
        self.per_request = max(1, workers // 2)
        init = (int(memory_mb * 2**20), preprocess.to_dict(), scope_args(scope))
        self._pool = ProcessPool(
            max_workers=workers, initializer=_init_worker, initargs=init, context=_context()
        )

    def decode(self, uploads: list[bytes], deadline: float | None = None) -> list[Decoded]:
        """Each upload's outcome, in order. One request keeps at most half the workers busy
        (one of two), so a batch of slow files cannot starve other clients; when the
        request's deadline passes, its jobs still queued or running are dropped."""
        jobs: list[futures.Future] = []
        out: list[Decoded] = []
        try:
            for data in uploads:
                if len(jobs) - len(out) >= self.per_request:
                    out.append(self._wait(jobs[len(out)], deadline))
                jobs.append(self._schedule(_decode_in_worker, data))
            while len(out) < len(jobs):
                out.append(self._wait(jobs[len(out)], deadline))
        except TimeoutError:
            for job in jobs[len(out) :]:
                job.cancel()
            raise
        return out

    def warm(self) -> None:
        """Start every worker now (each imports the decoders once), not on the first
        upload."""
        jobs = [self._schedule(_ready) for _ in range(self.workers)]
        for job in jobs:
            job.result()

    def _schedule(self, fn, *args) -> futures.Future:
        return self._pool.schedule(fn, args, timeout=self.timeout_s)

    def call(self, fn, *args, deadline: float | None = None):
        """Any other work on upload bytes (DICOM results), under the same bounds; raises
        ImageReadError when the worker passes them."""
        result = self._wait(self._schedule(fn, *args), deadline)
        if isinstance(result, Decoded):
            raise ImageReadError(result.error)
        return result

    def _wait(self, job: futures.Future, deadline: float | None):
        """The job's result; a refusal when the worker passed its time or memory; raises
        TimeoutError when the request's own deadline comes first (the job is dropped)."""
        from pebble import ProcessExpired

        wait = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        try:
            return job.result(timeout=wait)
        except futures.TimeoutError:
            if not job.done():  # the request's deadline: drop the job, end its worker
                job.cancel()
                raise TimeoutError("the request's time limit passed while decoding") from None
            return Decoded.refused(
                422, f"decoding took longer than the {self.timeout_s:g} s limit: refused"
            )
        except ProcessExpired:
            return Decoded.refused(
                422,
                f"the decoder stopped on this file (over its {self.memory_mb:g} MB memory "
                "limit, or a decoder crash): refused",
            )

    def close(self) -> None:
        self._pool.stop()
        self._pool.join(timeout=5)
