"""uvicorn's HTTP/1.1 protocol with a deadline for request headers.

uvicorn times out a connection only between requests (keep-alive); a client that
connects and then sends nothing, or sends its headers a byte at a time, holds its socket
for ever, and a few hundred such sockets lock everybody out. Here each connection must
deliver a request's headers within ``header_timeout`` of connecting (or of its previous
answer) or it is closed. Bodies have their own deadline in the application
(``ServeSettings.body_timeout_s``).
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


class HeaderDeadlineProtocol(H11Protocol):
    header_timeout: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the headers are in
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm()  # the next request's headers get the same deadline

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

    def _disarm(self) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def protocol_with(header_timeout: float) -> type[HeaderDeadlineProtocol]:
    """The protocol class uvicorn builds per connection, with this deadline."""
    return type("Protocol", (HeaderDeadlineProtocol,), {"header_timeout": header_timeout})
