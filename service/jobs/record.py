"""The job record: states, the ``Job`` model, the upload's ``JobMeta``, the errors a store or a
``process`` function raises, and the ``JobStore`` interface both stores implement."""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, TypedDict, get_args

from pydantic import BaseModel, ConfigDict, Field

JobState = Literal["queued", "running", "done", "failed", "cancelled"]
JOB_STATES: tuple[JobState, ...] = get_args(JobState)
TERMINAL_STATES: frozenset[str] = frozenset({"done", "failed", "cancelled"})
ACTIVE_STATES: frozenset[str] = frozenset({"queued", "running"})

_JOB_ID_RE = re.compile(r"^j_[A-Za-z0-9_\-]{24}$")


def new_job_id() -> str:
    """Server-generated, unguessable: 144 random bits (a job id is a capability to nothing,
    ownership is checked, but ids must still not be enumerable)."""
    return "j_" + secrets.token_urlsafe(18)


def is_job_id(value: str) -> bool:
    """Shape check for ids from URLs (answer 404 for anything else without touching a store)."""
    return bool(_JOB_ID_RE.match(value))


class JobOptions(BaseModel):
    """What the client asked for at upload time."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    render: bool = Field(
        default=False, description="Also write an MP4 with boxes and actions drawn."
    )


class Job(BaseModel):
    """One uploaded video and what became of it. Paths are server-internal: never return them
    to clients (routes expose ``id``, ``state``, ``progress``, ``error``, times, result kinds)."""

    model_config = ConfigDict(extra="ignore")

    id: str
    owner: str = Field(description="Key id (auth.key_fingerprint) of the key that submitted it.")
    state: JobState = "queued"
    progress: float = Field(default=0.0, ge=0.0, le=1.0)
    error: str | None = Field(default=None, description="User-facing reason when state == failed.")
    created_at: float = Field(description="Unix time.")
    updated_at: float
    input_path: str
    work_dir: str
    options: JobOptions = JobOptions()
    results: dict[str, str] = Field(
        default_factory=dict, description="Result kind (json, csv, video) -> file path."
    )
    attempts: int = Field(default=0, ge=0, description="Times a worker started it.")

    @classmethod
    def new(
        cls,
        *,
        owner: str,
        upload_dir: Path,
        options: JobOptions | None = None,
        input_name: str = "input",
    ) -> Job:
        """A queued job with a fresh id; ``work_dir = upload_dir/<id>``. Creates no files:
        the upload handler creates ``work_dir`` and writes ``input_path``."""
        job_id = new_job_id()
        work_dir = Path(upload_dir) / job_id
        now = time.time()
        return cls(
            id=job_id,
            owner=owner,
            created_at=now,
            updated_at=now,
            input_path=str(work_dir / input_name),
            work_dir=str(work_dir),
            options=options or JobOptions(),
        )

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL_STATES


META_NAME = "meta.json"


class JobMeta(TypedDict):
    """What the upload handler learnt about the video (its probe), kept next to it as
    ``work_dir/meta.json``: the job's ``process`` reads the video id and the duration (for
    progress) from it."""

    video_id: str
    duration_s: float | None
    width: int
    height: int
    fps: float


def write_meta(work_dir: Path, meta: JobMeta) -> None:
    (Path(work_dir) / META_NAME).write_text(json.dumps(meta), encoding="utf-8")


def read_meta(work_dir: Path) -> JobMeta | None:
    """``work_dir/meta.json`` as written by `write_meta`, or None when it is missing, not
    JSON or not a meta record (the job still runs: without an id or a duration)."""
    try:
        data = json.loads((Path(work_dir) / META_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    try:
        duration = data.get("duration_s")
        return JobMeta(
            video_id=str(data.get("video_id") or ""),
            duration_s=None if duration is None else float(duration),
            width=int(data.get("width") or 0),
            height=int(data.get("height") or 0),
            fps=float(data.get("fps") or 0.0),
        )
    except (TypeError, ValueError):
        return None


class JobQuotaExceeded(Exception):
    """``submit`` refused: the owner (``scope='key'``) or the service (``'global'``) already
    has ``limit`` unfinished jobs. ``admission.admit_job`` maps it to 429/503."""

    def __init__(self, scope: Literal["key", "global"], limit: int) -> None:
        super().__init__(f"{scope} job limit {limit} reached")
        self.scope: Literal["key", "global"] = scope
        self.limit = limit


class JobError(Exception):
    """Raised by a ``process`` function for a failure the user should read (the message is
    stored as the job's error). Anything else becomes a generic internal-error message."""


@dataclass
class RecoveryReport:
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


RequeueOutcome = Literal["requeued", "failed", "gone"]


class JobStore(Protocol):
    """Where jobs live. All methods are coroutines; ``owner`` filters enforce isolation (a key
    never sees, cancels or deletes another key's job: such calls behave as if it did not exist).
    """

    async def submit(
        self,
        job: Job,
        *,
        max_active_per_owner: int | None = None,
        max_active_total: int | None = None,
    ) -> None:
        """Store and enqueue, atomically checking the unfinished-job caps
        (``JobQuotaExceeded``)."""
        ...

    async def get(self, job_id: str, *, owner: str | None = None) -> Job | None: ...

    async def list_jobs(self, owner: str, *, limit: int = 100) -> list[Job]:
        """The owner's jobs, newest first."""
        ...

    async def claim(self, worker_id: str, timeout_s: float) -> Job | None:
        """Take the oldest queued job for ``worker_id`` (state -> running, attempts + 1), or
        None after ``timeout_s``. Queued jobs cancelled meanwhile are skipped."""
        ...

    async def set_progress(self, job_id: str, progress: float) -> JobState | None:
        """Record progress of a running job; returns its current state (None = deleted), so a
        worker learns about a cancel or delete in the same round trip."""
        ...

    async def finish(
        self,
        job_id: str,
        worker_id: str,
        state: JobState,
        *,
        error: str | None = None,
        results: Mapping[str, str] | None = None,
    ) -> bool:
        """Running -> done/failed. False when the job was cancelled or deleted meanwhile."""
        ...

    async def requeue(
        self, job_id: str, worker_id: str, *, charge_attempt: bool, max_attempts: int
    ) -> RequeueOutcome:
        """Put a claimed job back at the head of the queue. With ``charge_attempt`` (a crash)
        a job that already had ``max_attempts`` starts is marked failed instead; without it
        (a graceful drain) the interrupted start is not counted."""
        ...

    async def cancel(self, job_id: str, *, owner: str | None) -> JobState | None:
        """Queued/running -> cancelled. Returns the state before (None: no such job)."""
        ...

    async def delete(self, job_id: str, *, owner: str | None) -> Job | None:
        """Remove the record (any state). Returns it, so the caller can delete its files."""
        ...

    async def heartbeat(self, worker_id: str, ttl_s: float) -> None:
        """Announce that ``worker_id`` is alive for the next ``ttl_s`` seconds."""
        ...

    async def recover(self, worker_id: str, *, max_attempts: int) -> RecoveryReport:
        """Re-queue (or fail) jobs held by workers whose heartbeat expired. ``worker_id`` is the
        caller, never treated as dead."""
        ...

    async def release_worker(self, worker_id: str) -> list[str]:
        """Graceful exit: re-queue what ``worker_id`` still holds (no attempt charged) and
        forget the worker. Returns the re-queued ids."""
        ...

    async def counts(self) -> dict[JobState, int]:
        """Jobs per state (all owners; with Redis, all replicas)."""
        ...

    async def oldest(self, now: float) -> dict[str, float]:
        """``{"queued": s, "running": s}``: seconds since the longest-waiting queued job was
        queued, and since the stalest running job last made progress (0 when none)."""
        ...

    async def held(self, worker_id: str) -> list[str]:
        """Ids the store lists as claimed by ``worker_id`` (its processing list)."""
        ...

    async def check_reset(self) -> bool:
        """True when the store was emptied since this object first looked (a Redis restarted
        without persistence): then ``reset_at`` holds when that was noticed."""
        ...

    async def expired(self, finished_before: float, *, limit: int = 100) -> list[Job]:
        """Finished jobs whose last update is older than ``finished_before`` (unix time)."""
        ...

    async def close(self) -> None: ...


def crash_message(attempts: int) -> str:
    return (
        f"The worker processing this video stopped unexpectedly {attempts} time(s); giving up. "
        "If the video is unusual (very long, very large), try a shorter or smaller version."
    )
