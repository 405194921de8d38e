"""``avaserve serve``, ``avaserve submit`` and ``avaserve watch``.

* ``serve`` runs the API and web page under uvicorn. SIGTERM drains gracefully (see
  `DrainingServer`): readiness turns 503 at once, running jobs get ``grace_period_s`` to finish
  (then are re-queued), live streams are closed with 1001, and the process exits 0.
* ``submit VIDEO`` uploads a file as a job; ``--wait`` polls it and ``--out`` saves the results.
* ``watch VIDEO`` streams a local file as JPEG frames at real-time pace over the WebSocket
  protocol (docs/api.md) and prints each annotation as it arrives.

Nothing heavy is imported at module level (``avaserve --help`` stays instant).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer

if TYPE_CHECKING:
    import uvicorn

    from service.settings import Settings

DEFAULT_SERVER = "http://127.0.0.1:8000"
API_KEY_ENV = "AVASERVE_API_KEY"  # the client's one key (the server reads AVASERVE_API_KEYS)


def register(app: typer.Typer) -> None:
    app.command("serve", help="Run the HTTP/WebSocket API and the web page.")(serve_command)
    app.command("submit", help="Upload a video as a job to a running server.")(submit_command)
    app.command("watch", help="Stream a video file live to a server; print annotations.")(
        watch_command
    )


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


# ---------------------------------------------------------------------------- serve


def uvicorn_config(
    app: Any, settings: Settings, host: str, log_level: str | None = None
) -> uvicorn.Config:
    """The server's uvicorn settings (`avaserve serve` and bench/bench_ws_lag.py use these)."""
    import uvicorn

    from service.http_timeouts import header_timeout_protocol

    return uvicorn.Config(
        app,
        host=host,
        port=settings.port,
        # uvicorn's own protocol with a deadline on request headers (slow-header clients).
        http=header_timeout_protocol(settings.header_timeout_s),
        log_level=log_level or settings.log_level,
        # One JPEG frame or TS chunk plus its 8-byte header; bigger messages close with 1009.
        ws_max_size=settings.max_ws_message_bytes + 64,
        # No permessage-deflate: clients send JPEG / H.264, which does not compress, and
        # inflating every frame costs the event loop (the inflater showed in a py-spy --gil
        # profile of a live stream; live lag did not measurably change without it).
        ws_per_message_deflate=False,
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        timeout_graceful_shutdown=5,
        proxy_headers=False,
        server_header=False,
    )


def make_server(config: uvicorn.Config) -> uvicorn.Server:
    """A uvicorn server whose first SIGTERM/SIGINT drains before it stops (second: at once)."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        # uvicorn's own shutdown closes the listening socket first, so a load balancer probing
        # /readyz would see "connection refused" rather than 503, and jobs would be cut off.
        # Here the first signal only starts the drain; the socket stays open meanwhile.
        _drain_task: asyncio.Task[None] | None = None
        _draining = False

        def handle_exit(self, sig: int, frame: Any) -> None:
            app = self.config.loaded_app
            state = _find_state(app)
            if self._draining or state is None or self.should_exit:
                super().handle_exit(sig, frame)  # second signal, or nothing to drain
                return
            self._draining = True
            state.begin_drain()  # readiness 503 from this instant
            # We are in a signal handler on the loop's thread: schedule, and wake the selector.
            loop = asyncio.get_event_loop()
            loop.call_soon_threadsafe(self._start_drain, loop, state)

        def _start_drain(self, loop: asyncio.AbstractEventLoop, state: Any) -> None:
            if self._drain_task is None:
                self._drain_task = loop.create_task(self._drain(state))

        async def _drain(self, state: Any) -> None:
            try:
                await state.drain()
            finally:
                self.should_exit = True

    return DrainingServer(config)


def _find_state(app: Any) -> Any:
    """The ServiceState behind uvicorn's middleware wrappers (None before start-up)."""
    seen = 0
    while app is not None and seen < 10:
        state = getattr(getattr(app, "state", None), "service", None)
        if state is not None:
            return state
        app = getattr(app, "app", None)
        seen += 1
    return None


