"""Live WebSocket streams through the real app (Starlette TestClient, real engine, tiny bundle).

Covers: the documented protocol end to end (start, JPEG frames with an 8-byte pts prefix, one
annotation per keyframe with the REST record schema, status, end); reconnect with the same
stream id keeps the bank; refusals *before* accept (no key, bad key, foreign Origin, token in
the query string, bad stream id); protocol errors.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import app_support as support
import pytest
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.websockets import WebSocketDisconnect

from service.app import create_app
from service.auth import key_fingerprint
from service.settings import Settings

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # TestClient on httpx
KEY_A, KEY_B = support.KEY_A, support.KEY_B
PROTOCOLS = ["avaserve.v1", f"bearer.{KEY_A}"]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, assets: Path) -> Iterator[TestClient]:
    bundle = support.tiny_bundle(tmp_path_factory.getbasetemp(), assets)
    settings = Settings(
        bundle=bundle,
        api_keys=f"{KEY_A},{KEY_B}",
        upload_dir=tmp_path_factory.mktemp("uploads"),
        allowed_origins="https://app.example.com",
        live_queue_frames=256,
    )
    with TestClient(create_app(settings), base_url="http://127.0.0.1:8000") as c:
        yield c


@pytest.fixture(scope="module")
def frames(assets: Path) -> list[bytes]:
    """The 10 s basketball clip as protocol messages: 5 fps, short side 240."""
    from service.decode import decode_frames
    from service.serve_cli import encode_frame

    out, next_pts = [], 0.0
    with decode_frames(assets / "video" / "basketball_2people.mp4", short_side=240) as video:
        for frame in video:
            if frame.pts_seconds + 1e-6 >= next_pts:
                out.append(encode_frame(frame.image, frame.pts_seconds))
                next_pts = frame.pts_seconds + 0.2
    return out


def _stream(client: TestClient, frames: list[bytes], stream_id: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    with client.websocket_connect(f"/v1/streams/{stream_id}", subprotocols=PROTOCOLS) as ws:
        assert ws.accepted_subprotocol == "avaserve.v1"  # the token is never echoed
        ws.send_text(json.dumps({"type": "start", "input": "jpeg", "fps_hint": 5}))
        messages.append(ws.receive_json())
        start = time.monotonic()
        for payload in frames:
            # Real-time pace (5 fps): what a camera would do.
            (pts,) = support_pts(payload)
            delay = start + pts - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            ws.send_bytes(payload)
        ws.send_text(json.dumps({"type": "end"}))
        while True:
            try:
                messages.append(ws.receive_json())
            except WebSocketDisconnect as closed:
                assert closed.code == 1000
                break
    return messages


def support_pts(payload: bytes) -> tuple[float]:
    import struct

    return struct.unpack_from("<d", payload)  # type: ignore[return-value]


def test_live_stream_one_annotation_per_keyframe(client: TestClient, frames: list[bytes]) -> None:
    messages = _stream(client, frames, "cam-1")
    assert messages[0]["type"] == "ready" and messages[0]["clip_alignment"] == "causal"
    annotations = [m for m in messages if m["type"] == "annotation"]
    assert [a["time"] for a in annotations] == [float(t) for t in range(10)]
    records = [r for a in annotations for r in a["records"]]
    assert records, "the players are detected"
    assert set(records[0]) == {
        "video",
        "time",
        "track_id",
        "box",
        "box_norm",
        "score",
        "context",
        "actions",
        "scores",
    }  # fmt: skip  - the REST record schema
    assert all(r["time"] == a["time"] for a in annotations for r in a["records"])
    status = [m for m in messages if m["type"] == "status"][-1]
    assert status["dropped_keyframes"] == 0 and status["keyframes_sent"] == 10
    assert not [m for m in messages if m["type"] == "error"]

    # The bank outlives the connection: a reconnect with the same id reads this context.
    service = client.app.state.service  # type: ignore[attr-defined]
    bank_id = f"live-{key_fingerprint(KEY_A)}-cam-1"
    window = client.portal.call(service.engine.bank.read_window, bank_id, 9, (-60, 0), 5)  # type: ignore[union-attr]
    assert window.num_valid > 0
    # Another key using the same stream id gets its own, empty bank.
    other = f"live-{key_fingerprint(KEY_B)}-cam-1"
    empty = client.portal.call(service.engine.bank.read_window, other, 9, (-60, 0), 5)  # type: ignore[union-attr]
    assert empty.num_valid == 0


WRONG = "wrong-key-0123456789abcdef"


@pytest.mark.parametrize(
    ("headers", "subprotocols", "path", "status", "error"),
    [
        ({}, ["avaserve.v1"], "/v1/streams/s1", 401, "unauthorized"),
        ({}, ["avaserve.v1", f"bearer.{WRONG}"], "/v1/streams/s1", 401, "unauthorized"),
        ({"Authorization": f"Bearer {WRONG}"}, [], "/v1/streams/s1", 401, "unauthorized"),
        ({"Origin": "https://evil.example.net"}, PROTOCOLS, "/v1/streams/s1", 403, "forbidden"),
        ({"Origin": "null"}, PROTOCOLS, "/v1/streams/s1", 403, "forbidden"),
        ({}, ["avaserve.v1"], f"/v1/streams/s1?token={KEY_A}", 400, "bad_request"),
        ({}, ["avaserve.v1"], f"/v1/streams/s1?key={KEY_A}", 400, "bad_request"),
        ({}, ["avaserve.v1"], f"/v1/streams/s1?auth={KEY_A}", 400, "bad_request"),
        ({}, PROTOCOLS, "/v1/streams/bad%20id", 400, "bad_request"),
    ],
    ids=[
        "no-key",
        "bad-proto-key",
        "bad-header-key",
        "foreign-origin",
        "null-origin",
        "query-token",
        "query-key",
        "query-auth",
        "bad-stream-id",
    ],
)  # fmt: skip
def test_refused_before_accept(
    client: TestClient,
    headers: dict[str, str],
    subprotocols: list[str],
    path: str,
    status: int,
    error: str,
) -> None:
    # The handshake is answered with an HTTP status and the REST error body instead of being
    # accepted (TestClient, like uvicorn, supports ASGI denial responses).
    with (
        pytest.raises(WebSocketDenialResponse) as refused,
        client.websocket_connect(path, headers=headers, subprotocols=subprotocols),
    ):
        pass
    assert refused.value.status_code == status
    assert refused.value.json()["error"] == error
    assert KEY_A not in refused.value.text  # the body never echoes a key
    if status == 401:
        assert refused.value.headers["www-authenticate"] == "Bearer"


def test_allowed_origins_and_header_auth(client: TestClient) -> None:
    for headers in (
        {"Origin": "https://app.example.com"},  # listed in allowed_origins
        {"Origin": "http://testserver"},  # the page's own origin (TestClient Host)
    ):
        with client.websocket_connect("/v1/streams/ok", headers=headers, subprotocols=PROTOCOLS):
            pass
    auth = {"Authorization": f"Bearer {KEY_B}"}
    with client.websocket_connect("/v1/streams/ok", headers=auth) as ws:
        assert ws.accepted_subprotocol is None


def test_bad_start_and_bad_frames(client: TestClient) -> None:
    with client.websocket_connect("/v1/streams/proto", subprotocols=PROTOCOLS) as ws:
        ws.send_text(json.dumps({"type": "start", "input": "gif"}))
        assert ws.receive_json()["code"] == "bad_start"
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 1003
    with client.websocket_connect("/v1/streams/proto", subprotocols=PROTOCOLS) as ws:
        ws.send_text(json.dumps({"type": "start", "input": "jpeg", "fps_hint": 5}))
        assert ws.receive_json()["type"] == "ready"
        ws.send_bytes(b"\x00" * 4)  # shorter than the pts header
        ws.send_bytes(b"\x00" * 8 + b"not a jpeg")
        ws.send_text("{not json")
        codes = [ws.receive_json()["code"] for _ in range(3)]
        # The header error comes at once; the JPEG one when the pusher decodes that frame.
        assert codes[0] == "bad_frame" and sorted(codes[1:]) == ["bad_frame", "bad_message"]
        ws.send_text(json.dumps({"type": "end"}))
        messages = []
        with pytest.raises(WebSocketDisconnect):
            while True:
                messages.append(ws.receive_json())
        assert messages[-1]["type"] == "status" and messages[-1]["bad_frames"] == 2


def test_same_stream_id_twice_is_refused(client: TestClient) -> None:
    with client.websocket_connect("/v1/streams/twice", subprotocols=PROTOCOLS):
        with (
            pytest.raises(WebSocketDenialResponse) as refused,
            client.websocket_connect("/v1/streams/twice", subprotocols=PROTOCOLS),
        ):
            pass
        assert refused.value.status_code == 409
        assert refused.value.json() == {
            "error": "conflict",
            "message": "this stream id is already open",
        }


def test_stream_limit_per_key_is_429_with_retry_after(client: TestClient) -> None:
    """A key's third concurrent stream (AVASERVE_MAX_STREAMS_PER_KEY=2) is answered 429 with
    Retry-After before accept; another key is not affected, and a closed stream frees a slot."""
    with (
        client.websocket_connect("/v1/streams/lim-1", subprotocols=PROTOCOLS),
        client.websocket_connect("/v1/streams/lim-2", subprotocols=PROTOCOLS),
    ):
        with (
            pytest.raises(WebSocketDenialResponse) as refused,
            client.websocket_connect("/v1/streams/lim-3", subprotocols=PROTOCOLS),
        ):
            pass
        assert refused.value.status_code == 429
        assert refused.value.json()["error"] == "too_many_requests"
        assert int(refused.value.headers["retry-after"]) >= 1
        with client.websocket_connect(
            "/v1/streams/lim-3", subprotocols=["avaserve.v1", f"bearer.{KEY_B}"]
        ):
            pass
    with client.websocket_connect("/v1/streams/lim-3", subprotocols=PROTOCOLS):
        pass


def _as_mpegts(video: Path) -> bytes:
    """The clip remuxed (no re-encode) into MPEG-TS bytes, as a camera or encoder would send."""
    import io

    import av

    buffer = io.BytesIO()
    with av.open(str(video)) as src, av.open(buffer, "w", format="mpegts") as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is None:
                continue
            packet.stream = stream
            dst.mux(packet)
    return buffer.getvalue()


def test_live_mpegts_byte_stream(client: TestClient, assets: Path) -> None:
    data = _as_mpegts(assets / "video" / "basketball_2people.mp4")
    with client.websocket_connect("/v1/streams/ts", subprotocols=PROTOCOLS) as ws:
        ws.send_text(json.dumps({"type": "start", "input": "mpegts", "fps_hint": 30}))
        assert ws.receive_json()["type"] == "ready"
        chunk = 32 * 1024
        for start in range(0, len(data), chunk):
            ws.send_bytes(data[start : start + chunk])
            time.sleep(0.1)  # about real time for this ~1 Mbit/s clip
        ws.send_text(json.dumps({"type": "end"}))
        messages = []
        with pytest.raises(WebSocketDisconnect):
            while True:
                messages.append(ws.receive_json())
    times = [m["time"] for m in messages if m["type"] == "annotation"]
    assert len(times) >= 8 and times == sorted(times), times
    assert any(m["records"] for m in messages if m["type"] == "annotation")
    assert not [m for m in messages if m["type"] == "error"]


def test_slow_reader_drops_oldest_then_closes_1013(monkeypatch: pytest.MonkeyPatch) -> None:
    """The per-connection policy, without a socket (TestClient never applies back-pressure)."""
    import asyncio
    from types import SimpleNamespace

    from service.routes import streams

    monkeypatch.setattr(streams, "STATUS_EVERY_S", 0.02)
    settings = Settings(live_send_queue=2, live_max_lag_s=0.1)
    engine = SimpleNamespace(
        manifest=SimpleNamespace(keyframe_rate=1.0), live_session=lambda *a, **k: None
    )
    service = SimpleNamespace(settings=settings, engine=engine, metrics=None)
    start = streams.StartMessage(type="start", input="jpeg")
    conn = streams._Connection(None, service, start, "bank", "s")  # type: ignore[arg-type]
    for t in range(5):
        conn.post({"type": "annotation", "time": float(t), "records": []})
    assert [m["time"] for m in conn.outbox] == [3.0, 4.0]  # the newest survive
    assert conn.stats.keyframes_dropped == 3
    assert conn.stats.message()["dropped_keyframes"] == 3
    # Nobody reads: the outbox stays full, so the monitor gives up on the client.
    asyncio.run(asyncio.wait_for(conn.monitor(), timeout=5))
    assert conn.close_code == 1013
    # Control messages are bounded too: a client that sends garbage and never reads.
    for _ in range(100):
        conn.post_error("bad_frame", "x")
    assert len(conn.outbox) <= 2 + 8


def _with_pts(payload: bytes, pts: float) -> bytes:
    import struct

    return struct.pack("<d", pts) + payload[8:]


def test_pts_bombs_are_refused_and_the_stream_goes_on(
    client: TestClient, frames: list[bytes]
) -> None:
    """1e308 and NaN are refused naming pts and its range, without poisoning the stream (before
    the fix 1e308 was taken as the last pts, every later frame was refused as "not after the
    previous 1e+308", and the engine tried to make a keyframe of every second up to it); a
    +300 s jump starts a new segment, said so in a pts_gap error, and annotations go on."""
    first, later = frames[:16], frames[16:26]  # 0.0 .. 3.0 s, then 3.2 .. 5.0 s
    messages: list[dict[str, Any]] = []
    with client.websocket_connect("/v1/streams/bomb", subprotocols=PROTOCOLS) as ws:
        ws.send_text(json.dumps({"type": "start", "input": "jpeg", "fps_hint": 5}))
        assert ws.receive_json()["type"] == "ready"
        for payload in first:
            ws.send_bytes(payload)
            time.sleep(0.1)
        ws.send_bytes(_with_pts(first[-1], 1e308))
        ws.send_bytes(_with_pts(first[-1], float("nan")))
        ws.send_bytes(_with_pts(first[-1], -5.0))
        for payload in later:
            (pts,) = support_pts(payload)
            ws.send_bytes(_with_pts(payload, pts + 300.0))
            time.sleep(0.1)
        ws.send_text(json.dumps({"type": "end"}))
        with pytest.raises(WebSocketDisconnect) as closed:
            while True:
                messages.append(ws.receive_json())
        assert closed.value.code == 1000
    errors = [m for m in messages if m["type"] == "error"]
    assert [e["code"] for e in errors] == ["bad_frame"] * 3 + ["pts_gap"]
    assert errors[0]["message"].startswith("pts 1e+308 is not a finite number of seconds in [0, ")
    assert errors[1]["message"].startswith("pts nan ")
    assert "than the 10 s limit (AVASERVE_MAX_PTS_GAP_S)" in errors[3]["message"]
    times = [m["time"] for m in messages if m["type"] == "annotation"]
    # Keyframes 0-3 before the jump, 304-305 after it, none for the gap. (Not all need be
    # there: a loaded machine may drop a live keyframe; the set bounds what may come.)
    assert set(times) <= {0.0, 1.0, 2.0, 3.0, 304.0, 305.0}
    assert any(t < 4 for t in times) and any(t > 300 for t in times)  # the stream went on
    assert messages[-1]["type"] == "status" and messages[-1]["bad_frames"] == 3


@pytest.mark.parametrize(
    ("raw", "expect"),
    [
        ('{"type": "start", "input": "jpeg", "fps_hint": 1e9}', "fps_hint 1000000000.0: input "
         "should be less than or equal to 120; fps_hint takes a number of frames per second, "
         "0 < fps_hint <= 120"),
        ('{"type": "start", "input": "jpeg", "fps_hint": 0}', "fps_hint 0: input should be "
         "greater than 0"),
        ('{"type": "start", "input": "jpeg", "fps_hint": "10"}', "fps_hint \"10\": input "
         "should be a valid number"),
        ('{"type": "start", "input": "gif"}', "input \"gif\": input should be 'jpeg', 'mpegts' "
         "or 'h264'"),
        ('{"type": "start", "input": {"a": [1, {"b": 2}]}}', "input an object: input should be "
         "'jpeg'"),
        ('{"type": "start"}', "input is missing; it takes \"jpeg\", \"mpegts\" or \"h264\""),
        ('{"type": "begin", "input": "jpeg"}', "type \"begin\": input should be 'start'"),
        ('{"type": "start", "input": "jpeg", "meta": {"x": 1}}', "unknown field 'meta'"),
        ('[{"type": "start"}]', "must be a JSON object, got an array"),
        ("[" * 1000 + "]" * 1000, "not valid JSON (recursion limit exceeded"),
        ('{"type": "start"', "not valid JSON (EOF while parsing"),
        ('{"type": "start", "input": "jpeg", "pad": "' + "x" * 5000 + '"}',
         "start message is 5045 bytes, over the 4096-byte limit"),
    ],
)  # fmt: skip
def test_bad_start_names_the_field_or_limit(raw: str, expect: str) -> None:
    """Before the fix every one of these got the same text, naming no field, and a 1 MB start
    message was parsed in full (and one with an extra field was accepted)."""
    from service.routes.streams import StartRefused, parse_start

    with pytest.raises(StartRefused) as refused:
        parse_start(raw)
    assert expect in str(refused.value)
    assert str(refused.value).endswith('{"type": "start", "input": "jpeg", "fps_hint": 10}')


def test_valid_start_messages_pass() -> None:
    from service.routes.streams import parse_start

    assert parse_start('{"type": "start", "input": "h264"}').fps_hint == 10.0
    assert parse_start('{"type": "start", "input": "jpeg", "fps_hint": 12.5}').fps_hint == 12.5
    assert parse_start('{"type": "start", "input": "mpegts", "fps_hint": 120}').input == "mpegts"


@pytest.mark.parametrize(
    ("message", "expect", "close"),
    [
        ({"type": "start", "input": "jpeg", "fps_hint": 1e9}, "fps_hint", 1003),
        ({"type": "start", "input": "gif"}, "input \"gif\"", 1003),
        ({"type": "start", "input": "jpeg", "x": "y" * 1_000_000}, "4096-byte limit", 1003),
        (b"\x00" * 16, "must be text (JSON), not binary", 1003),
    ],
    ids=["fps_hint", "input", "1MB", "binary"],
)  # fmt: skip
def test_bad_start_over_the_websocket(
    client: TestClient, message: dict[str, Any] | bytes, expect: str, close: int
) -> None:
    with client.websocket_connect("/v1/streams/start", subprotocols=PROTOCOLS) as ws:
        if isinstance(message, bytes):
            ws.send_bytes(message)
        else:
            ws.send_text(json.dumps(message))
        error = ws.receive_json()
        assert error["type"] == "error" and error["code"] == "bad_start"
        assert expect in error["message"]
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == close


def test_jpeg_over_the_pixel_limit_says_so(client: TestClient) -> None:
    """A 4000x3000 JPEG was reported as "Not a decodable JPEG (ValueError)"."""
    import io
    import struct

    from PIL import Image

    def jpeg(w: int, h: int) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", (w, h), (90, 120, 150)).save(buf, format="JPEG")
        return buf.getvalue()

    with client.websocket_connect("/v1/streams/big", subprotocols=PROTOCOLS) as ws:
        ws.send_text(json.dumps({"type": "start", "input": "jpeg", "fps_hint": 5}))
        assert ws.receive_json()["type"] == "ready"
        ws.send_bytes(struct.pack("<d", 0.0) + jpeg(4000, 3000))
        ws.send_bytes(struct.pack("<d", 0.2) + jpeg(8, 8))
        errors = [ws.receive_json() for _ in range(2)]
        ws.send_text(json.dumps({"type": "end"}))
    assert [e["code"] for e in errors] == ["bad_frame", "bad_frame"]
    assert errors[0]["message"] == (
        "frame 4000x3000 = 12000000 pixels is over the pixel limit of 8294400 pixels; "
        "scale frames down before sending"
    )
    assert errors[1]["message"] == "frame 8x8 is under the minimum of 16 pixels a side"
