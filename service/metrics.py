"""Prometheus metrics (prefix ``avaserve_``) on a registry owned by one ``Metrics`` object.

Each app gets its own ``CollectorRegistry`` (never the global one), so tests can create apps
repeatedly and two apps in one process do not collide.

Two styles, chosen by where the state lives (STYLE.md: "gauges are updated where that state
lives"):

* **push** - latencies, lag, decode rejections, HTTP requests, readiness: the code that sees the
  event calls ``observe_*`` / ``record_*`` / ``set_ready``.
* **pull** - queue depths, batch sizes, drops, bank counters, jobs by state, active streams:
  the owning objects (``Batcher``, ``FeatureBank``, ``JobRunner``, the stream limiter) already
  keep plain counters; ``bind_*`` registers them and a collector reads them at scrape time, so
  the hot path pays nothing.

Every label value comes from a fixed allowlist (``LABEL_VALUES``; HTTP routes are the app's
route templates). Nothing per stream or per job is ever a label: that would grow the series
count without bound. A value outside the allowlist from outside code (a drop or rejection
reason) is counted as ``other``; a wrong stage or mode name is a programming error (ValueError).

Metric names (the alert rules and the Grafana dashboard use exactly these)::

    avaserve_stage_latency_seconds{stage}          histogram  per pipeline stage, per call
    avaserve_keyframe_latency_seconds{mode}        histogram  keyframe due -> record ready
    avaserve_live_lag_seconds                      histogram  keyframe wall time -> sent
    avaserve_queue_depth{graph}                    gauge      pending items per batcher
    avaserve_queue_capacity{graph}                 gauge      the batcher's max_queue
    avaserve_batch_size{graph}                     histogram  items per executed batch
    avaserve_dropped_keyframes_total{reason}       counter
    avaserve_jobs{state}                           gauge      (with Redis: cluster-wide)
    avaserve_job_oldest_seconds{state}             gauge      queued: longest wait; running:
                                                              longest without progress
    avaserve_job_workers{health}                   gauge      healthy | stuck | dead
    avaserve_job_runner_errors_total{step}         counter    runner errors, by where
    avaserve_job_store_resets_total                counter    job store found emptied
    avaserve_orphan_uploads_removed_total          counter    upload folders no job owned
    avaserve_active_streams                        gauge      open live WebSockets
    avaserve_live_keyframe_stride                  gauge      largest live keyframe stride
    avaserve_live_keyframes_skipped_total          counter    live keyframes skipped by it
    avaserve_bank_operations_total{backend}        counter    bank calls
    avaserve_bank_errors_total{backend}            counter    failed Redis round trips
    avaserve_bank_degraded_total{backend}          counter    calls answered degraded
    avaserve_decode_rejections_total{reason}       counter    VideoInputError reasons
    avaserve_http_requests_total{route,method,status_class}  counter
    avaserve_http_request_duration_seconds{route}  histogram
    avaserve_ready                                 gauge      1 ready, 0 not (readiness probe)
    avaserve_build_info{version}                   gauge      always 1
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Literal, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import Counter as PromCounter
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import VIDEO_INPUT_REASONS
from service.jobs import JOB_STATES, RUNNER_ERROR_STEPS

PREFIX = "avaserve"

Stage = Literal["decode", "detect", "track", "clip", "backbone", "bank", "head"]
Mode = Literal["file", "live"]
Graph = Literal["detector", "backbone", "head"]
Backend = Literal["memory", "redis"]

STAGES: tuple[str, ...] = ("decode", "detect", "track", "clip", "backbone", "bank", "head")
MODES: tuple[str, ...] = ("file", "live")
GRAPHS: tuple[str, ...] = ("detector", "backbone", "head")
BANK_BACKENDS: tuple[str, ...] = ("memory", "redis")
# Batcher reasons (live_behind, queue_full, live_backlog), the WebSocket sender's (slow_reader:
# the client does not read fast enough; stale: older than the lag budget), and "other".
DROP_REASONS: tuple[str, ...] = (
    "live_behind",
    "queue_full",
    "live_backlog",
    "slow_reader",
    "stale",
    "other",
)
DECODE_REASONS: tuple[str, ...] = (*VIDEO_INPUT_REASONS, "other")
STATUS_CLASSES: tuple[str, ...] = ("1xx", "2xx", "3xx", "4xx", "5xx")
WORKER_STATES: tuple[str, ...] = ("healthy", "stuck", "dead")
AGED_JOB_STATES: tuple[str, ...] = ("queued", "running")
HTTP_METHODS: tuple[str, ...] = (
    "GET",
    "POST",
    "PUT",
    "PATCH",
    "DELETE",
    "HEAD",
    "OPTIONS",
    "other",
)
UNMATCHED_ROUTE = "<unmatched>"

LABEL_VALUES: dict[str, tuple[str, ...]] = {
    "stage": STAGES,
    "mode": MODES,
    "graph": GRAPHS,
    "backend": BANK_BACKENDS,
    "reason": tuple(sorted({*DROP_REASONS, *DECODE_REASONS})),
    "state": JOB_STATES,
    "status_class": STATUS_CLASSES,
    "method": HTTP_METHODS,
    "step": RUNNER_ERROR_STEPS,
    "health": WORKER_STATES,
}
"""Allowed values per label name. ``route`` (route templates) and ``version`` are checked
against the app and the package version instead."""

# Buckets. Stages run from sub-millisecond (bank, tracking) to seconds (a backbone batch on two
# cores); keyframe and lag buckets are dense around the ~1 s-per-keyframe budget the alerts
# watch, so histogram_quantile there is accurate.
STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
KEYFRAME_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 5.0, 10.0, 30.0)
LAG_BUCKETS = (0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _BatcherLike(Protocol):
    """What the collector reads from ``service.batching.Batcher``."""

    max_queue: int
    queue_depth: int
    batch_size_counts: Counter[int]
    dropped: Counter[str]


class _BankLike(Protocol):
    def stats(self) -> Any: ...  # service.bank.BankStats


class _RunnerLike(Protocol):
    """What the collector reads from ``service.jobs.JobRunner``."""

    errors: Mapping[str, int]
    oldest_s: Mapping[str, float]
    orphans_removed: int
    store_resets: int

    def worker_states(self) -> Mapping[str, int]: ...


def _check(label: str, value: str) -> str:
    if value not in LABEL_VALUES[label]:
        raise ValueError(f"metrics: {label}={value!r} is not one of {LABEL_VALUES[label]}")
    return value


def _or_other(value: str, allowed: tuple[str, ...]) -> str:
    return value if value in allowed else "other"


def status_class(code: int) -> str:
    return f"{min(max(code // 100, 1), 5)}xx"


_Family = GaugeMetricFamily | CounterMetricFamily


def _labelled(family: _Family, allowed: tuple[str, ...], values: Mapping[str, float]) -> _Family:
    """``family`` with one sample per allowed label value (0 for those ``values`` lacks)."""
    for value in allowed:
        family.add_metric([value], float(values.get(value, 0)))
    return family


class _PullCollector(Collector):
    """Reads the bound objects' counters at scrape time."""

    def __init__(self) -> None:
        self.batchers: dict[str, _BatcherLike] = {}
        self.banks: dict[str, _BankLike] = {}
        self.jobs: Callable[[], Mapping[str, int]] | None = None
        self.streams: Callable[[], int] | None = None
        self.runner: _RunnerLike | None = None
        self.stride: Callable[[], tuple[int, int]] | None = None
        self.extra_drops: Counter[str] = Counter()

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            f"{PREFIX}_queue_depth", "Items waiting in a batcher's queue.", labels=["graph"]
        )
        capacity = GaugeMetricFamily(
            f"{PREFIX}_queue_capacity",
            "A batcher's queue bound (max_queue); depth/capacity is saturation.",
            labels=["graph"],
        )
        batch = HistogramMetricFamily(
            f"{PREFIX}_batch_size", "Items per executed batch.", labels=["graph"]
        )
        drops: Counter[str] = Counter(self.extra_drops)
        for graph, b in sorted(self.batchers.items()):
            depth.add_metric([graph], float(b.queue_depth))
            capacity.add_metric([graph], float(b.max_queue))
            sizes = dict(b.batch_size_counts)
            # Prometheus buckets are cumulative: bucket `le` counts every batch <= le.
            cumulative = [
                (str(float(le)), float(sum(n for s, n in sizes.items() if s <= le)))
                for le in BATCH_BUCKETS
            ]
            total = float(sum(sizes.values()))
            cumulative.append(("+Inf", total))
            batch.add_metric(
                [graph], cumulative, sum_value=float(sum(s * n for s, n in sizes.items()))
            )
            for reason, n in b.dropped.items():
                drops[_or_other(reason, DROP_REASONS)] += n
        yield depth
        yield capacity
        yield batch

        dropped = CounterMetricFamily(
            f"{PREFIX}_dropped_keyframes",
            "Live keyframes dropped before processing or sending, by reason.",
            labels=["reason"],
        )
        for reason in DROP_REASONS:  # all of them, zeros included: rate() needs a baseline
            dropped.add_metric([reason], float(drops[reason]))
        yield dropped

        ops = CounterMetricFamily(
            f"{PREFIX}_bank_operations", "Feature bank calls.", labels=["backend"]
        )
        errors = CounterMetricFamily(
            f"{PREFIX}_bank_errors", "Failed Redis round trips of the bank.", labels=["backend"]
        )
        degraded = CounterMetricFamily(
            f"{PREFIX}_bank_degraded",
            "Bank calls whose window may lack seconds (the shared store was needed for part of "
            "it and unreachable).",
            labels=["backend"],
        )
        for backend, bank in sorted(self.banks.items()):
            st = bank.stats()
            ops.add_metric([backend], float(st.calls))
            errors.add_metric([backend], float(getattr(st, "redis_errors", 0)))
            degraded.add_metric([backend], float(st.degraded))
        yield ops
        yield errors
        yield degraded

        jobs = GaugeMetricFamily(f"{PREFIX}_jobs", "Jobs by state.", labels=["state"])
        counts = dict(self.jobs()) if self.jobs is not None else {}
        for state in JOB_STATES:
            jobs.add_metric([state], float(counts.get(state, 0)))
        yield jobs

        yield GaugeMetricFamily(
            f"{PREFIX}_active_streams",
            "Open live WebSocket streams.",
            value=float(self.streams() if self.streams is not None else 0),
        )
        stride, skipped = self.stride() if self.stride is not None else (1, 0)
        yield GaugeMetricFamily(
            f"{PREFIX}_live_keyframe_stride",
            "Largest keyframe stride of the open live streams: 1 = every keyframe annotated, "
            "k = every k-th (the model is slower than real time; service/stride.py).",
            value=float(stride),
        )
        yield CounterMetricFamily(
            f"{PREFIX}_live_keyframes_skipped",
            "Live keyframes not annotated because of the keyframe stride.",
            value=float(skipped),
        )
        yield from self._runner_families()

    def _runner_families(self) -> Iterator[Metric]:
        runner = self.runner
        yield _labelled(
            GaugeMetricFamily(
                f"{PREFIX}_job_oldest_seconds",
                "queued: seconds the longest-waiting queued job has waited; running: seconds "
                "since the stalest running job last made progress (0 when none; with Redis: all "
                "replicas).",
                labels=["state"],
            ),
            AGED_JOB_STATES,
            runner.oldest_s if runner is not None else {},
        )
        yield _labelled(
            GaugeMetricFamily(
                f"{PREFIX}_job_workers",
                "This process's job workers: healthy, stuck (not coming round their loop) or dead.",
                labels=["health"],
            ),
            WORKER_STATES,
            runner.worker_states() if runner is not None else {},
        )
        yield _labelled(
            CounterMetricFamily(
                f"{PREFIX}_job_runner_errors",
                "Job runner errors by step (each also logged; the job ends failed with a reason "
                "or the step is retried).",
                labels=["step"],
            ),
            RUNNER_ERROR_STEPS,
            runner.errors if runner is not None else {},
        )
        yield CounterMetricFamily(
            f"{PREFIX}_job_store_resets",
            "Times the job store was found emptied (a Redis restarted without persistence).",
            value=float(runner.store_resets if runner is not None else 0),
        )
        yield CounterMetricFamily(
            f"{PREFIX}_orphan_uploads_removed",
            "Upload folders removed because no job record owned them.",
            value=float(runner.orphans_removed if runner is not None else 0),
        )


