"""``/v1/streams/{stream_id}``: live annotation over a WebSocket (protocol: docs/api.md).

Handshake (all before ``accept``; a refusal is an HTTP answer with the REST status and error
body, sent as an ASGI denial response by service/app.py's ``WsRefusal`` handler (service/errors.py
names the codes), and no connection is ever opened)::

    query-string token 400 / foreign Origin 403 / missing or invalid key 401
    bad stream id 400 / draining 503 / stream id already open 409 / over a limit 429 or 503
    accept(subprotocol="avaserve.v1")        (the bearer.<key> entry is never echoed)

Then, per connection, four tasks joined by bounded buffers::

    reader  --frames (deque, live_queue_frames: oldest dropped)-->  pusher -> LiveSession
    LiveSession.results() -> emitter --(deque, live_send_queue: oldest dropped)--> sender
    every 2 s: status (with the keyframe stride); a client that stops reading -> close 1013

Keyframes first: the reader queues JPEG frames still encoded (pts checked at once), and the
pusher decodes and ingests the next frame only once the stream's in-flight keyframes are done
(`LiveSession.keyframes_idle`, at most ``_INGEST_YIELD_S``). Frames after a keyframe feed the
*next* keyframe's clip, a second later, so they can wait a few tens of milliseconds, while
decoding them during a keyframe's graph runs would compete for the same cores
(bench/bench_ws_lag.py measures the lag). The frame buffer holds encoded JPEGs, so its
``live_queue_frames`` bound costs an order of magnitude less memory than decoded frames.

Causal throughout: clips end at their keyframe, the bank window is ``[t - 60, t]``. The bank is
keyed by (API key, stream id) and outlives the connection, so a client that reconnects with the
same stream id (and keeps its presentation clock) keeps its long-term context.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, WebSocket
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.websockets import WebSocketDisconnect, WebSocketState

from core.defaults import TOP_K
from service.admission import LimitExceeded
from service.auth import WsRefusal, authenticate_websocket
from service.decode.live import (
    MAX_FRAME_PIXELS,
    PTS_HEADER,
    FrameRefused,
    decode_jpeg,
    split_frame_message,
)
from service.errors import VideoInputError
from service.routes.deps import ServiceState, get_service
from service.scheduler import InvalidPts, check_pts

log = logging.getLogger(__name__)
router = APIRouter(tags=["streams"])

_STREAM_ID_RE = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")
WS_NORMAL = 1000
WS_UNSUPPORTED_DATA = 1003
WS_POLICY = 1008
WS_TOO_BIG = 1009
WS_INTERNAL = 1011
WS_TRY_AGAIN_LATER = 1013
START_TIMEOUT_S = 10.0
# Longest start message accepted: the real one is ~60 bytes; a few KB leave room for future
# fields while a client cannot make the server parse megabytes of JSON before it is refused.
MAX_START_BYTES = 4096
STATUS_EVERY_S = 2.0
_MAX_CONTROL_MESSAGES = 8  # status/error/pong messages queued for a slow reader


class StartMessage(BaseModel):
    """The first message a client sends (text). Unknown fields are refused, by name."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["start"]
    input: Literal["jpeg", "mpegts", "h264"] = Field(
        description="jpeg: binary messages are 8-byte LE float64 pts + one JPEG image; "
        "mpegts / h264: binary messages are consecutive chunks of one byte stream."
    )
    fps_hint: float = Field(
        10.0, gt=0, le=120, strict=True, description="Frames per second sent (about)."
    )


# What each start field accepts, for refusals (the schema above is the rule).
_START_FIELDS = {
    "type": '"start"',
    "input": '"jpeg", "mpegts" or "h264"',
    "fps_hint": "a number of frames per second, 0 < fps_hint <= 120 (default 10)",
}
_START_EXAMPLE = '{"type": "start", "input": "jpeg", "fps_hint": 10}'


class StartRefused(ValueError):
    """An invalid start message; the message names the field (or limit) and what it accepts."""


