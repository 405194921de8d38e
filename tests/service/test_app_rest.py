"""REST jobs through the real app (in-process ASGI, real engine on a tiny bundle).

Covers: upload -> job -> results identical to annotating the same file directly; auth (401),
key isolation (404 for another key's job), hostile uploads (415, no outbound connection),
413 on a declared oversize body, 404/409 states, DELETE.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import app_support as support
import hostile
import httpx
import pytest
import pytest_asyncio

from service.app import TOP_K, create_app
from service.settings import Settings

KEY_A, KEY_B = support.KEY_A, support.KEY_B
A = {"Authorization": f"Bearer {KEY_A}"}
B = {"Authorization": f"Bearer {KEY_B}"}

pytestmark = pytest.mark.asyncio


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory, assets: Path) -> Path:
    return support.tiny_bundle(tmp_path_factory.getbasetemp(), assets)


@pytest.fixture(scope="session")
def video(assets: Path) -> Path:
    return assets / "video" / "basketball_2people.mp4"


@pytest_asyncio.fixture
async def client(bundle: Path, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        bundle=bundle,
        api_keys=f"{KEY_A},{KEY_B}",
        upload_dir=tmp_path / "uploads",
        max_upload_bytes=8 * 1024**2,
        max_jobs_per_key=2,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            c.app = app  # type: ignore[attr-defined]
            yield c


async def _wait(client: httpx.AsyncClient, job_id: str, headers: dict[str, str]) -> dict[str, Any]:
    for _ in range(600):
        job = (await client.get(f"/v1/jobs/{job_id}", headers=headers)).json()
        if job["state"] in ("done", "failed", "cancelled"):
            return job
        await asyncio.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish: {job}")


async def test_upload_results_identical_to_annotate(
    client: httpx.AsyncClient, video: Path, bundle: Path, tmp_path: Path
) -> None:
    response = await client.post(
        "/v1/jobs", params={"name": video.name}, content=video.read_bytes(), headers=A
    )
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["state"] == "queued"
    # Results before the job is done: 409 with a message, never a partial file.
    early = await client.get(f"/v1/jobs/{job['id']}/results", headers=A)
    assert early.status_code in (200, 409)
    done = await _wait(client, job["id"], A)
    assert done["state"] == "done", done
    assert done["progress"] == 1.0 and done["results"] == ["csv", "json"]

    records = (await client.get(f"/v1/jobs/{job['id']}/results?format=json", headers=A)).json()
    assert records, "the detector finds the two players"
    assert {r["video"] for r in records} == {video.stem}

    # The same file through the engine directly, and through `avaserve annotate` itself (a new
    # process on its defaults): the same records, to the last digit.
    engine = client.app.state.service.engine  # type: ignore[attr-defined]
    direct = [p.to_json(top_k=TOP_K) async for p in engine.annotate_file(video)]
    assert records == json.loads(json.dumps(direct))
    out = tmp_path / "cli.jsonl"
    cli = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "avaserve.cli", "annotate", str(video), "--bundle", str(bundle),
        "--out", str(out), "--quiet",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    cli_output, _ = await cli.communicate()
    assert cli.returncode == 0, cli_output.decode()
    assert records == [json.loads(line) for line in out.read_text().splitlines()]

    csv_text = (await client.get(f"/v1/jobs/{job['id']}/results?format=csv", headers=A)).text
    rows = [line.split(",") for line in csv_text.splitlines()]
    assert len(rows) == len(records) * TOP_K
    assert all(r[0] == video.stem and len(r) == 8 for r in rows)

    # Another key: the job does not exist for it (404, same as a random id).
    for path in ("", "/results", "/video"):
        assert (await client.get(f"/v1/jobs/{job['id']}{path}", headers=B)).status_code == 404
    assert (await client.delete(f"/v1/jobs/{job['id']}", headers=B)).status_code == 404
    assert (await client.get("/v1/jobs", headers=B)).json() == {"jobs": []}
    # No video was asked for.
    assert (await client.get(f"/v1/jobs/{job['id']}/video", headers=A)).status_code == 404
    # The owner deletes it; then it is gone.
    assert (await client.delete(f"/v1/jobs/{job['id']}", headers=A)).status_code == 204
    assert (await client.get(f"/v1/jobs/{job['id']}", headers=A)).status_code == 404


async def test_render_video(client: httpx.AsyncClient, video: Path) -> None:
    response = await client.post(
        "/v1/jobs", params={"render": "true"}, content=video.read_bytes(), headers=A
    )
    job = response.json()
    assert job["render"] is True
    done = await _wait(client, job["id"], A)
    assert done["state"] == "done" and "video" in done["results"], done
    mp4 = await client.get(f"/v1/jobs/{job['id']}/video", headers=A)
    assert mp4.status_code == 200 and mp4.headers["content-type"] == "video/mp4"
    assert mp4.content[4:8] == b"ftyp"


_PROTECTED = [
    ("POST", "/v1/jobs"),
    ("GET", "/v1/jobs"),
    ("GET", "/v1/jobs/j_aaaaaaaaaaaaaaaaaaaaaaaa"),
    ("GET", "/v1/jobs/j_aaaaaaaaaaaaaaaaaaaaaaaa/results"),
    ("GET", "/v1/jobs/j_aaaaaaaaaaaaaaaaaaaaaaaa/video"),
    ("DELETE", "/v1/jobs/j_aaaaaaaaaaaaaaaaaaaaaaaa"),
]
_BAD_AUTH = [{}, {"Authorization": "Bearer wrong-key-0123456789abcdef"}, {"Authorization": KEY_A}]


async def test_no_valid_key_is_401(client: httpx.AsyncClient) -> None:
    # One app for the whole table: starting the engine is the slow part.
    for method, path in _PROTECTED:
        for headers in _BAD_AUTH:
            response = await client.request(method, path, headers=headers, content=b"x" * 10)
            assert response.status_code == 401, (method, path, headers.keys())
            assert response.headers["www-authenticate"] == "Bearer"
            assert response.json()["error"] == "unauthorized"


@pytest.mark.parametrize("param", ["api_key", "key", "auth", "whatever"])
async def test_key_in_query_string_is_refused(client: httpx.AsyncClient, param: str) -> None:
    """?key= and ?auth= were accepted before (the refusal list was fixed); any parameter whose
    value is a configured key is refused too."""
    response = await client.get("/v1/jobs", params={param: KEY_A}, headers=A)
    assert response.status_code == 400
    assert f"query parameter '{param}'" in response.json()["message"]
    assert KEY_A not in response.text


async def test_hostile_upload_is_415_without_outbound_requests(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    for kind in ("hls", "ffconcat", "sdp", "text", "random"):
        with hostile.LoopbackListener() as listener:
            path = tmp_path / f"{kind}.mp4"
            if kind == "hls":
                hostile.hls_playlist(path, listener.url)
            elif kind == "ffconcat":
                target = tmp_path / "secret.mp4"
                target.write_bytes(b"\x00" * 64)
                hostile.ffconcat(path, target)
            elif kind == "sdp":
                hostile.sdp(path, listener.port)
            elif kind == "text":
                path.write_text("hello, not a video\n")
            else:
                hostile.random_bytes(path)
            response = await client.post("/v1/jobs", content=path.read_bytes(), headers=A)
            await asyncio.sleep(0.3)  # time for any (wrongly) started fetch to arrive
        assert response.status_code == 415, (kind, response.text)
        body = response.json()
        assert body["error"] == "unsupported_format" and "MP4" in body["message"]
        assert listener.connections == 0, kind
    assert (await client.get("/v1/jobs", headers=A)).json() == {"jobs": []}


async def test_damaged_video_is_422(client: httpx.AsyncClient, tmp_path: Path) -> None:
    path = hostile.truncated_mp4(tmp_path / "cut.mp4", keep=0.02)
    response = await client.post("/v1/jobs", content=path.read_bytes(), headers=A)
    assert response.status_code == 422, response.text
    assert response.json()["error"] in ("corrupt", "empty")


async def test_declared_oversize_body_is_413_before_reading(client: httpx.AsyncClient) -> None:
    # Content-Length over the 8 MiB limit: refused from the header; the body is never read.
    async def body() -> AsyncIterator[bytes]:
        raise AssertionError("the body must not be read")
        yield b""  # pragma: no cover

    response = await client.post(
        "/v1/jobs",
        content=body(),
        headers={**A, "Content-Length": str(9 * 1024**2)},
    )
    assert response.status_code == 413
    assert response.json()["error"] == "too_large"


async def test_streamed_oversize_body_is_413(client: httpx.AsyncClient, tmp_path: Path) -> None:
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        chunk = b"\x00" * 65536
        for _ in range(4096):  # 256 MiB on offer; the limit is 8 MiB
            sent += len(chunk)
            yield chunk

    response = await client.post("/v1/jobs", content=body(), headers=A)
    assert response.status_code == 413
    assert sent < 16 * 1024**2, "the server stopped reading soon after the limit"
    assert not any((tmp_path / "uploads").rglob("*.part")), "the partial upload was deleted"


async def test_unknown_and_malformed_ids_are_404(client: httpx.AsyncClient) -> None:
    for job_id in ("j_aaaaaaaaaaaaaaaaaaaaaaaa", "nope", "..%2f..%2fetc", "j_" + "x" * 300):
        response = await client.get(f"/v1/jobs/{job_id}", headers=A)
        assert response.status_code == 404, job_id


async def test_per_key_job_limit_is_429(client: httpx.AsyncClient, video: Path) -> None:
    data = video.read_bytes()
    codes = [(await client.post("/v1/jobs", content=data, headers=A)).status_code for _ in range(4)]
    assert codes[:2] == [202, 202]
    assert 429 in codes[2:]
    # The other key is unaffected.
    assert (await client.post("/v1/jobs", content=data, headers=B)).status_code == 202


async def test_health_and_ready(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    # Start-up objects were frozen out of the cyclic GC once ready (service/app.py).
    assert gc.get_freeze_count() > 0
    client.app.state.service.begin_drain()  # type: ignore[attr-defined]
    assert (await client.get("/readyz")).status_code == 503
    refused = await client.post("/v1/jobs", content=b"x", headers=A)
    assert refused.status_code == 503 and "retry-after" in refused.headers


async def test_page_and_metrics(client: httpx.AsyncClient) -> None:
    page = await client.get("/")
    assert page.status_code == 200 and "<canvas" in page.text
    assert (await client.get("/static/app.js")).status_code == 200
    metrics = await client.get("/metrics")
    assert "avaserve_ready 1.0" in metrics.text


async def test_readiness_and_metrics_fail_while_a_job_worker_is_dead(
    client: httpx.AsyncClient,
) -> None:
    """Issue 16: a dead job worker used to leave /readyz at 200 and no metric moved."""
    runner = client.app.state.service.runner  # type: ignore[attr-defined]
    assert (await client.get("/readyz")).json()["checks"]["job_workers"] is True
    runner._workers[0].cancel()  # the worker task ends (housekeeping replaces it within 10 s)
    for _ in range(3):
        await asyncio.sleep(0)
    ready = await client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["job_workers"] is False
    metrics = (await client.get("/metrics")).text
    assert 'avaserve_job_workers{health="dead"} 1.0' in metrics
    assert "avaserve_ready 0.0" in metrics
