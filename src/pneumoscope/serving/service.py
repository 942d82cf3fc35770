"""The state the endpoints share: settings, the engine, worker threads, admission, audit."""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import anyio
from fastapi import Request

from pneumoscope.serving.audit import AuditLog
from pneumoscope.serving.engine import Engine, Outcome, Upload
from pneumoscope.serving.errors import ApiError, request_id
from pneumoscope.serving.limits import Admission, is_multipart, read_multipart, read_raw
from pneumoscope.serving.settings import ServeSettings

log = logging.getLogger("pneumoscope.serve")

Work = Callable[[list[Upload], float], list[Outcome]]


class Service:
    """One per app. Each admitted request (at most ``max_concurrency + max_queue``) gets a
    worker thread off the event loop, where its uploads are decoded (``max_concurrency``
    at once) and then wait for a shared batch; each has ``timeout_s`` in all."""

    def __init__(self, settings: ServeSettings, engine: Engine | None = None):
        self.settings = settings
        self.engine = engine
        self._owns_engine = engine is None
        self.load_error = ""
        self.token = settings.read_token()
        self.audit = AuditLog(settings.audit_log)
        self.admission = Admission(settings.max_concurrency + settings.max_queue)
        workers = settings.max_concurrency + settings.max_queue
        self.executor = ThreadPoolExecutor(workers, "pneumoscope-infer")

    def load_in_background(self) -> None:
        """Load the run on a thread, so /healthz answers and /readyz says 503 meanwhile."""
        if self.engine is not None:
            return

        def load() -> None:
            try:
                settings = self.settings
                self.engine = Engine.load(settings.run, settings.backend, **settings.batching)
                log.info("model %s ready (%s)", self.engine.model_id, self.settings.backend)
            except Exception as exc:
                self.load_error = f"cannot load the run: {exc}"
                log.error("%s", self.load_error)

        threading.Thread(target=load, name="pneumoscope-load", daemon=True).start()

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        if self._owns_engine and self.engine is not None:
            self.engine.close()

    def require_engine(self) -> Engine:
        if self.engine is None:
            raise ApiError(503, self.load_error or "the model is still loading; retry shortly")
        return self.engine

    def check_token(self, request: Request) -> None:
        """401 unless the request carries ``Authorization: Bearer <token>`` (when one is set)."""
        if self.token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        ok = scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), self.token.encode()
        )
        if not ok:
            raise ApiError(
                401,
                "missing or invalid bearer token (send 'Authorization: Bearer <token>')",
                {"WWW-Authenticate": "Bearer"},
            )

    async def predict(
        self, request: Request, heatmap: bool, batch: bool, work: Work | None = None
    ) -> list[Outcome]:
        """Read the upload(s) under the size cap and predict, within the time limit;
        refusals (413, 503, 504, ...) are audited too. ``work(uploads, deadline)``, when
        given, runs on the worker thread in place of ``engine.predict`` (e.g. to build
        DICOM results from the uploads); an ApiError it raises is the answer."""
        engine = self.require_engine()
        start = time.perf_counter()
        try:
            with anyio.fail_after(self.settings.timeout_s):
                outcomes = await self._admitted(request, engine, heatmap, batch, work)
        except TimeoutError:
            self._refused(request, engine, 504, start)
            raise ApiError(
                504, f"the request took longer than the {self.settings.timeout_s:g} s limit"
            ) from None
        except ApiError as exc:
            self._refused(request, engine, exc.status, start)
            raise
        latency = (time.perf_counter() - start) * 1000
        client = request.client.host if request.client else ""
        for o in outcomes:
            self.audit.outcome(request_id(request), client, engine.model_id, o, latency)
        return outcomes

    async def _admitted(
        self, request: Request, engine: Engine, heatmap: bool, batch: bool, work: Work | None
    ) -> list[Outcome]:
        self.admission.enter()
        handed_over = False
        try:
            uploads = await self._uploads(request, batch)
            deadline = time.monotonic() + self.settings.timeout_s
            if work is None:
                job = self.executor.submit(engine.predict, uploads, heatmap, deadline)
            else:
                job = self.executor.submit(work, uploads, deadline)
            job.add_done_callback(self.admission.leave)  # the job, not the wait, holds a place
            handed_over = True
            return await asyncio.wrap_future(job)  # cancelled at the time limit
        finally:
            if not handed_over:
                self.admission.leave()

    async def _uploads(self, request: Request, batch: bool) -> list[Upload]:
        cap = self.settings.max_upload_bytes
        if batch:
            if not is_multipart(request):
                raise ApiError(422, "bad parameters: send the files as multipart field 'files'")
            return await read_multipart(request, cap, "files", self.settings.max_batch_files)
        if is_multipart(request):
            return (await read_multipart(request, cap, "file", 1))[:1]
        return [Upload(await read_raw(request, cap))]

    def _refused(self, request: Request, engine: Engine, status: int, start: float) -> None:
        client = request.client.host if request.client else ""
        latency = (time.perf_counter() - start) * 1000
        self.audit.refused(request_id(request), client, engine.model_id, status, latency)
