"""Upload size: refused while streaming (413), before the whole body is read."""

from __future__ import annotations

import asyncio

import pytest
from starlette.requests import Request

from pneumoscope.serving.errors import ApiError
from pneumoscope.serving.limits import read_raw

CAP = 10 * 1024


def _request(chunks: int, size: int, headers=()) -> tuple[Request, list[int]]:
    sent = [0]

    async def receive():
        sent[0] += 1
        return {"type": "http.request", "body": b"x" * size, "more_body": sent[0] < chunks}

    scope = {"type": "http", "method": "POST", "headers": list(headers), "path": "/"}
    return Request(scope, receive), sent


def test_the_body_is_refused_at_the_cap_not_after_reading_it():
    request, sent = _request(chunks=1000, size=4096)
    with pytest.raises(ApiError) as err:
        asyncio.run(read_raw(request, CAP))
    assert err.value.status == 413 and "limit" in err.value.message
    assert sent[0] == 3  # 12 KiB read of 4 MB: stopped at the first chunk past the cap


def test_content_length_over_the_cap_reads_nothing():
    request, sent = _request(2, 10, headers=[(b"content-length", str(CAP + 1).encode())])
    with pytest.raises(ApiError) as err:
        asyncio.run(read_raw(request, CAP))
    assert err.value.status == 413 and sent[0] == 0


def test_a_body_under_the_cap_is_read_whole():
    request, _ = _request(chunks=2, size=100)
    assert asyncio.run(read_raw(request, CAP)) == b"x" * 200


def _chunks(n: int, size: int):
    for _ in range(n):
        yield b"\xff" * size


def test_streamed_body_over_the_cap_is_413(make_client, films):
    c = make_client(max_upload_mb=0.01)
    r = c.post("/v1/predict", content=_chunks(100, 4096))  # chunked: no Content-Length
    assert r.status_code == 413 and "upload too large" in r.json()["error"]
    big = c.post("/v1/predict", files={"file": ("a.jpeg", b"\xff\xd8\xff" + bytes(20_000))})
    assert big.status_code == 413
    many = [("files", ("a.jpeg", bytes(6000))), ("files", ("b.jpeg", bytes(6000)))]
    assert c.post("/v1/predict/batch", files=many).status_code == 413
    assert c.get("/healthz").status_code == 200