def serve_command(
    host: str | None = typer.Option(None, "--host", help="Interface (env AVASERVE_HOST)."),
    port: int | None = typer.Option(None, "--port", help="Port (env AVASERVE_PORT)."),
    bundle: Path | None = typer.Option(
        None, "--bundle", help="Model bundle directory (env AVASERVE_BUNDLE)."
    ),
    log_level: str | None = typer.Option(None, "--log-level", help="debug|info|warning|error"),
) -> None:
    from pydantic import ValidationError

    from service.app import create_app
    from service.settings import Settings

    overrides: dict[str, Any] = {
        k: v
        for k, v in {"host": host, "port": port, "bundle": bundle, "log_level": log_level}.items()
        if v is not None
    }
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        _fail("invalid setting:\n" + "\n".join(f"  {e['loc']}: {e['msg']}" for e in exc.errors()))
    bind, warning = settings.bind_host_effective()
    if warning:
        typer.secho(warning, fg=typer.colors.YELLOW, err=True)
    if not settings.bundle.is_dir():
        _fail(
            f"no model bundle at {settings.bundle}; pass --bundle DIR or set AVASERVE_BUNDLE "
            "(make one with: avaserve export --random-init --preset slowfast_tiny --out DIR)"
        )
    # uvicorn configures only its own loggers; the service's go to stderr in the same style.
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s"
    )
    app = create_app(settings)
    shown = "127.0.0.1" if bind in ("0.0.0.0", "::") else bind
    shown = f"[{shown}]" if ":" in shown else shown
    typer.echo(f"avaserve: web page at http://{shown}:{settings.port}/  (API docs at /docs)")
    server = make_server(uvicorn_config(app, settings, bind))
    server.run()
    sys.exit(0)


# ---------------------------------------------------------------------------- clients


def _client_key(api_key: str | None) -> dict[str, str]:
    key = api_key or os.environ.get(API_KEY_ENV)
    return {"Authorization": f"Bearer {key}"} if key else {}


def _error_text(response: Any) -> str:
    try:
        body = response.json()
        return str(body.get("message") or body.get("detail") or body)
    except ValueError:
        return response.text[:300]


def submit_command(
    video: Path = typer.Argument(..., exists=True, dir_okay=False, help="Video file to upload."),
    server: str = typer.Option(DEFAULT_SERVER, "--server", help="Server base URL."),
    api_key: str | None = typer.Option(
        None, "--api-key", help=f"API key (default: env {API_KEY_ENV}).", show_default=False
    ),
    wait: bool = typer.Option(False, "--wait", help="Poll until the job ends."),
    out: Path | None = typer.Option(
        None, "--out", help="With --wait: save results here (.json, or .csv for AVA CSV)."
    ),
    render: bool = typer.Option(False, "--render", help="Also render an annotated MP4."),
) -> None:
    import httpx

    headers = _client_key(api_key) | {"Content-Type": "application/octet-stream"}
    base = server.rstrip("/")
    try:
        _submit(base, headers, video, wait=wait, out=out, render=render)
    except httpx.TransportError as exc:
        _fail(f"cannot reach {base} ({type(exc).__name__}: {exc}); is `avaserve serve` running?")


def _submit(
    base: str,
    headers: dict[str, str],
    video: Path,
    *,
    wait: bool,
    out: Path | None,
    render: bool,
) -> None:
    import httpx

    with httpx.Client(base_url=base, headers=headers, timeout=httpx.Timeout(60.0)) as client:
        with video.open("rb") as fh:
            # A file object is streamed in chunks by httpx: the client never holds it whole.
            response = client.post(
                "/v1/jobs", params={"render": render, "name": video.name[:200]}, content=fh
            )
        if response.status_code != 202:
            _fail(f"upload refused ({response.status_code}): {_error_text(response)}")
        job = response.json()
        typer.echo(f"job {job['id']} {job['state']}  ({base}/v1/jobs/{job['id']})")
        if not wait:
            return
        last = ""
        while True:
            job = client.get(f"/v1/jobs/{job['id']}").json()
            line = f"{job['state']} {100 * job.get('progress', 0):.0f}%"
            if line != last:
                typer.echo(line, err=True)
                last = line
            if job["state"] in ("done", "failed", "cancelled"):
                break
            time.sleep(1.0)
        if job["state"] != "done":
            _fail(f"job {job['state']}: {job.get('error')}")
        fmt = "csv" if out is not None and out.suffix.lower() == ".csv" else "json"
        results = client.get(f"/v1/jobs/{job['id']}/results", params={"format": fmt})
        if out is None:
            typer.echo(results.text)
        else:
            out.write_bytes(results.content)
            typer.echo(f"results -> {out}")


