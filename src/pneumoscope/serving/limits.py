"""Bounds on what one request may cost: body size while streaming, admission, time.

Uploads stay in memory: the raw body is read chunk by chunk and refused the moment it
passes the cap; multipart bodies go through the same capped stream and Starlette's
parser with its spool size above the cap, so a part never rolls over to a temporary file.
The bytes held by all bodies at once are bounded too (``UploadMemory``), and a request
takes its place in the service (``Admission``) only once its body has arrived, so slow
uploads hold neither a decoding slot nor much memory.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from pneumoscope.serving.engine import Upload
from pneumoscope.serving.errors import ApiError


def too_large(cap: int) -> ApiError:
    return ApiError(
        413, f"upload too large: the limit is {cap / 2**20:g} MB (--max-upload-mb)", CLOSE
    )


CLOSE = {"Connection": "close"}  # an answer before the body ends: the connection ends too


def check_content_length(request: Request, cap: int) -> None:
    """Refuse up front when the client announces more than the cap."""
    declared = request.headers.get("content-length")
    if declared is None:
        return
    try:
        size = int(declared)
    except ValueError:
        raise ApiError(400, "invalid Content-Length header", CLOSE) from None
    if size > cap:
        raise too_large(cap)


class UploadMemory:
    """The bytes of request bodies held at once, over every request: a body that would
    pass ``limit`` is refused (503), so many concurrent uploads cannot fill the memory."""

    def __init__(self, limit: int):
        self.limit = limit
        self.held = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> None:
        with self._lock:
            if self.held + n > self.limit:
                raise ApiError(
                    503, "server busy: too many uploads in progress; retry shortly",
                    {"Retry-After": "1", **CLOSE},
                )
            self.held += n

    def give(self, n: int) -> None:
        with self._lock:
            self.held -= n


class Body:
    """One request's body, read chunk by chunk: refused (413) the moment it passes the cap,
    each chunk counted against the shared ``UploadMemory`` until ``release``."""

    def __init__(self, request: Request, cap: int, memory: UploadMemory | None = None):
        self.request = request
        self.cap = cap
        self.memory = memory
        self.size = 0

    async def chunks(self) -> AsyncIterator[bytes]:
        async for chunk in self.request.stream():
            if self.size + len(chunk) > self.cap:
                raise too_large(self.cap)
            if self.memory is not None:
                self.memory.take(len(chunk))
            self.size += len(chunk)
            yield chunk

    def release(self) -> None:
        if self.memory is not None:
            self.memory.give(self.size)
        self.size = 0

    async def raw(self) -> bytes:
        check_content_length(self.request, self.cap)
        return b"".join([chunk async for chunk in self.chunks()])

    async def files(self, field: str, max_files: int) -> list[Upload]:
        """The files of form field ``field`` in order; 422 when there is none."""
        check_content_length(self.request, self.cap)
        parser = _InMemoryParser(self.request, self.chunks(), self.cap, max_files)
        try:
            form = await parser.parse()
        except MultiPartException as exc:
            raise ApiError(400, f"invalid multipart body: {exc.message}") from None
        try:
            items = [v for k, v in form.multi_items() if k == field and isinstance(v, UploadFile)]
            uploads = [Upload(await f.read(), f.filename or "") for f in items]
        finally:
            await form.close()
        if not uploads:
            raise ApiError(422, f"bad parameters: the multipart body has no file field '{field}'")
        return uploads


async def read_raw(request: Request, cap: int) -> bytes:
    return await Body(request, cap).raw()


class _InMemoryParser(MultiPartParser):
    """Starlette's multipart parser, its files kept in memory up to the body cap."""

    def __init__(self, request: Request, stream, cap: int, max_files: int):
        super().__init__(request.headers, stream, max_files=max_files)
        self.spool_max_size = cap + 1


async def read_multipart(request: Request, cap: int, field: str, max_files: int) -> list[Upload]:
    return await Body(request, cap).files(field, max_files)


def is_multipart(request: Request) -> bool:
    return request.headers.get("content-type", "").lower().startswith("multipart/form-data")


class Admission:
    """At most ``limit`` requests in the service (running + waiting); beyond, 503.

    A request enters once its body has arrived (a slow client holds no place), and leaves
    when its inference job ends, not when it times out: an abandoned job still holds its
    worker thread, and so its place.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self._count = 0
        self._lock = threading.Lock()

    @property
    def count(self) -> int:
        return self._count

    def enter(self) -> None:
        with self._lock:
            if self._count >= self.limit:
                raise ApiError(
                    503,
                    "server busy: too many requests in progress; retry shortly",
                    {"Retry-After": "1"},
                )
            self._count += 1

    def leave(self, *_) -> None:
        with self._lock:
            self._count -= 1
