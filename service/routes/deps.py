"""What the routes share: the per-process `ServiceState` and its dependency alias.

`create_app` builds one `ServiceState` in its lifespan and stores it as ``app.state.service``;
handlers receive it through ``ServiceDep`` (STYLE.md: dependencies as ``Annotated`` aliases), so
no route reads a global.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, HTTPException, WebSocket, status
from starlette.requests import HTTPConnection

from service.admission import ConcurrencyLimiter
from service.settings import Settings

log = logging.getLogger(__name__)

WS_GOING_AWAY = 1001


@dataclass
class ServiceState:
    """Everything one server process holds between requests.

    engine: the streaming engine (bundle, runtimes, batchers, bank), from service.engine.
    store / runner: the job store (in-process or Redis) and the bounded worker pool.
    streams: live-stream slots per key and in total.
    uploads: slots for uploads being received, per key and in total (None: uncapped).
    """

    settings: Settings
    engine: Any
    store: Any
    runner: Any
    streams: ConcurrencyLimiter
    redis: Any = None  # a redis.asyncio client when AVASERVE_REDIS_URL is set (readiness ping)
    metrics: Any = None  # service.metrics.Metrics
    uploads: ConcurrencyLimiter | None = None
    warmed: bool = False
    draining: bool = False
    started_at: float = field(default_factory=time.monotonic)
    # Open live connections, closed with 1001 when the process drains.
    sockets: set[WebSocket] = field(default_factory=set)
    # Stream ids (owner-scoped) with a connection open now: one connection per stream.
    open_streams: set[str] = field(default_factory=set)
    _drained: asyncio.Event = field(default_factory=asyncio.Event)

    async def readiness_checks(self) -> dict[str, bool]:
        checks = {
            "bundle_loaded": self.engine is not None,
            "warmed": self.warmed,
            "not_draining": not self.draining,
        }
        if self.runner is not None:
            # A dead or stuck job worker leaves queued jobs waiting: send no new work here.
            checks["job_workers"] = bool(self.runner.workers_ok)
        if self.redis is not None:
            try:
                checks["redis"] = bool(await asyncio.wait_for(self.redis.ping(), timeout=0.5))
            except Exception:  # noqa: BLE001 - any failure means "not reachable"
                checks["redis"] = False
        return checks

    def begin_drain(self) -> None:
        """Readiness 503 from now on; new jobs and streams are refused with 503."""
        if not self.draining:
            log.info("draining: readiness is now 503; finishing in-flight work")
        self.draining = True
        if self.metrics is not None:
            self.metrics.set_ready(False)

    async def drain(self) -> None:
        """Finish or re-queue running jobs within the grace period; close live streams (1001)."""
        self.begin_drain()
        if self._drained.is_set():
            return
        for ws in list(self.sockets):
            with contextlib.suppress(Exception):
                await ws.close(WS_GOING_AWAY, "server shutting down; reconnect to another replica")
        if self.runner is not None:
            try:
                await self.runner.drain(self.settings.grace_period_s)
            except Exception:  # noqa: BLE001 - shutdown must go on
                log.exception("job runner drain failed")
        self._drained.set()

    def refuse_if_draining(self) -> None:
        if self.draining:
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                "This server is shutting down; retry (another replica will take it)",
                headers={"Retry-After": str(self.settings.retry_after_s)},
            )


def get_service(conn: HTTPConnection) -> ServiceState:
    service = getattr(conn.app.state, "service", None)
    if not isinstance(service, ServiceState):
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "The service is starting")
    return service


ServiceDep = Annotated[ServiceState, Depends(get_service)]
