"""Bounds on what one request may cost: body size while streaming, admission, time.

Uploads stay in memory: the raw body is read chunk by chunk and refused the moment it
passes the cap; multipart bodies go through the same capped stream and Starlette's
parser with its spool size above the cap, so a part never rolls over to a temporary file.
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
    return ApiError(413, f"upload too large: the limit is {cap / 2**20:g} MB (--max-upload-mb)")


def check_content_length(request: Request, cap: int) -> None:
    """Refuse up front when the client announces more than the cap."""
    declared = request.headers.get("content-length")
    if declared is None:
        return
    try:
        size = int(declared)
    except ValueError:
        raise ApiError(400, "invalid Content-Length header") from None
    if size > cap:
        raise too_large(cap)


async def capped_stream(request: Request, cap: int) -> AsyncIterator[bytes]:
    """The request body chunk by chunk, stopping with 413 as soon as it passes ``cap``."""
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > cap:
            raise too_large(cap)
        yield chunk


async def read_raw(request: Request, cap: int) -> bytes:
    check_content_length(request, cap)
    parts = [chunk async for chunk in capped_stream(request, cap)]
    return b"".join(parts)


class _InMemoryParser(MultiPartParser):
    """Starlette's multipart parser, its files kept in memory up to the body cap."""

    def __init__(self, request: Request, cap: int, max_files: int):
        super().__init__(request.headers, capped_stream(request, cap), max_files=max_files)
        self.spool_max_size = cap + 1


async def read_multipart(request: Request, cap: int, field: str, max_files: int) -> list[Upload]:
    """The files of form field ``field`` in order; 422 when there is none."""
    check_content_length(request, cap)
    try:
        form = await _InMemoryParser(request, cap, max_files).parse()
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


def is_multipart(request: Request) -> bool:
    return request.headers.get("content-type", "").lower().startswith("multipart/form-data")


class Admission:
    """At most ``limit`` requests in the service (running + waiting); beyond, 503.

    A request enters before its body is read, so waiting uploads are bounded in memory
    too, and leaves when its inference job ends, not when it times out: an abandoned job
    still holds its worker thread, and so its place.
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
