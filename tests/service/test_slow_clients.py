"""Slow and greedy HTTP clients against the real server (uvicorn on a loopback socket).

* a client trickling header lines is answered 408 and closed after ``header_timeout_s``,
  before any authentication (before the fix uvicorn held it as long as it kept sending);
* an upload that stalls or trickles a few bytes a second is aborted with 408 after
  ``upload_idle_timeout_s`` and its folder removed (before: held until the client stopped);
* uploads in progress are capped per key (429) and per process (503), with Retry-After and the
  limit in the message (before: only completed uploads counted against the job caps).

Timeouts are set small here (1-2 s); the held times are printed (`pytest -s`).
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import app_support as support
import httpx
import pytest

from bench._common import trickle

KEY_A, KEY_B = support.KEY_A, support.KEY_B
HEADER_TIMEOUT_S = 1.0
IDLE_TIMEOUT_S = 2.0
SLACK_S = 1.5  # a loaded 2-core CI machine: timers fire late, never early


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, assets: Path) -> Iterator[Any]:
    bundle = support.tiny_bundle(tmp_path_factory.getbasetemp(), assets)
    tmp = tmp_path_factory.mktemp("slow")
    with support.running_server(
        bundle,
        tmp,
        AVASERVE_API_KEYS=f"{KEY_A},{KEY_B}",
        AVASERVE_HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S),
        AVASERVE_UPLOAD_IDLE_TIMEOUT_S=str(IDLE_TIMEOUT_S),
        AVASERVE_MAX_UPLOADS_PER_KEY="2",
        AVASERVE_MAX_UPLOADS_GLOBAL="3",
    ) as s:
        yield s


def _reply(sock: socket.socket) -> tuple[int | None, dict[str, str], dict[str, Any]]:
    """Status, headers and JSON body of the server's answer (None: closed without one)."""
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            part = sock.recv(65536)
            if not part:
                break
            data += part
    except OSError:
        pass
    if not data.startswith(b"HTTP/1.1 "):
        return None, {}, {}
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    headers = {k.lower(): v for k, v in headers.items()}
    want = int(headers.get("content-length", "0"))
    try:
        while len(body) < want:
            part = sock.recv(65536)
            if not part:
                break
            body += part
    except OSError:
        pass
    return int(lines[0][9:12]), headers, json.loads(body) if body else {}


def _upload_head(port: int, key: str, length: int = 10_000_000) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(
        (
            f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {length}\r\n\r\n"
        ).encode()
    )
    return sock


def test_header_trickle_is_cut_after_the_header_timeout(server: Any) -> None:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    sock.sendall(b"GET /v1/jobs HTTP/1.1\r\n")
    held = trickle(sock, b"X-Slow: 1\r\n", 0.2, limit_s=10 * HEADER_TIMEOUT_S)
    status, headers, body = _reply(sock)
    sock.close()
    print(f"header trickle held {held:.2f} s (header_timeout_s {HEADER_TIMEOUT_S})")
    assert HEADER_TIMEOUT_S - 0.1 <= held <= HEADER_TIMEOUT_S + SLACK_S
    assert status == 408 and headers.get("connection") == "close"
    assert body["error"] == "timeout" and "AVASERVE_HEADER_TIMEOUT_S" in body["message"]
    # A connection that never sends a byte is closed too.
    idle = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    t0 = time.monotonic()
    assert _reply(idle)[0] == 408
    assert time.monotonic() - t0 <= HEADER_TIMEOUT_S + SLACK_S
    idle.close()


def test_keep_alive_and_websockets_outlive_the_header_timeout(server: Any) -> None:
    """The deadline covers headers only: a kept-alive client's later requests and an open
    WebSocket are not cut."""
    import asyncio

    import websockets

    with httpx.Client(base_url=server.url) as client:
        assert client.get("/healthz").status_code == 200
        time.sleep(HEADER_TIMEOUT_S / 2)
        assert client.get("/healthz").status_code == 200

    async def live() -> str:
        url = server.url.replace("http", "ws") + "/v1/streams/long"
        headers = {"Authorization": f"Bearer {KEY_A}"}
        async with websockets.connect(url, additional_headers=headers) as ws:
            await ws.send(json.dumps({"type": "start", "input": "jpeg", "fps_hint": 5}))
            assert json.loads(await ws.recv())["type"] == "ready"
            await asyncio.sleep(2 * HEADER_TIMEOUT_S + 0.5)
            await ws.send(json.dumps({"type": "ping"}))
            while True:
                message = json.loads(await ws.recv())
                if message["type"] == "pong":
                    return "pong"

    assert asyncio.run(live()) == "pong"


@pytest.mark.parametrize("piece", [b"", b"0123456789"], ids=["stalled", "trickle-100B/s"])
def test_slow_upload_is_aborted_after_the_idle_timeout(server: Any, piece: bytes) -> None:
    uploads = Path(server.env["AVASERVE_UPLOAD_DIR"])
    sock = _upload_head(server.port, KEY_A)
    sock.sendall(b"\x00" * 100)
    held = trickle(sock, piece, 0.1, limit_s=10 * IDLE_TIMEOUT_S)
    status, headers, body = _reply(sock)
    sock.close()
    print(f"upload ({piece!r} every 0.1 s) held {held:.2f} s (idle timeout {IDLE_TIMEOUT_S} s)")
    assert held <= IDLE_TIMEOUT_S + SLACK_S
    assert status == 408 and headers.get("connection") == "close"
    assert body["error"] == "timeout" and "AVASERVE_UPLOAD_IDLE_TIMEOUT_S" in body["message"]
    assert not [p for p in uploads.rglob("*") if p.is_file()], "the upload's folder is removed"


def test_uploads_in_progress_are_capped_per_key_and_globally(server: Any) -> None:
    held = [_upload_head(server.port, KEY_A), _upload_head(server.port, KEY_A)]
    try:
        for s in held:
            s.sendall(b"\x00" * 10)
        time.sleep(0.2)  # both are inside the handler, holding their slots
        third = _upload_head(server.port, KEY_A)
        status, headers, body = _reply(third)
        third.close()
        assert status == 429 and int(headers["retry-after"]) >= 1
        assert "already has 2 uploads in progress (the limit)" in body["message"]
        held.append(_upload_head(server.port, KEY_B))  # another key: the third global slot
        held[-1].sendall(b"\x00" * 10)
        time.sleep(0.2)
        fourth = _upload_head(server.port, KEY_B)
        status, headers, body = _reply(fourth)
        fourth.close()
        assert status == 503 and int(headers["retry-after"]) >= 1
        assert "at its limit of 3 uploads" in body["message"]
        # The held uploads stall: the idle timeout ends them and frees their slots.
        for s in held:
            s.settimeout(IDLE_TIMEOUT_S + 10)
            assert _reply(s)[0] == 408
    finally:
        for s in held:
            s.close()
    r = httpx.post(
        server.url + "/v1/jobs",
        content=b"not a video",
        headers={"Authorization": f"Bearer {KEY_A}"},
    )
    assert r.status_code == 415  # admitted again (refused for its content, not a cap)
