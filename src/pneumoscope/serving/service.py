"""The state the endpoints share: settings, the engine, worker threads, admission, audit."""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio
from fastapi import Request
from starlette.requests import ClientDisconnect

from pneumoscope.serving.audit import AuditLog
from pneumoscope.serving.decoders import PoolDecoder
from pneumoscope.serving.engine import Engine, Outcome, Upload
from pneumoscope.serving.errors import ApiError, request_id
from pneumoscope.serving.limits import CLOSE, Admission, Body, UploadMemory, is_multipart
from pneumoscope.serving.settings import ServeSettings

log = logging.getLogger("pneumoscope.serve")

Work = Callable[[list[Upload], float, Any], list[Outcome]]
DISCONNECTED = 499  # the client went away before its answer (nginx's code; audit only)


class Service:
    """One per app. A request's body is read first (``body_timeout_s``, the upload cap,
    the memory all bodies may hold); then it is admitted (at most ``max_concurrency +
    max_queue`` at once) and gets a worker thread off the event loop, where its uploads are
    decoded in the worker processes and then wait for a shared batch; ``timeout_s`` in all
    from admission."""

    def __init__(self, settings: ServeSettings, engine: Engine | None = None):
        self.settings = settings
        self.engine = engine
        self._owns_engine = engine is None
        self.load_error = ""
        self.token = settings.read_token()
        self.audit = AuditLog(settings.audit_log)
        self.admission = Admission(settings.max_concurrency + settings.max_queue)
        self.upload_memory = UploadMemory(settings.max_upload_memory_bytes)
        workers = settings.max_concurrency + settings.max_queue
        self.executor = ThreadPoolExecutor(workers, "pneumoscope-infer")
        self._decoder: PoolDecoder | None = None
        self._decoder_lock = threading.Lock()

    def load_in_background(self) -> None:
        """Load the run (unless given) and start the decoding workers on a thread, so
        /healthz answers and /readyz says 503 meanwhile, and the first upload does not
        wait for the workers to start."""

        def load() -> None:
            try:
                if self.engine is None:
                    s = self.settings
                    self.engine = Engine.load(s.run, s.backend, s.allow, **s.batching)
                    log.info("model %s ready (%s)", self.engine.model_id, s.backend)
                self.decoder(self.engine).warm()
            except Exception as exc:
                self.load_error = f"cannot load the run: {exc}"
                log.error("%s", self.load_error)

        threading.Thread(target=load, name="pneumoscope-load", daemon=True).start()

    def decoder(self, engine: Engine) -> PoolDecoder:
        """The worker pool every upload is decoded in, started on first use."""
        with self._decoder_lock:
            if self._decoder is None:
                s = self.settings
                self._decoder = PoolDecoder(
                    engine.loaded.preprocess,
                    engine.scope,
                    workers=s.decode_workers or s.max_concurrency,
                    memory_mb=s.decode_memory_mb,
                    timeout_s=s.decode_timeout_s,
                )
            return self._decoder

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        if self._decoder is not None:
            self._decoder.close()
        if self._owns_engine and self.engine is not None:
            self.engine.close()

    def require_engine(self) -> Engine:
        if self.engine is None:
            raise ApiError(503, self.load_error or "the model is still loading; retry shortly")
        return self.engine

    def check_token(self, request: Request) -> None:
        """401 unless the request carries ``Authorization: Bearer <token>`` (when one is set);
        a refusal is audited and ends the connection (its body is never read)."""
        if self.token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        ok = scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), self.token.encode()
        )
        if not ok:
            self.audit_refusal(request, 401, time.perf_counter())
            raise ApiError(
                401,
                "missing or invalid bearer token (send 'Authorization: Bearer <token>')",
                {"WWW-Authenticate": "Bearer", **CLOSE},
            )

    async def predict(
        self, request: Request, heatmap: bool, batch: bool, work: Work | None = None
    ) -> list[Outcome]:
        """Read the upload(s) under the body limits, then predict within the time limit;
        refusals (408, 413, 503, 504, ...) are audited too. ``work(uploads, deadline,
        decoder)``, when given, runs on the worker thread in place of ``engine.predict``
        (e.g. to build DICOM results from the uploads); an ApiError it raises is the answer."""
        engine = self.require_engine()
        start = time.perf_counter()
        body = Body(request, self.settings.max_upload_bytes, self.upload_memory)
        try:
            uploads = await self._read(body, batch)
            with anyio.fail_after(self.settings.timeout_s):
                outcomes = await self._admitted(uploads, engine, heatmap, work)
        except TimeoutError:
            self.audit_refusal(request, 504, start)
            raise ApiError(
                504, f"the request took longer than the {self.settings.timeout_s:g} s limit"
            ) from None
        except ApiError as exc:
            self.audit_refusal(request, exc.status, start)
            raise
        finally:
            body.release()
        latency = (time.perf_counter() - start) * 1000
        for o in outcomes:
            self.audit.outcome(request_id(request), client(request), engine.model_id, o, latency)
        return outcomes

    async def _read(self, body: Body, batch: bool) -> list[Upload]:
        """The uploads, within ``body_timeout_s``: 408 for a body that does not arrive in
        time, one log line (and 499 in the audit) for a client that goes away."""
        limit = self.settings.body_timeout_s
        try:
            with anyio.fail_after(limit):
                return await self._uploads(body, batch)
        except TimeoutError:
            raise ApiError(
                408, f"the upload did not arrive within {limit:g} s (--body-timeout)", CLOSE
            ) from None
        except ClientDisconnect:
            log.info("request %s: client disconnected during the upload", request_id(body.request))
            raise ApiError(DISCONNECTED, "client disconnected during the upload") from None

    async def _admitted(
        self, uploads: list[Upload], engine: Engine, heatmap: bool, work: Work | None
    ) -> list[Outcome]:
        self.admission.enter()
        handed_over = False
        try:
            deadline = time.monotonic() + self.settings.timeout_s
            decoder = self.decoder(engine)
            if work is None:
                job = self.executor.submit(engine.predict, uploads, heatmap, deadline, decoder)
            else:
                job = self.executor.submit(work, uploads, deadline, decoder)
            job.add_done_callback(self.admission.leave)  # the job, not the wait, holds a place
            handed_over = True
            return await asyncio.wrap_future(job)  # cancelled at the time limit
        finally:
            if not handed_over:
                self.admission.leave()

    async def _uploads(self, body: Body, batch: bool) -> list[Upload]:
        request = body.request
        if batch:
            if not is_multipart(request):
                raise ApiError(422, "bad parameters: send the files as multipart field 'files'")
            return await body.files("files", self.settings.max_batch_files)
        if is_multipart(request):
            return (await body.files("file", 1))[:1]
        return [Upload(await body.raw())]

    def audit_refusal(self, request: Request, status: int, start: float) -> None:
        """A request refused as a whole (401, 408, 413, 503, 504, 500 ...): no input hash."""
        engine = self.engine
        latency = (time.perf_counter() - start) * 1000
        model = engine.model_id if engine is not None else ""
        self.audit.refused(request_id(request), client(request), model, status, latency)


    def audit_error(self, scope) -> None:
        """An unexpected failure (500), from the error boundary."""
        self.audit_refusal(Request(scope), 500, time.perf_counter())


def client(request: Request) -> str:
    """The client's address: the socket's peer, or what a --trusted-proxy said it was
    (uvicorn rewrites it only for those)."""
    return request.client.host if request.client else ""
