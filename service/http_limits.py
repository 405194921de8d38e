"""Request time and body-size limits for the app (plain ASGI, so the upload stays a stream)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["MAX_SMALL_BODY", "LimitsMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Requests other than the upload carry no body worth more than this (JSON options at most).
MAX_SMALL_BODY = 64 * 1024


class LimitsMiddleware:
    """Request time and body-size limits, as plain ASGI so the upload body stays a stream.

    * Every HTTP request except the upload, result downloads and WebSockets gets
      ``request_timeout_s`` (504 when no response started by then).
    * Every request except the upload announcing a body over 64 KiB gets 413 before the body
      is read (the upload has its own limit, counted while streaming to disk).
    """

    def __init__(self, app: ASGIApp, *, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        method: str = scope.get("method", "GET")
        is_upload = method == "POST" and path.rstrip("/") == "/v1/jobs"
        if not is_upload:
            length = _content_length(scope)
            if length is not None and length > MAX_SMALL_BODY:
                await _send_json(send, 413, "body_too_large", "This endpoint takes no large body")
                return
        long_running = is_upload or path.endswith(("/results", "/video"))
        if long_running:
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            async with asyncio.timeout(self.timeout_s):
                await self.app(scope, receive, tracking_send)
        except TimeoutError:
            if not started:
                await _send_json(send, 504, "timeout", "The request took too long; retry later")


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_json(send: Send, status_code: int, error: str, message: str) -> None:
    body = json.dumps({"error": error, "message": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status_code,
            "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
        }
    )
    await send({"type": "http.response.body", "body": body})
