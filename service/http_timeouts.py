"""A deadline for a request's headers, in uvicorn's HTTP protocol (slow-header clients).

The app only sees a request once its headers are complete, so a client that opens a connection
and sends one header line a second is held by the server forever, before any authentication
can run (an ASGI middleware never hears of it). uvicorn's ``timeout_keep_alive`` runs only
between requests and is cancelled by the first byte of the next one; h11 and httptools limit
the headers' size, not their time. So the deadline lives in the protocol::

    connection made, or previous response complete  ->  arm  (header_timeout_s)
    request headers complete                        ->  cancel (the body has its own idle
                                                        timeout in the upload route)
    deadline passes                                 ->  408 written, connection closed

`header_timeout_protocol` subclasses whichever protocol uvicorn's ``http="auto"`` would pick
(httptools when installed, else h11) and is passed to ``uvicorn.Config(http=...)``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

__all__ = ["header_timeout_protocol"]


def _timeout_response(timeout_s: float) -> bytes:
    body = json.dumps(
        {
            "error": "timeout",
            "message": f"The request headers did not arrive within {timeout_s:g} s "
            "(AVASERVE_HEADER_TIMEOUT_S); the connection is closed.",
        }
    ).encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


class _HeaderDeadline:
    """The timer, shared by both protocol flavours. ``header_timeout_s`` is set per subclass."""

    header_timeout_s: float = 15.0
    _header_timer: asyncio.TimerHandle | None = None
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop

    def _arm_header_deadline(self) -> None:
        self._cancel_header_deadline()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_deadline)

    def _cancel_header_deadline(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_deadline(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.write(_timeout_response(self.header_timeout_s))
            self.transport.close()


def header_timeout_protocol(header_timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's auto HTTP protocol with a ``header_timeout_s`` deadline on request headers."""
    if not header_timeout_s > 0:
        raise ValueError(f"header_timeout_s must be > 0, got {header_timeout_s}")
    try:
        import httptools  # noqa: F401
    except ImportError:
        return _h11_protocol(header_timeout_s)
    return _httptools_protocol(header_timeout_s)


def _httptools_protocol(header_timeout_s: float) -> type[asyncio.Protocol]:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class HttpToolsHeaderTimeout(_HeaderDeadline, HttpToolsProtocol):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm_header_deadline()

        def on_headers_complete(self) -> None:
            self._cancel_header_deadline()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            # The next request's headers start now, unless one was already parsed (pipelined:
            # the call below starts it).
            pipelined = bool(self.pipeline)
            super().on_response_complete()
            if not self.transport.is_closing() and not pipelined:
                self._arm_header_deadline()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_header_deadline()
            super().connection_lost(exc)

    HttpToolsHeaderTimeout.header_timeout_s = header_timeout_s
    return HttpToolsHeaderTimeout


def _h11_protocol(header_timeout_s: float) -> type[asyncio.Protocol]:
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class H11HeaderTimeout(_HeaderDeadline, H11Protocol):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm_header_deadline()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:  # a request's headers were parsed
                self._cancel_header_deadline()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._arm_header_deadline()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_header_deadline()
            super().connection_lost(exc)

    H11HeaderTimeout.header_timeout_s = header_timeout_s
    return H11HeaderTimeout
