"""What wraps every request: its id, the security headers, one access line, and a boundary
that turns an unexpected error into a 500 without a word of the request in the log.

The access line names the route (``/v1/predict``), never the raw path or query a client
sent, and the client's address only in the audit log: a log file must not collect what
clients put in URLs.
"""

from __future__ import annotations

import logging
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("pneumoscope.serve")
access = logging.getLogger("pneumoscope.access")

# The API's answers are JSON: nothing in them may run, be framed or be cached.
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
]
CACHEABLE = ("/static/", "/docs/assets/")  # the package's own files; the rest is no-store


def route_name(scope: Scope) -> str:
    """The matched route's template, or "-": what the logs may say about a path."""
    route = scope.get("route")
    return getattr(route, "path", None) or "-"


class RequestContext:
    """A fresh id per request (never the client's), echoed as X-Request-ID; the security
    headers, a default CSP, ``Cache-Control: no-store`` (and HSTS over TLS); one access
    line per request: method, route, status, milliseconds, id."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        start = time.perf_counter()
        status = [0]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message = {**message, "headers": _headers(scope, message, rid)}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            ms = (time.perf_counter() - start) * 1000
            access.info(
                "%s %s %s %.0f ms %s", scope["method"], route_name(scope), status[0], ms, rid
            )


def _headers(scope: Scope, message: Message, rid: str) -> list[tuple[bytes, bytes]]:
    headers = list(message.get("headers", []))
    names = {k.lower() for k, _ in headers}
    headers.append((b"x-request-id", rid.encode()))
    headers += [(k, v) for k, v in SECURITY_HEADERS if k not in names]
    if b"content-security-policy" not in names:
        headers.append((b"content-security-policy", API_CSP.encode()))
    if b"cache-control" not in names and not scope["path"].startswith(CACHEABLE):
        headers.append((b"cache-control", b"no-store"))
    if scope.get("scheme") == "https":
        headers.append((b"strict-transport-security", b"max-age=31536000"))
    return headers


class ErrorBoundary:
    """An exception no handler took becomes a JSON 500 here, logged by its type and the
    request id only (its message or traceback could carry upload or header data), and
    audited; it is not raised on, so the server prints no traceback either."""

    def __init__(self, app: ASGIApp, on_error=None):
        self.app = app
        self.on_error = on_error  # (scope) -> None: the audit line

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = [False]

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                started[0] = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:
            rid = scope.get("state", {}).get("request_id", "")
            log.error("request %s failed: %s", rid, type(exc).__name__)
            if self.on_error is not None:
                self.on_error(scope)
            if not started[0]:
                await _send_500(send, rid)


async def _send_500(send: Send, rid: str) -> None:
    body = (
        '{"status": "error", "error": "internal error; see the server log", '
        f'"request_id": "{rid}"}}'
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 500,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
