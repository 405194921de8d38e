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

The parts live with their topics: error handlers (`service.http_errors`), request limits
(`service.http_limits`), the job's ``process`` (`service.jobs.annotate`), warm-up
(`service.warmup`), the routes (`service.routes`); this module composes them.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles

from avaserve import __version__
from core.defaults import TOP_K
from service.admission import ConcurrencyLimiter
from service.auth import KeyRing, install_log_redaction
from service.http_errors import install_error_handlers
from service.http_limits import LimitsMiddleware
from service.jobs import InMemoryJobStore, JobRunner, RedisJobStore
from service.jobs.annotate import job_processor
from service.metrics import STAGES, HttpMetricsMiddleware, Metrics
from service.routes import health, jobs, pages, streams
from service.routes.deps import ServiceState
from service.routes.pages import STATIC_DIR
from service.settings import Settings
from service.warmup import warm_up

log = logging.getLogger(__name__)


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
        job_processor(engine, top_k=TOP_K),
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
    # per-request garbage and holds the GIL for less time.
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
    install_error_handlers(app)
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