def _shown(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    text = json.dumps(value) if isinstance(value, str | int | float | bool) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_start(raw: str) -> StartMessage:
    """The start message in ``raw``, or `StartRefused` naming each bad field and why."""
    size = len(raw.encode("utf-8", "surrogatepass"))
    if size > MAX_START_BYTES:
        raise StartRefused(
            f"start message is {size} bytes, over the {MAX_START_BYTES}-byte limit; "
            f"send {_START_EXAMPLE}"
        )
    try:
        return StartMessage.model_validate_json(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False)[:3]:
            loc = ".".join(str(part) for part in err["loc"])
            if err["type"] == "json_invalid":
                problems.append(f"not valid JSON ({err.get('ctx', {}).get('error', err['msg'])})")
            elif not loc:
                problems.append(f"must be a JSON object, got {_shown(err.get('input'))}")
            elif err["type"] == "extra_forbidden":
                problems.append(f"unknown field {loc!r} (fields: {', '.join(_START_FIELDS)})")
            elif err["type"] == "missing":
                problems.append(f"{loc} is missing; it takes {_START_FIELDS.get(loc, '?')}")
            else:
                accepted = _START_FIELDS.get(loc.split(".")[0], "?")
                problems.append(
                    f"{loc} {_shown(err.get('input'))}: {err['msg'][:1].lower()}{err['msg'][1:]}"
                    f"; {loc.split('.')[0]} takes {accepted}"
                )
        raise StartRefused(
            "bad start message: " + "; ".join(problems) + f". Send e.g. {_START_EXAMPLE}"
        ) from None


@dataclass
class _Stats:
    frames_received: int = 0
    frames_dropped: int = 0  # frames discarded because processing fell behind
    bad_frames: int = 0
    keyframes_sent: int = 0
    keyframes_dropped: int = 0  # annotations discarded because the client read too slowly
    lag_s: float = 0.0
    lags: deque[float] = field(default_factory=lambda: deque(maxlen=256))
    behind_since: float | None = None

    def message(self) -> dict[str, Any]:
        lags = sorted(self.lags)
        p95 = lags[min(len(lags) - 1, int(0.95 * len(lags)))] if lags else 0.0
        return {
            "type": "status",
            "frames_received": self.frames_received,
            "frames_dropped": self.frames_dropped,
            "bad_frames": self.bad_frames,
            "keyframes_sent": self.keyframes_sent,
            "dropped_keyframes": self.keyframes_dropped,
            "lag_s": round(self.lag_s, 3),
            "lag_p95_s": round(p95, 3),
        }


# Longest a frame waits for the stream's in-flight keyframes before it is ingested anyway.
_INGEST_YIELD_S = 0.25


class _Connection:
    """One accepted live connection: buffers, tasks and counters."""

    def __init__(
        self, ws: WebSocket, service: ServiceState, start: StartMessage, bank_id: str, name: str
    ) -> None:
        s = service.settings
        self.ws = ws
        self.service = service
        self.start = start
        self.session = service.engine.live_session(bank_id, video=name, max_output=256)
        # (pts, decoded RGB frame, or a JPEG payload decoded by the pusher)
        self.frames: deque[tuple[float, np.ndarray | bytes]] = deque()
        self.max_frames = s.live_queue_frames
        self.outbox: deque[dict[str, Any]] = deque()
        self.max_outbox = s.live_send_queue
        self.max_lag_s = s.live_max_lag_s
        self.max_pixels = MAX_FRAME_PIXELS
        self.max_message = s.max_ws_message_bytes + PTS_HEADER.size
        self.arrivals: deque[tuple[float, float]] = deque(maxlen=4096)  # (pts, monotonic)
        self.stats = _Stats()
        self.frame_ready = asyncio.Event()
        self.out_ready = asyncio.Event()
        self.input_done = False
        self.last_pts = -float("inf")
        self.max_pts_gap_s = s.max_pts_gap_s  # the engine starts a new segment there too
        self.last_time: float | None = None
        self.rate = float(service.engine.manifest.keyframe_rate)
        self.close_code = WS_NORMAL
        self.close_reason = ""
        self.decoder: Any = None

    # -- helpers ---------------------------------------------------------------------------
    def queue_frame(self, pts: float, image: np.ndarray | bytes) -> None:
        # A refused frame leaves last_pts alone: later valid frames still go through.
        try:
            pts = check_pts(pts)
        except InvalidPts as exc:
            self.stats.bad_frames += 1
            self.post_error("bad_frame", str(exc))
            return
        if pts <= self.last_pts:
            self.stats.bad_frames += 1
            self.post_error("bad_frame", f"pts {pts} is not after the previous {self.last_pts}")
            return
        if self.last_pts >= 0 and pts - self.last_pts > self.max_pts_gap_s:
            self.post_error(
                "pts_gap",
                f"pts {pts:.6g} is {pts - self.last_pts:.6g} s after the previous frame, more "
                f"than the {self.max_pts_gap_s:g} s limit (AVASERVE_MAX_PTS_GAP_S): a new "
                "segment starts here; the keyframes in between are skipped and tracks restart",
            )
        self.last_pts = pts
        if len(self.frames) >= self.max_frames:
            self.frames.popleft()  # the oldest live frame is worth the least
            self.stats.frames_dropped += 1
        self.frames.append((pts, image))
        self.arrivals.append((pts, time.monotonic()))
        self.frame_ready.set()

    def post(self, message: dict[str, Any]) -> None:
        """Queue a message for the sender. Bounded: at most ``max_outbox`` annotations (the
        oldest is dropped and counted) plus a few control messages (the oldest status/error is
        dropped first), so a client that never reads cannot grow server memory."""
        is_annotation = message.get("type") == "annotation"
        kept = sum(1 for m in self.outbox if (m.get("type") == "annotation") == is_annotation)
        limit = self.max_outbox if is_annotation else _MAX_CONTROL_MESSAGES
        if kept >= limit:
            for i, queued in enumerate(self.outbox):
                if (queued.get("type") == "annotation") == is_annotation:
                    del self.outbox[i]
                    break
            if is_annotation:
                self.stats.keyframes_dropped += 1
                if self.service.metrics is not None:
                    self.service.metrics.record_dropped("slow_reader")
        self.outbox.append(message)
        self.out_ready.set()

    def post_error(self, code: str, message: str) -> None:
        self.post({"type": "error", "code": code, "message": message})

    def arrival_of(self, t: float) -> float | None:
        for pts, arrived in self.arrivals:
            if pts >= t - 1e-6:
                return arrived
        return None

    # -- tasks -----------------------------------------------------------------------------
    async def reader(self) -> None:
        kind = self.start.input
        if kind != "jpeg":
            from service.decode import LiveDecoder

            self.decoder = await asyncio.to_thread(
                LiveDecoder, kind, fps_hint=self.start.fps_hint, max_buffered_frames=self.max_frames
            )
        pump = asyncio.create_task(self.pump()) if self.decoder is not None else None
        try:
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    raise WebSocketDisconnect(message.get("code", 1000))
                if message.get("text") is not None:
                    if self._control(message["text"]):
                        break
                    continue
                data: bytes = message.get("bytes") or b""
                if len(data) > self.max_message:  # uvicorn's ws_max_size is the first line
                    self.close_code, self.close_reason = WS_TOO_BIG, "message too big"
                    return
                self.stats.frames_received += kind == "jpeg"
                if kind == "jpeg":
                    await self._jpeg(data)
                else:
                    await asyncio.to_thread(self.decoder.feed, data)
        finally:
            if self.decoder is not None:
                await asyncio.to_thread(self.decoder.end)
                if pump is not None:
                    await pump
            self.input_done = True
            self.frame_ready.set()

    def _control(self, text: str) -> bool:
        """Handle a text message; True when the client ended its input."""
        try:
            body = json.loads(text)
            kind = body.get("type") if isinstance(body, dict) else None
        except ValueError:
            kind = None
        if kind == "end":
            return True
        if kind == "ping":
            self.post({"type": "pong"})
        else:
            self.post_error("bad_message", 'Expected binary frames, or {"type": "end"}')
        return False

    async def _jpeg(self, data: bytes) -> None:
        frame = split_frame_message(data)
        if frame is None:
            self.stats.bad_frames += 1
            self.post_error("bad_frame", "A frame is 8 bytes of LE float64 pts, then a JPEG")
            return
        pts, jpeg = frame
        self.queue_frame(pts, jpeg)  # checks pts; the JPEG is decoded by the pusher

    async def _decoded(self, image: np.ndarray | bytes) -> np.ndarray | None:
        if isinstance(image, np.ndarray):
            return image
        try:
            return await asyncio.to_thread(decode_jpeg, image, self.max_pixels)
        except FrameRefused as exc:
            self.stats.bad_frames += 1
            self.post_error("bad_frame", str(exc))
            return None
        except Exception as exc:  # noqa: BLE001 - any undecodable frame is the client's error
            self.stats.bad_frames += 1
            self.post_error("bad_frame", f"Not a decodable JPEG ({type(exc).__name__})")
            return None

    async def pump(self) -> None:
        """Decoded frames of an MPEG-TS/H.264 stream into the frame buffer."""
        decoder = self.decoder
        while True:
            try:
                frames = await asyncio.to_thread(decoder.frames, 0.2)
            except VideoInputError as exc:
                self.post_error(exc.reason, exc.message)
                return
            for frame in frames:
                self.stats.frames_received += 1
                self.queue_frame(frame.pts_seconds, frame.image)
            if not frames and decoder.finished:
                return

    async def pusher(self) -> None:
        while True:
            while not self.frames:
                if self.input_done:
                    await self.session.end()
                    return
                self.frame_ready.clear()
                await self.frame_ready.wait()
            # Keyframes first (module docstring): let this stream's in-flight keyframes finish
            # before the next frame is decoded and ingested.
            await self.session.keyframes_idle(_INGEST_YIELD_S)
            pts, payload = self.frames.popleft()
            image = await self._decoded(payload)
            if image is not None:
                await self.session.push_frame(image, pts)

    async def emitter(self) -> None:
        async for item in self.session.results():
            t, predictions = self._keyframe(item)
            records = [p.to_json(top_k=TOP_K) for p in predictions]
            arrived = self.arrival_of(t)
            if arrived is not None:
                self.stats.lag_s = time.monotonic() - arrived
                self.stats.lags.append(self.stats.lag_s)
                # The server's whole time for the keyframe: its frame received -> annotation
                # queued (JPEG decode and hand-offs included; bench_ws_lag reads it).
                self.service.engine.stats.observe("live_server", self.stats.lag_s)
                if self.service.metrics is not None:
                    self.service.metrics.observe_live_lag(self.stats.lag_s)
            self.post(
                {
                    "type": "annotation",
                    "time": t,
                    "records": records,
                    "lag_s": round(self.stats.lag_s, 3),
                }
            )

    def _keyframe(self, item: Any) -> tuple[float, list[Any]]:
        """(keyframe time, predictions) of one item of ``LiveSession.results()``.

        Items are prediction lists; when the engine also says the keyframe's time (a ``time``
        attribute) it is used as is. A bare empty list (nobody in view) carries no time, so it
        is taken as the keyframe after the previous one: right unless the engine dropped
        keyframes in between (see the report on service/engine.py).
        """
        predictions = list(getattr(item, "predictions", item))
        t = getattr(item, "time", None)
        if t is None:
            if predictions:
                t = float(predictions[0].time)
            elif self.last_time is not None:
                t = self.last_time + 1.0 / self.rate
            else:
                t = (
                    float(np.ceil(self.arrivals[0][0] * self.rate) / self.rate)
                    if self.arrivals
                    else 0.0
                )
        self.last_time = float(t)
        return float(t), predictions

    async def sender(self) -> None:
        while True:
            while not self.outbox:
                self.out_ready.clear()
                await self.out_ready.wait()
            message = self.outbox.popleft()
            if message.get("type") == "annotation":
                self.stats.keyframes_sent += 1
            await self.ws.send_text(json.dumps(message, separators=(",", ":")))

    def status_message(self) -> dict[str, Any]:
        """The status message: the connection's counters and the stream's keyframe stride."""
        message = self.stats.message()
        status = getattr(self.session, "status", None)
        if callable(status):
            message.update(status())
        return message

    async def monitor(self) -> None:
        """Status every few seconds; close 1013 when the client stops reading.

        A server that is slower than the stream does not close it: the engine annotates every
        k-th keyframe instead (service/stride.py, stated in the status message) and the frame
        buffer is bounded. Only a client whose annotations pile up unread for longer than
        ``live_max_lag_s`` is closed (it reads nothing; reconnecting keeps its context).
        """
        while True:
            await asyncio.sleep(STATUS_EVERY_S)
            self.post(self.status_message())
            now = time.monotonic()
            queued = sum(1 for m in self.outbox if m.get("type") == "annotation")
            behind = queued >= self.max_outbox
            if not behind:
                self.stats.behind_since = None
            elif self.stats.behind_since is None:
                self.stats.behind_since = now
            elif now - self.stats.behind_since > self.max_lag_s:
                self.close_code = WS_TRY_AGAIN_LATER
                self.close_reason = "client stopped reading; reconnect (context is kept)"
                return

    async def run(self) -> None:
        reader = asyncio.create_task(self.reader(), name="ws-reader")
        pusher = asyncio.create_task(self.pusher(), name="ws-pusher")
        emitter = asyncio.create_task(self.emitter(), name="ws-emitter")
        sender = asyncio.create_task(self.sender(), name="ws-sender")
        monitor = asyncio.create_task(self.monitor(), name="ws-monitor")
        tasks = {reader, pusher, emitter, sender, monitor}
        pending: set[asyncio.Task[None]] = set(tasks)
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    error = task.exception()
                    if error is not None:
                        raise error  # a disconnect (from reader or sender) or a real failure
                if monitor in done or self.close_code != WS_NORMAL:
                    return  # too far behind, or a protocol violation: close_code is set
                if emitter in done:
                    # The client sent "end" and every keyframe was emitted: flush, then close.
                    self.post(self.status_message())
                    deadline = time.monotonic() + 5.0
                    while self.outbox and time.monotonic() < deadline:
                        await asyncio.sleep(0.02)
                    return
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.session.close()
            if self.decoder is not None:
                await asyncio.to_thread(self.decoder.close)


@router.websocket("/v1/streams/{stream_id}")
async def live_stream(websocket: WebSocket, stream_id: str) -> None:
    """Live annotation. See docs/api.md for the protocol."""
    service = get_service(websocket)
    settings = service.settings
    # Everything below up to accept() refuses the handshake with an HTTP status and the REST
    # error body (WsRefusal); no byte of the client's video is ever read.
    who = authenticate_websocket(websocket, websocket.app.state.keyring, settings.allowed_origins)
    if not _STREAM_ID_RE.match(stream_id):
        raise WsRefusal(400, "stream id: 1-64 of letters, digits, '.', '_', '-'")
    if service.draining:
        raise WsRefusal(
            503,
            "server shutting down",
            code=WS_TRY_AGAIN_LATER,
            headers={"Retry-After": str(settings.retry_after_s)},
        )
    key_id = who.principal.key_id
    bank_id = f"live-{key_id}-{stream_id}"  # a key can never read or feed another key's bank
    if bank_id in service.open_streams:
        raise WsRefusal(409, "this stream id is already open", code=WS_TRY_AGAIN_LATER)
    try:
        service.streams.acquire(key_id)
    except LimitExceeded as exc:
        raise WsRefusal(
            exc.status_code,
            str(exc.detail),
            code=WS_TRY_AGAIN_LATER,
            headers=dict(exc.headers or {}),
        ) from None
    service.open_streams.add(bank_id)
    try:
        await websocket.accept(subprotocol=who.subprotocol)
        service.sockets.add(websocket)
        await _serve(websocket, service, bank_id, stream_id)
    finally:
        service.sockets.discard(websocket)
        service.open_streams.discard(bank_id)
        service.streams.release(key_id)


async def _serve(ws: WebSocket, service: ServiceState, bank_id: str, stream_id: str) -> None:
    try:
        first = await asyncio.wait_for(ws.receive(), START_TIMEOUT_S)
        if first["type"] == "websocket.disconnect":
            return
        raw = first.get("text")
        if raw is None:
            raise StartRefused(
                f"the first message must be text (JSON), not binary; send {_START_EXAMPLE}"
            )
        start = parse_start(raw)
    except (TimeoutError, StartRefused) as exc:
        if isinstance(exc, TimeoutError):
            message = f"no start message within {START_TIMEOUT_S:g} s; send {_START_EXAMPLE}"
        else:
            message = str(exc)
        with contextlib.suppress(Exception):
            await ws.send_text(
                json.dumps({"type": "error", "code": "bad_start", "message": message})
            )
            await ws.close(WS_UNSUPPORTED_DATA if not isinstance(exc, TimeoutError) else WS_POLICY)
        return
    except WebSocketDisconnect:
        return
    engine = service.engine
    conn = _Connection(ws, service, start, bank_id, stream_id)
    await ws.send_text(
        json.dumps(
            {
                "type": "ready",
                "stream_id": stream_id,
                "keyframe_rate": conn.rate,
                "clip_alignment": "causal",
                "bank_window_s": [int(w) for w in engine.live_window]
                if engine.bank_enabled
                else None,
            }
        )
    )
    try:
        await conn.run()
    except WebSocketDisconnect:
        return
    except Exception:  # noqa: BLE001 - one broken stream must not take the server down
        log.exception("live stream failed")
        conn.close_code, conn.close_reason = WS_INTERNAL, "internal error"
    if ws.application_state == WebSocketState.CONNECTED:
        with contextlib.suppress(Exception):
            if conn.close_code != WS_NORMAL:
                await ws.send_text(
                    json.dumps({"type": "error", "code": "closing", "message": conn.close_reason})
                )
            await ws.close(conn.close_code, conn.close_reason[:120])
