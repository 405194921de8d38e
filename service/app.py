"""The FastAPI application: ``create_app(settings)``.

Built once by ``avaserve serve`` (or a test) from a validated `Settings`; nothing below reads
configuration from anywhere else. The lifespan owns every long-lived object::

    start:  feature bank (in-process | Redis) + job store (in-process | Redis)
            Engine(bundle): runtimes, three batchers            (thread: loading takes seconds)
            warm-up: one run of each graph at its smallest shape -> readiness 200
            JobRunner(workers) starts; recovers jobs of dead workers (Redis)
    stop:   drain (idempotent: SIGTERM already started it): readiness 503, live streams closed
            with 1001, running jobs finish within grace_period_s or are re-queued
            engine, bank and store closed

Errors leave as JSON ``{"error": <code>, "message": <what to do>}`` (plus ``detail`` for
validation errors); no stack trace reaches a client.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import redis.exceptions as redis_errors
from fastapi import FastAPI, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.websockets import WebSocketState

from avaserve import __version__
from core.defaults import TOP_K
from service.admission import ConcurrencyLimiter
from service.auth import KeyRing, WsRefusal, install_log_redaction
from service.errors import VideoInputError, error_code
from service.jobs import InMemoryJobStore, Job, JobRunner, RedisJobStore
from service.metrics import STAGES, HttpMetricsMiddleware, Metrics
from service.records import AvaCsvWriter, JsonlWriter
from service.routes import health, jobs, pages, streams
from service.routes.deps import ServiceState
from service.routes.pages import STATIC_DIR
from service.settings import Settings

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Requests other than the upload carry no body worth more than this (JSON options at most).
MAX_SMALL_BODY = 64 * 1024

DESCRIPTION = """\
Per-second person action detection (the 80 AVA atomic actions) for uploaded videos and live
streams.

* **Jobs** (`/v1/jobs`): upload a video file as the raw request body, poll the job, fetch the
  results as JSON records or AVA CSV, optionally an annotated MP4.
* **Live streams** (`/v1/streams/{stream_id}`, WebSocket): send JPEG frames or an MPEG-TS/H.264
  byte stream; receive one `annotation` message per keyframe. The protocol is in
  `docs/api.md`.
* **Auth**: `Authorization: Bearer <key>` (WebSocket: the same header, or the subprotocol
  `bearer.<key>` next to `avaserve.v1`). A key sees only its own jobs.
* Errors are JSON: `{"error": "<code>", "message": "<what to do>"}`.
"""

TAGS = [
    {"name": "jobs", "description": "Uploaded videos, processed in the background."},
    {"name": "streams", "description": "Live annotation over a WebSocket (see docs/api.md)."},
    {"name": "health", "description": "Liveness and readiness probes."},
]


# ---------------------------------------------------------------------------- jobs


def job_processor(
    engine: Any, *, top_k: int = TOP_K
) -> Callable[[Job, Callable[[float], None]], Awaitable[Mapping[str, str]]]:
    """The JobRunner's ``process``: annotate the upload into JSON Lines + AVA CSV (+ MP4).

    The records are exactly what ``avaserve annotate --out --csv`` writes for the same file and
    bundle: same engine call, same writers, same top-k.
    """

    async def process(job: Job, progress: Callable[[float], None]) -> Mapping[str, str]:
        work = Path(job.work_dir)
        meta = _read_meta(work)
        duration = float(meta.get("duration_s") or 0.0)
        video_id = str(meta.get("video_id") or "upload")
        jsonl, csv_path = work / "results.jsonl", work / "results.csv"
        jw, cw = JsonlWriter(jsonl, top_k=top_k), AvaCsvWriter(csv_path, top_k=top_k)
        count = 0

        def on_progress(pts: float) -> None:
            if duration > 0:
                progress(min(0.99, pts / duration))

        try:
            async for prediction in engine.annotate_file(
                job.input_path, video_id=video_id, progress=on_progress
            ):
                jw.write([prediction])
                cw.write([prediction])
                count += 1
        finally:
            jw.close()
            cw.close()
        results = {"json": str(jsonl), "csv": str(csv_path)}
        if job.options.render:
            rate = float(engine.manifest.keyframe_rate)
            results["video"] = await _render(job, jsonl, work / "annotated.mp4", rate)
        (work / "summary.json").write_text(json.dumps({"predictions": count}))
        progress(1.0)
        return results

    return process


async def _render(job: Job, jsonl: Path, out: Path, keyframe_rate: float) -> str:
    """The annotated MP4 (service.render, the same drawing as `avaserve annotate --render`),
    in a worker thread; the records are read back from the job's own results file."""
    from service.records import read_jsonl
    from service.render import render_video

    predictions = read_jsonl(jsonl)
    await asyncio.to_thread(
        render_video, job.input_path, predictions, out, keyframe_rate=keyframe_rate
    )
    return str(out)


