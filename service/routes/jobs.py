"""``/v1/jobs``: upload a video, poll it, fetch its results, delete it.

Upload path, outermost check first (each refusal cleans up what it wrote)::

    Content-Length > max_upload_bytes            -> 413 before a byte is read
    body streamed to <upload_dir>/<job id>/upload.part in chunks, bytes counted
      count > max_upload_bytes                   -> 413 at once (never buffered in memory)
    first bytes are not a container we accept    -> 415  (HLS/ffconcat/SDP never reach FFmpeg)
    hardened probe in the isolated decoder        -> 415 / 422 with the decoder's message
    admission (per-key / global unfinished jobs)  -> 429 / 503 + Retry-After
    202 {id, state: queued} + Location: /v1/jobs/<id>

A job belongs to the key that uploaded it. Any other key gets 404 for it, exactly as for an id
that never existed, so ids cannot be probed for existence.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, Field
from starlette.requests import ClientDisconnect

from service.admission import LimitExceeded, admit_job
from service.auth import CurrentKey
from service.decode import SNIFF_BYTES, probe, sniff_format
from service.errors import VideoInputError
from service.jobs import Job, JobMeta, JobOptions, JobState, is_job_id, write_meta
from service.limits import DecodeLimits
from service.routes.deps import ServiceDep

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

_NAME_RE = re.compile(r"[^A-Za-z0-9._\-]+")


# ---------------------------------------------------------------------------- schemas


class ErrorBody(BaseModel):
    """Every error response: a stable code and a message that says what to do."""

    error: str = Field(examples=["unsupported_format"])
    message: str = Field(
        examples=["Not a video container we accept. Upload MP4/MOV, Matroska/WebM, MPEG-TS or AVI"]
    )
    detail: list[dict[str, Any]] | None = Field(
        None, description="invalid_request only: each invalid parameter (loc, msg)."
    )


class JobView(BaseModel):
    """A job as its owner sees it (no server paths)."""

    id: str = Field(examples=["j_Q2x9mH3kTzW8pL1vN5bR7cYd"])
    state: JobState = Field(examples=["running"])
    progress: float = Field(ge=0.0, le=1.0, examples=[0.42])
    error: str | None = Field(None, examples=[None])
    created_at: float = Field(description="Unix time.", examples=[1767225600.0])
    updated_at: float = Field(description="Unix time.", examples=[1767225612.5])
    render: bool = Field(description="An annotated MP4 was asked for.", examples=[False])
    results: list[str] = Field(
        description="Result kinds available now (json, csv, video).", examples=[["json", "csv"]]
    )
    links: dict[str, str] = Field(
        examples=[
            {
                "self": "/v1/jobs/j_Q2x9mH3kTzW8pL1vN5bR7cYd",
                "results": "/v1/jobs/j_Q2x9mH3kTzW8pL1vN5bR7cYd/results?format=json",
            }
        ]
    )

    @classmethod
    def of(cls, job: Job) -> JobView:
        base = f"/v1/jobs/{job.id}"
        links = {"self": base}
        if job.state == "done":
            links["results"] = f"{base}/results?format=json"
            links["csv"] = f"{base}/results?format=csv"
            if "video" in job.results:
                links["video"] = f"{base}/video"
        return cls(
            id=job.id,
            state=job.state,
            progress=1.0 if job.state == "done" else job.progress,
            error=job.error,
            created_at=job.created_at,
            updated_at=job.updated_at,
            render=job.options.render,
            results=sorted(job.results) if job.state == "done" else [],
            links=links,
        )


class JobList(BaseModel):
    jobs: list[JobView]


class Record(BaseModel):
    """One person at one keyframe (service/records.py; identical to `avaserve annotate`)."""

    video: str = Field(examples=["street"])
    time: float = Field(description="Keyframe time, seconds.", examples=[3.0])
    track_id: int = Field(examples=[7])
    box: list[float] = Field(
        description="x1, y1, x2, y2 in frame pixels.", examples=[[412.0, 96.5, 520.25, 388.0]]
    )
    box_norm: list[float] = Field(
        description="The box in [0, 1].", examples=[[0.5365, 0.1787, 0.6774, 0.7185]]
    )
    score: float = Field(description="Detector score.", examples=[0.93])
    context: Literal["ok", "degraded", "none"] = Field(examples=["ok"])
    actions: list[dict[str, Any]] = Field(
        description="Top actions, descending.",
        examples=[[{"id": 12, "name": "stand", "score": 0.81}]],
    )
    scores: dict[str, float] = Field(
        description="Probability of every class the model predicts, by AVA id.",
        examples=[{"12": 0.81, "14": 0.12}],
    )


_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Missing or invalid API key"},
    404: {"model": ErrorBody, "description": "No such job for this key"},
    422: {"model": ErrorBody, "description": "Invalid parameters, or a video the decoder refuses"},
    503: {
        "model": ErrorBody,
        "description": "The job store (Redis) is unreachable; retry after Retry-After seconds",
    },
}
JobId = Annotated[
    str,
    PathParam(
        description="A job id from POST /v1/jobs (another key's id answers 404).",
        examples=["j_Q2x9mH3kTzW8pL1vN5bR7cYd"],
    ),
]


def _job_id(job_id: str) -> str:
    # Ids are server-made with a fixed shape; anything else cannot exist (no store round trip).
    if not is_job_id(job_id):
        raise _not_found()
    return job_id


def _not_found() -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, "No such job")


async def _missing(service: Any) -> HTTPException:
    """404 for a job the store does not have; when the store lost its data since this server
    started (Redis restarted without persistence), say so: the id may well have been real.
    Said for one retention period (after it, every lost job would have expired anyway)."""
    await service.store.check_reset()
    lost_at = service.store.reset_at
    if lost_at is not None and time.time() - lost_at < service.settings.job_retention_s:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(lost_at))
        return HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"No such job. The job store lost its data at {when} (Redis restarted without "
            "persistence), so jobs submitted before then are gone; submit the video again.",
        )
    return _not_found()


async def _owned(service: Any, job_id: str, key_id: str) -> Job:
    job = await service.store.get(_job_id(job_id), owner=key_id)
    if job is None:
        raise await _missing(service)
    return job


def _conflict(job: Job) -> HTTPException:
    if job.state in ("failed", "cancelled"):
        return HTTPException(
            status.HTTP_409_CONFLICT, f"The job {job.state}: {job.error or 'no results'}"
        )
    return HTTPException(
        status.HTTP_409_CONFLICT,
        f"The job is {job.state} ({job.progress:.0%}); poll GET /v1/jobs/{job.id} until done",
    )


def _too_large(limit: int) -> HTTPException:
    return HTTPException(
        413,
        f"The upload is larger than {limit} bytes (the limit); cut or re-encode the video",
        # Close the connection after answering: otherwise the server keeps reading (and
        # discarding) the rest of the body to reuse the connection, costing bandwidth.
        headers={"Connection": "close"},
    )


# ---------------------------------------------------------------------------- routes

_UPLOAD_BODY = {
    "required": True,
    "description": "The video file itself as the raw body (not multipart). MP4/MOV, "
    "Matroska/WebM, MPEG-TS or AVI.",
    "content": {
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "video/mp4": {"schema": {"type": "string", "format": "binary"}},
    },
}


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobView,
    summary="Upload a video; annotate it in the background",
    openapi_extra={"requestBody": _UPLOAD_BODY},
    responses={
        **_ERRORS,
        202: {
            "description": "Accepted; poll the Location",
            "headers": {"Location": {"schema": {"type": "string"}}},
        },
        408: {"model": ErrorBody, "description": "No upload byte for the idle timeout"},
        413: {"model": ErrorBody, "description": "Upload larger than the limit"},
        415: {"model": ErrorBody, "description": "Not an accepted video container or codec"},
        422: {
            "model": ErrorBody,
            "description": "Accepted kind of file, but damaged or over a cap",
        },
        429: {
            "model": ErrorBody,
            "description": "This key has too many unfinished jobs or uploads in progress",
        },
        503: {
            "model": ErrorBody,
            "description": "Service full, shutting down, or its job store (Redis) unreachable",
        },
    },
)
async def create_job(
    request: Request,
    key: CurrentKey,
    service: ServiceDep,
    render: Annotated[bool, Query(description="Also render an annotated MP4.")] = False,
    name: Annotated[
        str | None,
        Query(
            max_length=200,
            description="Original file name; its stem becomes the records' `video` field "
            "(as `avaserve annotate` uses the file's stem).",
            examples=["street.mp4"],
        ),
    ] = None,
) -> JSONResponse:
    settings = service.settings
    service.refuse_if_draining()
    limit = settings.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    uploads = service.uploads
    if uploads is not None:
        try:
            uploads.acquire(key.key_id)  # 429 / 503 with Retry-After, naming the limit
        except LimitExceeded as exc:
            # The body is not read: close rather than drain it to reuse the connection.
            raise LimitExceeded(
                resource=exc.resource,
                scope=exc.scope,
                limit=exc.limit,
                retry_after_s=exc.retry_after_s,
                close=True,
            ) from None
    try:
        return await _receive_job(request, key.key_id, service, render, name)
    finally:
        if uploads is not None:
            uploads.release(key.key_id)


async def _receive_job(
    request: Request, owner: str, service: Any, render: bool, name: str | None
) -> JSONResponse:
    """The upload into its own folder, probed and admitted as a job (the folder is removed on
    any failure)."""
    settings = service.settings
    limit = settings.max_upload_bytes
    job = Job.new(owner=owner, upload_dir=settings.upload_dir, options=JobOptions(render=render))
    work = Path(job.work_dir)
    work.mkdir(mode=0o700, parents=True)
    try:
        await _receive_body(
            request,
            work / "upload.part",
            limit,
            idle_timeout_s=settings.upload_idle_timeout_s,
            min_progress_bytes=settings.upload_min_progress_bytes,
        )
        os.replace(work / "upload.part", job.input_path)
        with open(job.input_path, "rb") as fh:
            head = fh.read(SNIFF_BYTES)
        if sniff_format(head) is None:
            raise VideoInputError(
                "unsupported_format",
                "Not a video container we accept. Upload MP4/MOV, Matroska/WebM, MPEG-TS or "
                "AVI (playlists such as .m3u8, ffconcat lists and SDP files are refused).",
            )
        limits = DecodeLimits(max_file_bytes=limit)
        info = await asyncio.to_thread(probe, job.input_path, limits)
        video_id = _video_id(name)
        meta = JobMeta(video_id=video_id, duration_s=info.duration_s, width=info.width,
                       height=info.height, fps=info.fps)  # fmt: skip
        write_meta(work, meta)
        await admit_job(
            service.store,
            job,
            max_per_key=settings.max_jobs_per_key,
            max_global=settings.max_jobs_global,
            retry_after_s=settings.retry_after_s,
        )
    except BaseException as exc:
        shutil.rmtree(work, ignore_errors=True)
        if isinstance(exc, VideoInputError) and service.metrics is not None:
            service.metrics.record_decode_rejection(exc.reason)
        raise
    return JSONResponse(
        JobView.of(job).model_dump(),
        status_code=status.HTTP_202_ACCEPTED,
        headers={"Location": f"/v1/jobs/{job.id}"},
    )


def _idle(timeout_s: float, min_bytes: int) -> HTTPException:
    return HTTPException(
        status.HTTP_408_REQUEST_TIMEOUT,
        f"The upload delivered less than {min_bytes} bytes in {timeout_s:g} s (the idle "
        "limit, AVASERVE_UPLOAD_IDLE_TIMEOUT_S / AVASERVE_UPLOAD_MIN_PROGRESS_BYTES); it was "
        "aborted. Send the file again over a working connection.",
        headers={"Connection": "close"},
    )


async def _receive_body(
    request: Request,
    path: Path,
    limit: int,
    *,
    idle_timeout_s: float | None = None,
    min_progress_bytes: int = 1,
) -> int:
    """Stream the request body into ``path`` (created exclusively, owner-only), counting bytes.

    413 as soon as the count passes ``limit``; 408 when a window of ``idle_timeout_s`` passes
    with less than ``min_progress_bytes`` received (the window restarts each time that much
    has arrived), so neither a stalled nor a trickling client holds the upload longer.
    Returns the size.
    """
    size = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    chunks = request.stream()
    loop = asyncio.get_running_loop()
    deadline = None if idle_timeout_s is None else loop.time() + idle_timeout_s
    progress = 0
    try:
        try:
            while True:
                try:
                    async with asyncio.timeout_at(deadline):  # no task per chunk
                        chunk = await anext(chunks)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    raise _idle(idle_timeout_s or 0.0, min_progress_bytes) from None
                progress += len(chunk)
                if idle_timeout_s is not None and progress >= min_progress_bytes:
                    deadline, progress = loop.time() + idle_timeout_s, 0
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                # Blocking write of one chunk (<= 64 KiB from the server) into the page cache:
                # cheaper than a thread hop per chunk, and it keeps back-pressure on the client.
                view = memoryview(chunk)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
        except ClientDisconnect:
            raise HTTPException(400, "The client disconnected during the upload") from None
    finally:
        os.close(fd)
        await chunks.aclose()
    if size == 0:
        raise VideoInputError(
            "empty", "The request body is empty; send the video file as the body."
        )
    return size


def _video_id(name: str | None) -> str:
    if not name:
        return "upload"
    stem = Path(name.replace("\\", "/")).name.rsplit(".", 1)[0]
    return _NAME_RE.sub("_", stem).strip("._")[:100] or "upload"


@router.get("", response_model=JobList, summary="This key's jobs, newest first", responses=_ERRORS)
async def list_jobs(
    key: CurrentKey,
    service: ServiceDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
) -> JobList:
    jobs = await service.store.list_jobs(key.key_id, limit=limit)
    return JobList(jobs=[JobView.of(j) for j in jobs])


@router.get("/{job_id}", response_model=JobView, summary="State and progress", responses=_ERRORS)
async def get_job(job_id: JobId, key: CurrentKey, service: ServiceDep) -> JobView:
    return JobView.of(await _owned(service, job_id, key.key_id))


@router.get(
    "/{job_id}/results",
    summary="Results: JSON records (a list) or the AVA CSV",
    response_model=list[Record],
    responses={
        **_ERRORS,
        200: {
            "content": {
                "text/csv": {"example": "street,0003,0.537,0.179,0.677,0.719,12,0.810000\n"}
            }
        },
        409: {"model": ErrorBody, "description": "Not done yet (or failed)"},
    },
)
async def get_results(
    job_id: JobId,
    key: CurrentKey,
    service: ServiceDep,
    format: Annotated[
        Literal["json", "csv"], Query(description="json records or AVA CSV")
    ] = "json",
) -> Response:
    job = await _owned(service, job_id, key.key_id)
    if job.state != "done" or format not in job.results:
        raise _conflict(job)
    path = Path(job.results[format])
    if format == "csv":
        return FileResponse(path, media_type="text/csv", filename=f"{job.id}.csv")
    return StreamingResponse(_json_array(path), media_type="application/json")


def _json_array(jsonl: Path) -> Iterator[bytes]:
    """The JSON Lines file as one JSON array, a line at a time (no whole-file buffering)."""
    yield b"["
    first = True
    with jsonl.open("rb") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            yield line if first else b"," + line
            first = False
    yield b"]"


@router.get(
    "/{job_id}/video",
    summary="The annotated MP4 (when the job was submitted with render=true)",
    response_class=FileResponse,
    responses={
        **_ERRORS,
        200: {"content": {"video/mp4": {}}},
        409: {"model": ErrorBody, "description": "Not done yet (or failed)"},
    },
)
async def get_video(job_id: JobId, key: CurrentKey, service: ServiceDep) -> FileResponse:
    job = await _owned(service, job_id, key.key_id)
    if not job.options.render:
        raise HTTPException(404, "This job was submitted without render=true; no video")
    if job.state != "done" or "video" not in job.results:
        raise _conflict(job)
    return FileResponse(job.results["video"], media_type="video/mp4", filename=f"{job.id}.mp4")


@router.delete(
    "/{job_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Cancel (if unfinished) and delete a job and its files",
    responses=_ERRORS,
)
async def delete_job(job_id: JobId, key: CurrentKey, service: ServiceDep) -> Response:
    if not await service.runner.delete(_job_id(job_id), owner=key.key_id):
        raise await _missing(service)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
