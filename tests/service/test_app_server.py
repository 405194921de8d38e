"""The real server process (`avaserve serve` under uvicorn): what only a real socket shows.

* an oversize upload streamed without Content-Length gets 413 and the server's resident memory
  grows by far less than the body (it is never buffered);
* WebSocket handshakes refused before accept are HTTP 403 on the wire;
* API keys never appear in the server's output (app logs and uvicorn's access log), whether
  sent as a header, as a WebSocket subprotocol, or (refused) in a query string.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import app_support as support
import httpx
import pytest

KEY_A = support.KEY_A
A = {"Authorization": f"Bearer {KEY_A}"}
LIMIT = 32 * 1024**2


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, assets: Path) -> Iterator[Any]:
    bundle = support.tiny_bundle(tmp_path_factory.getbasetemp(), assets)
    tmp = tmp_path_factory.mktemp("server")
    with support.running_server(
        bundle, tmp, AVASERVE_API_KEYS=KEY_A, AVASERVE_MAX_UPLOAD_BYTES=str(LIMIT)
    ) as s:
        yield s


def _raw_upload(port: int, total: int) -> tuple[int | None, int]:
    """POST /v1/jobs with a chunked body of ``total`` bytes over a raw socket; returns the
    status the server answered (None if it never did) and the bytes it let us send."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = (
        f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {KEY_A}\r\n"
        "Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    sock.sendall(head.encode())
    chunk = b"\x00" * (1024 * 1024)
    framed = b"%x\r\n" % len(chunk) + chunk + b"\r\n"
    sent = 0
    try:
        while sent < total:
            sock.sendall(framed)
            sent += len(chunk)
        sock.sendall(b"0\r\n\r\n")
    except OSError:
        pass  # the server answered 413 and closed: exactly what we want
    status = None
    try:
        reply = sock.recv(4096)
        if reply.startswith(b"HTTP/1.1 "):
            status = int(reply[9:12])
    except OSError:
        pass
    sock.close()
    return status, sent


def test_oversize_upload_is_413_with_bounded_memory(server: Any) -> None:
    assert server.proc is not None
    before = support.rss_bytes(server.proc.pid)
    status, sent = _raw_upload(server.port, 512 * 1024**2)  # 16x the 32 MiB limit
    time.sleep(0.5)
    growth = support.rss_bytes(server.proc.pid) - before
    print(f"oversize upload: {status}, sent {sent / 1e6:.0f} MB, RSS +{growth / 1e6:.1f} MB")
    assert status == 413
    assert sent < 512 * 1024**2, "the server stopped the upload instead of reading it all"
    assert growth < 20 * 1024**2
    # Declared oversize: refused from the header alone.
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.sendall(
        f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY_A}\r\n"
        f"Content-Length: {LIMIT + 1}\r\n\r\n".encode()
    )
    assert sock.recv(4096).startswith(b"HTTP/1.1 413 ")
    sock.close()
    assert httpx.get(server.url + "/readyz").status_code == 200


def test_websocket_refusals_are_http_answers_before_accept(server: Any) -> None:
    """A real server answers a refused handshake with the REST status and error body: 401 (and
    ``WWW-Authenticate: Bearer``) without a valid key, 403 for a foreign Origin, 400 for a bad
    stream id; only a valid key gets 101."""
    import websockets

    base = server.url.replace("http", "ws") + "/v1/streams/"

    async def attempt(path: str = "s1", **kw: Any) -> tuple[int, dict[str, Any], str | None]:
        try:
            async with websockets.connect(base + path, **kw):
                return 101, {}, None
        except websockets.InvalidStatus as exc:
            r = exc.response
            return (
                int(r.status_code),
                json.loads(r.body or b"{}"),
                r.headers.get("www-authenticate"),
            )

    async def main() -> list[tuple[int, dict[str, Any], str | None]]:
        return [
            await attempt(),
            await attempt(subprotocols=["avaserve.v1", "bearer.not-the-right-key-0000"]),
            await attempt(additional_headers={**A, "Origin": "https://evil.example.net"}),
            await attempt("bad%20id", additional_headers=A),
            await attempt(additional_headers=A),
        ]

    missing, wrong, origin, bad_id, ok = asyncio.run(main())
    assert missing == (401, {"error": "unauthorized", "message": "Missing API key"}, "Bearer")
    assert wrong == (401, {"error": "unauthorized", "message": "Invalid API key"}, "Bearer")
    assert origin[:2] == (403, {"error": "forbidden", "message": "Origin not allowed"})
    assert bad_id[0] == 400 and bad_id[1]["error"] == "bad_request"
    assert ok[0] == 101


def test_keys_never_logged(server: Any) -> None:
    import websockets

    httpx.get(server.url + "/v1/jobs", headers=A)
    httpx.get(server.url + "/v1/jobs", params={"token": KEY_A})  # refused, but logged by uvicorn
    httpx.get(server.url + f"/v1/jobs/{KEY_A}", headers=A)  # a key pasted into a path

    async def ws() -> None:
        async with websockets.connect(
            server.url.replace("http", "ws") + "/v1/streams/logs",
            subprotocols=["avaserve.v1", f"bearer.{KEY_A}"],  # type: ignore[list-item]
        ) as conn:
            await conn.send('{"type": "start", "input": "jpeg"}')
            await conn.recv()

    asyncio.run(ws())
    time.sleep(0.3)
    log = server.log()
    assert '"GET /v1/jobs' in log, "the access log is on (otherwise this test proves nothing)"
    assert KEY_A not in log
    assert "[REDACTED]" in log


def test_clients_say_why_instead_of_a_traceback(server: Any, assets: Path) -> None:
    """`avaserve watch` / `submit`: a refused handshake and an unreachable server end with exit
    code 1 and one line saying why (the server's own message for the refusal)."""
    from typer.testing import CliRunner

    from avaserve.cli import app

    runner = CliRunner()
    video = str(assets / "video" / "basketball_2people.mp4")
    refused = runner.invoke(
        app, ["watch", video, "--server", server.url], env={"AVASERVE_API_KEY": None}
    )
    assert refused.exit_code == 1
    assert "stream refused (401): Missing API key" in refused.output
    assert "Traceback" not in refused.output
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    for command in ("watch", "submit"):
        down = runner.invoke(app, [command, video, "--server", closed], env={})
        assert down.exit_code == 1, down.output
        assert f"cannot reach {closed}" in down.output