def watch_command(
    video: Path = typer.Argument(..., exists=True, dir_okay=False, help="Video file to stream."),
    server: str = typer.Option(DEFAULT_SERVER, "--server", help="Server base URL."),
    api_key: str | None = typer.Option(
        None, "--api-key", help=f"API key (default: env {API_KEY_ENV}).", show_default=False
    ),
    stream_id: str = typer.Option(
        "watch", "--stream-id", help="Reconnect with it to keep the bank."
    ),
    fps: float = typer.Option(10.0, "--fps", min=1.0, max=60.0, help="Frames sent per second."),
    speed: float = typer.Option(1.0, "--speed", min=0.1, help="1.0 = real-time pace."),
    short_side: int = typer.Option(360, "--short-side", help="Frames are resized to this."),
) -> None:
    import websockets

    try:
        records = asyncio.run(
            stream_video(
                video,
                server=server,
                headers=_client_key(api_key),
                stream_id=stream_id,
                fps=fps,
                speed=speed,
                short_side=short_side,
                on_message=lambda m: typer.echo(json.dumps(m, separators=(",", ":"))),
            )
        )
    except websockets.InvalidStatus as exc:  # refused before accept: status + REST error body
        r = exc.response
        try:
            message = json.loads(bytes(r.body or b"")).get("message")
        except (ValueError, AttributeError):
            message = None
        _fail(f"stream refused ({r.status_code}): {message or r.reason_phrase}")
    except OSError as exc:
        _fail(f"cannot reach {server} ({exc}); is `avaserve serve` running?")
    n = sum(1 for m in records if m.get("type") == "annotation")
    typer.echo(f"{n} annotation messages", err=True)


def encode_frame(image: Any, pts: float, quality: int = 85) -> bytes:
    """One binary live message: 8-byte little-endian float64 pts, then the JPEG bytes."""
    import io

    from PIL import Image

    from service.decode.live import frame_message

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return frame_message(pts, buf.getvalue())


async def stream_video(
    video: Path,
    *,
    server: str,
    headers: dict[str, str],
    stream_id: str,
    fps: float,
    speed: float = 1.0,
    short_side: int = 360,
    on_message: Any = None,
) -> list[dict[str, Any]]:
    """Send ``video`` as JPEG frames at ``speed`` x real time; return every server message.

    Each message gets ``received_at`` (monotonic seconds) and ``sent_at`` of the frame whose pts
    equals the annotation's keyframe time (or the first frame after it), so callers can measure
    lag. Frames are sampled at ``fps`` from the decoded video.
    """
    import websockets
    from websockets.typing import Subprotocol

    from service.decode import decode_frames

    url = server.rstrip("/").replace("http://", "ws://").replace("https://", "wss://")
    url = f"{url}/v1/streams/{stream_id}"
    messages: list[dict[str, Any]] = []
    sent_at: list[tuple[float, float]] = []  # (pts, monotonic send time)

    async with websockets.connect(
        url,
        additional_headers=headers,
        subprotocols=[Subprotocol("avaserve.v1")],
        max_size=None,
    ) as ws:
        await ws.send(json.dumps({"type": "start", "input": "jpeg", "fps_hint": fps}))

        async def receive() -> None:
            async for raw in ws:
                msg = json.loads(raw)
                msg["received_at"] = time.monotonic()
                if msg.get("type") == "annotation":
                    t = float(msg["time"])
                    after = [s for p, s in sent_at if p >= t - 1e-6]
                    msg["sent_at"] = after[0] if after else None
                messages.append(msg)
                if on_message is not None:
                    on_message(
                        {k: v for k, v in msg.items() if k not in ("received_at", "sent_at")}
                    )

        receiver = asyncio.create_task(receive())
        start = time.monotonic()
        next_pts = 0.0
        with decode_frames(video, short_side=short_side) as frames:
            for frame in frames:
                if frame.pts_seconds + 1e-6 < next_pts:
                    continue
                next_pts = frame.pts_seconds + 1.0 / fps
                delay = start + frame.pts_seconds / speed - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                payload = encode_frame(frame.image, frame.pts_seconds)
                sent_at.append((frame.pts_seconds, time.monotonic()))
                await ws.send(payload)
        await ws.send(json.dumps({"type": "end"}))
        try:
            await asyncio.wait_for(receiver, timeout=120.0)
        except TimeoutError:
            receiver.cancel()
    return messages
