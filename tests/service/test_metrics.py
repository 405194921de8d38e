"""Metrics: own registry per app, pull collectors over real Batcher/bank objects, bounded labels."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.bank import LIVE_WINDOW, InProcessBank
from service.batching import Batcher
from service.metrics import (
    LABEL_VALUES,
    UNMATCHED_ROUTE,
    HttpMetricsMiddleware,
    Metrics,
    status_class,
)


def scrape(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, ctype = m.exposition()
    assert ctype.startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_each_instance_has_its_own_registry() -> None:
    a, b = Metrics(), Metrics()
    a.observe_keyframe("live", 0.3)
    assert scrape(a)[("avaserve_keyframe_latency_seconds_count", (("mode", "live"),))] == 1
    assert scrape(b)[("avaserve_keyframe_latency_seconds_count", (("mode", "live"),))] == 0


@pytest.mark.asyncio
async def test_pull_collectors_read_batchers_bank_jobs_streams() -> None:
    m = Metrics()
    det = Batcher(fn=lambda items: items, name="detector", max_batch_size=4, max_queue=8)
    await asyncio.gather(*(det.submit(i, kind="upload", stream_id="s") for i in range(6)))
    det.dropped["live_behind"] += 2
    det.dropped["some_new_reason"] += 1  # counted as "other"
    bank = InProcessBank()
    feats = np.ones((2, 4), np.float32)
    for t in range(3):
        await bank.write_and_read("s", t, np.array([1, 2]), feats, LIVE_WINDOW, 5)
    m.bind_batchers({"detector": det})
    m.bind_bank(bank, "memory")
    m.bind_jobs(lambda: {"queued": 3, "running": 1})
    m.bind_streams(lambda: 2)
    m.bind_stride(lambda: (3, 14))
    m.record_dropped("slow_reader")
    got = scrape(m)
    assert got[("avaserve_queue_capacity", (("graph", "detector"),))] == 8
    assert got[("avaserve_queue_depth", (("graph", "detector"),))] == 0
    n_batches = sum(det.batch_size_counts.values())
    assert got[("avaserve_batch_size_count", (("graph", "detector"),))] == n_batches
    assert got[("avaserve_batch_size_sum", (("graph", "detector"),))] == 6
    assert got[("avaserve_batch_size_bucket", (("graph", "detector"), ("le", "+Inf")))] == n_batches
    assert got[("avaserve_dropped_keyframes_total", (("reason", "live_behind"),))] == 2
    assert got[("avaserve_dropped_keyframes_total", (("reason", "other"),))] == 1
    assert got[("avaserve_dropped_keyframes_total", (("reason", "slow_reader"),))] == 1
    assert got[("avaserve_bank_operations_total", (("backend", "memory"),))] == 3
    assert got[("avaserve_bank_degraded_total", (("backend", "memory"),))] == 0
    assert got[("avaserve_jobs", (("state", "queued"),))] == 3
    assert got[("avaserve_jobs", (("state", "failed"),))] == 0
    assert got[("avaserve_active_streams", ())] == 2
    assert got[("avaserve_live_keyframe_stride", ())] == 3
    assert got[("avaserve_live_keyframes_skipped_total", ())] == 14
    await det.close()


def test_push_helpers_and_label_checks() -> None:
    m = Metrics(version="1.2.3")
    m.observe_stage("backbone", 0.2)
    with m.stage_timer("head"):
        pass
    m.observe_live_lag(-1.0)  # clock skew: clamped, never a negative bucket
    m.record_decode_rejection("unsupported_format")
    m.record_decode_rejection("made_up")
    m.set_ready(True)
    got = scrape(m)
    assert got[("avaserve_stage_latency_seconds_count", (("stage", "backbone"),))] == 1
    assert got[("avaserve_stage_latency_seconds_count", (("stage", "head"),))] == 1
    assert got[("avaserve_live_lag_seconds_bucket", (("le", "0.1"),))] == 1
    assert got[("avaserve_decode_rejections_total", (("reason", "unsupported_format"),))] == 1
    assert got[("avaserve_decode_rejections_total", (("reason", "other"),))] == 1
    assert got[("avaserve_ready", ())] == 1
    assert got[("avaserve_build_info", (("version", "1.2.3"),))] == 1
    with pytest.raises(ValueError, match="stage"):
        m.observe_stage("stream-42", 0.1)
    with pytest.raises(ValueError, match="mode"):
        m.observe_keyframe("batch", 0.1)
    with pytest.raises(ValueError, match="graph"):
        m.bind_batchers({"cam-7": Batcher(fn=lambda x: x)})


@pytest.mark.parametrize(("code", "cls"), [(101, "1xx"), (200, "2xx"), (404, "4xx"), (503, "5xx")])
def test_status_class(code: int, cls: str) -> None:
    assert status_class(code) == cls


def make_app(m: Metrics) -> FastAPI:
    app = FastAPI()
    app.add_middleware(HttpMetricsMiddleware, metrics=m)

    @app.get("/v1/jobs/{job_id}")
    async def get_job(job_id: str) -> dict[str, str]:
        return {"id": job_id}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("x")

    return app


def test_http_middleware_uses_route_templates_and_every_label_is_bounded() -> None:
    m = Metrics()
    app = make_app(m)
    with TestClient(app, raise_server_exceptions=False) as c:
        for i in range(5):
            assert c.get(f"/v1/jobs/job-{i}").status_code == 200
        assert c.get("/no/such/path/123").status_code == 404
        assert c.get("/boom").status_code == 500
        c.request("BREW", "/v1/jobs/x")
    got = scrape(m)
    key = ("route", "/v1/jobs/{job_id}")
    assert got[("avaserve_http_requests_total", (("method", "GET"), key, ("status_class", "2xx")))]
    assert got[
        (
            "avaserve_http_requests_total",
            (("method", "GET"), ("route", UNMATCHED_ROUTE), ("status_class", "4xx")),
        )
    ]
    assert got[
        (
            "avaserve_http_requests_total",
            (("method", "GET"), ("route", "/boom"), ("status_class", "5xx")),
        )
    ]

    # Every label value of every series is from a fixed set: nothing per job or stream.
    routes = {getattr(r, "path", "") for r in app.routes} | {UNMATCHED_ROUTE}
    for (name, labels), _ in got.items():
        assert name.startswith("avaserve_")
        for label, value in labels:
            if label == "le":
                continue
            if label == "route":
                assert value in routes, value
            elif label == "version":
                continue
            else:
                assert value in LABEL_VALUES[label], (name, label, value)
    assert not any("job-" in v for (_, labels) in got for _, v in labels)


def test_metric_names_cover_every_family() -> None:
    names = Metrics().metric_names()
    for expected in (
        "avaserve_stage_latency_seconds_bucket",
        "avaserve_keyframe_latency_seconds_bucket",
        "avaserve_live_lag_seconds_bucket",
        "avaserve_queue_depth",
        "avaserve_queue_capacity",
        "avaserve_batch_size_bucket",
        "avaserve_dropped_keyframes_total",
        "avaserve_jobs",
        "avaserve_active_streams",
        "avaserve_live_keyframe_stride",
        "avaserve_live_keyframes_skipped_total",
        "avaserve_bank_operations_total",
        "avaserve_bank_errors_total",
        "avaserve_bank_degraded_total",
        "avaserve_decode_rejections_total",
        "avaserve_http_requests_total",
        "avaserve_http_request_duration_seconds_bucket",
        "avaserve_ready",
    ):
        assert expected in names


def test_job_runner_families() -> None:
    """The runner's worker health, error counters and job ages (issue 16 item 2)."""
    from collections import Counter
    from types import SimpleNamespace

    m = Metrics()
    runner = SimpleNamespace(
        errors=Counter({"finish": 3, "claim": 1}),
        oldest_s={"queued": 12.5, "running": 0.0},
        orphans_removed=2,
        store_resets=1,
        worker_states=lambda: {"healthy": 1, "stuck": 0, "dead": 1},
    )
    m.bind_runner(runner)  # type: ignore[arg-type]
    got = scrape(m)
    assert got[("avaserve_job_runner_errors_total", (("step", "finish"),))] == 3
    assert got[("avaserve_job_runner_errors_total", (("step", "worker"),))] == 0
    assert got[("avaserve_job_workers", (("health", "dead"),))] == 1
    assert got[("avaserve_job_oldest_seconds", (("state", "queued"),))] == 12.5
    assert got[("avaserve_job_store_resets_total", ())] == 1
    assert got[("avaserve_orphan_uploads_removed_total", ())] == 2