def _read_meta(work: Path) -> dict[str, Any]:
    try:
        data = json.loads((work / "meta.json").read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


# ---------------------------------------------------------------------------- warm-up


def warm_up(engine: Any) -> float:
    """Run each graph once at its smallest profile shape, so the first user request does not
    pay ONNX Runtime's lazy initialisation (allocations, kernel selection). Returns seconds."""
    t0 = time.perf_counter()
    manifest = engine.manifest
    canvas = np.full((240, 320, 3), 114, np.uint8)
    engine.detector.detect([canvas])
    for role, runtime in (("backbone", engine.backbone), ("head", engine.head)):
        graph = manifest.graphs[role]
        inputs: dict[str, np.ndarray] = {}
        for spec in graph.inputs:
            rng = graph.shape_ranges.get(spec.name)
            shape = (
                tuple(rng.min)
                if rng is not None
                else tuple(d if isinstance(d, int) else 1 for d in spec.shape)
            )
            inputs[spec.name] = np.zeros(shape, dtype=np.dtype(spec.dtype))
        if "boxes" in inputs:  # one valid box (batch 0, a 16-pixel square)
            inputs["boxes"][:, 3:] = 16.0
        if "mask" in inputs:
            inputs["mask"][:] = 1
        runtime.run(inputs)
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------- middleware


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


# ---------------------------------------------------------------------------- errors


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(VideoInputError)
    async def video_input(_: Request, exc: VideoInputError) -> JSONResponse:
        return JSONResponse({"error": exc.reason, "message": exc.message}, exc.http_status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        body = {"error": error_code(exc.status_code), "message": detail}
        return JSONResponse(body, exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(WsRefusal)
    async def ws_refused(websocket: WebSocket, exc: WsRefusal) -> None:
        # Before accept: an HTTP answer (401/403/409/429/503 and the REST error body) where
        # the ASGI server supports it; else the close Starlette would send (HTTP 403).
        extensions = websocket.scope.get("extensions") or {}
        if (
            websocket.client_state == WebSocketState.CONNECTING
            and "websocket.http.response" in extensions
        ):
            body = {"error": error_code(exc.status_code), "message": exc.reason}
            await websocket.send_denial_response(
                JSONResponse(body, exc.status_code, headers=exc.headers)
            )
        else:
            await websocket.close(code=exc.code, reason=exc.reason)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", ""))} for e in exc.errors()
        ]
        where = ", ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors[:3])
        return JSONResponse(
            {"error": "invalid_request", "message": f"Invalid request ({where})", "detail": errors},
            422,
        )

    @app.exception_handler(redis_errors.ConnectionError)
    @app.exception_handler(redis_errors.TimeoutError)
    async def store_down(request: Request, exc: Exception) -> JSONResponse:
        # The job store (Redis) is down or stalled: a quick 503 the client can retry, never a
        # 500 after a long wait (the API's Redis client has short timeouts).
        retry = request.app.state.settings.retry_after_s
        log.warning("job store unavailable for %s %s: %r", request.method, request.url.path, exc)
        return JSONResponse(
            {
                "error": "unavailable",
                "message": f"The job store (Redis) is not reachable right now; retry in {retry} s.",
            },
            503,
            headers={"Retry-After": str(retry)},
        )

    @app.exception_handler(Exception)
    async def internal(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return JSONResponse(
            {"error": "internal", "message": "Internal server error; it has been logged."}, 500
        )


# ---------------------------------------------------------------------------- the app


def _engine_factory(settings: Settings, bank: Any) -> Any:
    from service.engine import Engine, EngineSettings
    from service.limits import DecodeLimits
    from service.runtime import RuntimeSettings

    engine_settings = EngineSettings(
        runtime=RuntimeSettings(
            providers=tuple(settings.ort_providers),
            intra_op_threads=settings.ort_intra_op_threads,
        ),
        decode_limits=DecodeLimits(max_file_bytes=max(settings.max_upload_bytes, 1)),
        top_k=TOP_K,
        max_pts_gap_s=settings.max_pts_gap_s,
    )
    return Engine(settings.bundle, settings=engine_settings, bank=bank)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    # Before anything can log a request: every record from any logger is redacted (undone at
    # shutdown, so apps created one after another in tests do not stack filters).
    uninstall_redaction = install_log_redaction(app.state.keyring)
    redis_url = settings.redis_url_value
    redis_client: Any = None
    if redis_url:
        import redis.asyncio as aioredis

        from service.bank_redis import RedisBank

        bank: Any = RedisBank(redis_url)  # keeps core.defaults.BANK_RETENTION_S, as the engine
        # Two job-store clients: the workers' (BLMOVE needs a long read timeout; the runner
        # retries) and the API's, whose short timeouts turn an outage into a quick 503.
        store: Any = RedisJobStore(redis_url)
        timeout = settings.redis_api_timeout_s
        api_store: Any = RedisJobStore(
            redis_url, socket_timeout_s=timeout, connect_timeout_s=timeout
        )
        redis_client = aioredis.Redis.from_url(redis_url, socket_timeout=0.5)
        log.info("state in Redis at %s", settings.redis_url_redacted)
    else:
        from service.bank import InProcessBank

        bank = InProcessBank()
        store = api_store = InMemoryJobStore()
    settings.upload_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    t0 = time.perf_counter()
    engine = await asyncio.to_thread(_engine_factory, settings, bank)
    log.info("%s", engine.thread_policy.describe())
    runner = JobRunner(
        store,
        job_processor(engine),
        workers=settings.workers,
        max_attempts=settings.job_max_attempts,
        retention_s=settings.job_retention_s,
        files_root=settings.upload_dir,
        heartbeat_ttl_s=settings.job_heartbeat_ttl_s,
        control_store=api_store,
        finish_retry_s=settings.job_finish_retry_s,
        stuck_after_s=settings.job_stuck_after_s,
        orphan_grace_s=settings.orphan_upload_grace_s,
    )
    service = ServiceState(
        settings=settings,
        engine=engine,
        store=api_store,
        runner=runner,
        streams=ConcurrencyLimiter(
            "live streams",
            per_key=settings.max_streams_per_key,
            global_limit=settings.max_streams_global,
            retry_after_s=settings.retry_after_s,
        ),
        redis=redis_client,
        metrics=app.state.metrics,
        uploads=ConcurrencyLimiter(
            "uploads",
            per_key=settings.max_uploads_per_key,
            global_limit=settings.max_uploads_global,
            retry_after_s=settings.retry_after_s,
        ),
    )
    app.state.service = service
    _bind_metrics(app.state.metrics, service, "redis" if redis_url else "memory")
    warm_s = await asyncio.to_thread(warm_up, engine)
    await runner.start()
    await api_store.check_reset()  # learn the store's identity: a later loss is reported
    # Everything loaded so far (modules, the bundle's Python objects) lives as long as the
    # server: freeze it out of the cyclic collector, so that a full collection scans only
    # per-request garbage and holds the GIL for less time (its effect on live lag alone was
    # not separable from run-to-run noise on the 2-core machine).
    gc.collect()
    gc.freeze()
    service.warmed = True
    app.state.metrics.set_ready(True)
    log.info(
        "ready: bundle %s loaded in %.1f s (warm-up %.2f s), %d job worker(s)",
        settings.bundle,
        time.perf_counter() - t0,
        warm_s,
        settings.workers,
    )
    try:
        yield
    finally:
        await service.drain()
        await engine.close()
        await store.close()
        if api_store is not store:
            await api_store.close()
        if redis_client is not None:
            await redis_client.aclose()
        uninstall_redaction()


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service as an ASGI app. ``settings`` defaults to ``Settings()`` (the environment)."""
    settings = settings or Settings()
    keyring = KeyRing.from_settings(settings)
    logging.getLogger("service").setLevel(settings.log_level.upper())
    app = FastAPI(
        title="avaserve",
        version=__version__,
        summary="Who is doing what, every second: AVA action detection for video.",
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.keyring = keyring
    _install_error_handlers(app)
    app.include_router(pages.router)
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(streams.router)
    metrics = Metrics(version=__version__)
    app.state.metrics = metrics
    _mount_metrics(app, metrics)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_middleware(LimitsMiddleware, timeout_s=settings.request_timeout_s)
    app.add_middleware(HttpMetricsMiddleware, metrics=metrics)
    return app


def _mount_metrics(app: FastAPI, metrics: Metrics) -> None:
    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        service = getattr(app.state, "service", None)
        if service is not None:  # the gauge follows what /readyz would answer right now
            metrics.set_ready(all((await service.readiness_checks()).values()))
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)


def _bind_metrics(metrics: Metrics, service: ServiceState, backend: str) -> None:
    engine = service.engine
    metrics.bind_batchers(
        {"detector": engine.det_batcher, "backbone": engine.bb_batcher, "head": engine.head_batcher}
    )
    metrics.bind_bank(engine.bank, backend)
    metrics.bind_jobs(lambda: service.runner.state_counts)
    metrics.bind_runner(service.runner)
    metrics.bind_streams(lambda: service.streams.active())
    metrics.bind_stride(
        lambda: (engine.live_stride(), engine.stats.counters["keyframes_skipped_stride"])
    )
    # The engine keeps plain per-stage samples (EngineStats); forward each one to Prometheus
    # as it is taken, so the engine needs no metrics dependency.
    stats = engine.stats
    observe = stats.observe

    def observe_and_export(stage: str, seconds: float) -> None:
        observe(stage, seconds)
        if stage in STAGES:
            metrics.observe_stage(stage, seconds)
        elif stage.startswith("keyframe_"):  # keyframe_file / keyframe_live
            metrics.observe_keyframe(stage.removeprefix("keyframe_"), seconds)

    stats.observe = observe_and_export
