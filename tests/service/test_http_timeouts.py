"""The request-header deadline in both uvicorn protocol flavours (httptools and h11), on a
trivial ASGI app: slow headers are cut with 408, nothing else is."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from service.http_timeouts import _h11_protocol, _httptools_protocol, header_timeout_protocol

TIMEOUT_S = 0.5


async def app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/slow":  # a handler that takes longer than the header deadline
        await asyncio.sleep(3 * TIMEOUT_S)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture(params=["httptools", "h11"])
def url(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "httptools":
        pytest.importorskip("httptools")
        protocol = _httptools_protocol(TIMEOUT_S)
    else:
        protocol = _h11_protocol(TIMEOUT_S)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, http=protocol, log_level="error")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def _held(url: str, first: bytes, piece: bytes) -> tuple[float, bytes]:
    port = int(url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=0.1)
    t0 = time.monotonic()
    sock.sendall(first)
    reply = b""
    while time.monotonic() - t0 < 10 * TIMEOUT_S:
        try:
            sock.sendall(piece)
            reply = sock.recv(4096)
            break
        except TimeoutError:
            continue
        except OSError:
            break
    held = time.monotonic() - t0
    sock.close()
    return held, reply


def test_slow_headers_get_408(url: str) -> None:
    held, reply = _held(url, b"GET / HTTP/1.1\r\n", b"X-Slow: 1\r\n")
    assert TIMEOUT_S - 0.05 <= held <= TIMEOUT_S + 1.0
    assert reply.startswith(b"HTTP/1.1 408 ") and b'"error": "timeout"' in reply


def test_requests_slower_than_the_deadline_and_keep_alive_pass(url: str) -> None:
    with httpx.Client(base_url=url) as client:
        assert client.get("/slow").text == "ok"  # the deadline covers headers, not handlers
        time.sleep(TIMEOUT_S / 2)
        assert client.get("/").text == "ok"  # the same connection, after a pause
        assert client.get("/slow").text == "ok"


def test_pipelined_request_is_not_cut(url: str) -> None:
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        request = b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"
        sock.sendall(request + request)  # both headers at once; the second waits its turn
        data = b""
        while data.count(b"HTTP/1.1 200") < 2:
            part = sock.recv(4096)
            assert part, f"closed after {data!r}"
            data += part


def test_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="header_timeout_s"):
        header_timeout_protocol(0)