class Metrics:
    """All avaserve metrics, on ``self.registry``. One per app (``app.state.metrics``)."""

    def __init__(self, *, version: str = "0") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.stage_latency = Histogram(
            f"{PREFIX}_stage_latency_seconds",
            "Seconds per call of one pipeline stage (a batch for detect/backbone/head).",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.keyframe_latency = Histogram(
            f"{PREFIX}_keyframe_latency_seconds",
            "End-to-end seconds per keyframe, from due (frames available) to record ready.",
            ["mode"],
            buckets=KEYFRAME_BUCKETS,
            registry=r,
        )
        self.live_lag = Histogram(
            f"{PREFIX}_live_lag_seconds",
            "Live streams: seconds from a keyframe's arrival (wall time) to its annotation sent.",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.decode_rejections = PromCounter(
            f"{PREFIX}_decode_rejections",
            "Videos refused by the decoder, by VideoInputError reason.",
            ["reason"],
            registry=r,
        )
        self.http_requests = PromCounter(
            f"{PREFIX}_http_requests",
            "HTTP requests by route template, method and status class.",
            ["route", "method", "status_class"],
            registry=r,
        )
        self.http_duration = Histogram(
            f"{PREFIX}_http_request_duration_seconds",
            "HTTP request seconds by route template (uploads include the body transfer).",
            ["route"],
            buckets=HTTP_BUCKETS,
            registry=r,
        )
        self.ready = Gauge(
            f"{PREFIX}_ready", "1 when /readyz would answer 200, else 0.", registry=r
        )
        self.build_info = Gauge(
            f"{PREFIX}_build_info", "Always 1; the version label says which.", ["version"],
            registry=r,
        )  # fmt: skip
        self.build_info.labels(version).set(1)
        # Pre-create the common children so rate() has a zero to start from (an absent series
        # makes ratio alerts blind until the first error).
        for reason in VIDEO_INPUT_REASONS:
            self.decode_rejections.labels(reason)
        for mode in MODES:
            self.keyframe_latency.labels(mode)
        self._pull = _PullCollector()
        r.register(self._pull)

    # ---------------------------------------------------------------- push
    def observe_stage(self, stage: str, seconds: float) -> None:
        """One call of a pipeline stage (engine stage names; see ``STAGES``)."""
        self.stage_latency.labels(_check("stage", stage)).observe(seconds)

    @contextmanager
    def stage_timer(self, stage: str) -> Iterator[None]:
        _check("stage", stage)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.observe_stage(stage, time.perf_counter() - t0)

    def observe_keyframe(self, mode: str, seconds: float) -> None:
        self.keyframe_latency.labels(_check("mode", mode)).observe(seconds)

    def observe_live_lag(self, seconds: float) -> None:
        self.live_lag.observe(max(seconds, 0.0))

    def record_decode_rejection(self, reason: str) -> None:
        self.decode_rejections.labels(_or_other(reason, DECODE_REASONS)).inc()

    def record_dropped(self, reason: str, n: int = 1) -> None:
        """Drops outside a batcher (e.g. the WebSocket sender's ``slow_reader``)."""
        self._pull.extra_drops[_or_other(reason, DROP_REASONS)] += n

    def record_http(self, route: str, method: str, status: int, seconds: float) -> None:
        m = method.upper() if method.upper() in HTTP_METHODS else "other"
        self.http_requests.labels(route, m, status_class(status)).inc()
        self.http_duration.labels(route).observe(seconds)

    def set_ready(self, ready: bool) -> None:
        self.ready.set(1.0 if ready else 0.0)

    # ---------------------------------------------------------------- pull
    def bind_batchers(self, batchers: Mapping[str, _BatcherLike]) -> None:
        """Register the engine's batchers by graph name (detector, backbone, head)."""
        for graph in batchers:
            _check("graph", graph)
        self._pull.batchers = dict(batchers)

    def bind_bank(self, bank: _BankLike, backend: str) -> None:
        """Register the feature bank (``backend``: memory | redis)."""
        self._pull.banks = {_check("backend", backend): bank}

    def bind_jobs(self, counts: Callable[[], Mapping[str, int]]) -> None:
        """Jobs per state, e.g. ``lambda: runner.state_counts`` (must not block)."""
        self._pull.jobs = counts

    def bind_runner(self, runner: _RunnerLike) -> None:
        """The job runner: its worker states, error counters and job ages."""
        self._pull.runner = runner

    def bind_streams(self, active: Callable[[], int]) -> None:
        """Open live streams, e.g. ``lambda: stream_limiter.active()``."""
        self._pull.streams = active

    def bind_stride(self, stride: Callable[[], tuple[int, int]]) -> None:
        """(largest live keyframe stride, keyframes skipped so far), must not block."""
        self._pull.stride = stride

    # ---------------------------------------------------------------- exposition
    def exposition(self) -> tuple[bytes, str]:
        """(body, content type) for ``GET /metrics``."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def metric_names(self) -> set[str]:
        """Every sample name this registry can expose (``_total``, ``_bucket``... included)."""
        names: set[str] = set()
        for family in self.registry.collect():
            suffixes = {
                "counter": ("_total",),
                "histogram": ("_bucket", "_sum", "_count"),
                "gauge": ("",),
            }.get(family.type, ("",))
            names.update(family.name + s for s in suffixes)
        return names


class HttpMetricsMiddleware:
    """Pure ASGI middleware: counts HTTP requests by route *template* (``/v1/jobs/{job_id}``,
    never the concrete path) and status class. WebSocket and lifespan traffic pass through.

    Add it outermost-but-one (inside CORS is fine): ``app.add_middleware(HttpMetricsMiddleware,
    metrics=metrics)``. Requests no route matched are counted as ``<unmatched>``.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500  # what the client gets if the app raises before starting a response

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or UNMATCHED_ROUTE
            self.metrics.record_http(
                template, scope.get("method", "other"), status, time.perf_counter() - t0
            )
