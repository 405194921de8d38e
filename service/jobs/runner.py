"""The worker pool: ``JobRunner`` claims jobs from a ``JobStore``, runs them, records the outcome
(retried through store outages), and keeps house (heartbeat, recovery, expiry, orphan sweep)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from service.errors import VideoInputError
from service.jobs.record import (
    JOB_STATES,
    Job,
    JobError,
    JobState,
    JobStore,
    RecoveryReport,
    is_job_id,
)

log = logging.getLogger(__name__)

_INTERNAL_ERROR = "Internal error while processing this video; retrying will not help. Job {id}."

ProgressFn = Callable[[float], None]
"""``progress(fraction)``: cheap and synchronous (it only records the number; the runner
writes it to the store every ``progress_interval_s``), callable from any thread."""

ProcessFn = Callable[[Job, ProgressFn], Awaitable[Mapping[str, str]]]
"""``async process(job, progress) -> {result kind: path}``: annotate ``job.input_path``, write
results inside ``job.work_dir`` (e.g. ``{"json": ..., "csv": ..., "video": ...}``). Raise
``VideoInputError`` or ``JobError`` for failures the user should read about."""


@dataclass
class DrainReport:
    finished: list[str] = field(default_factory=list)  # in flight at drain, finished in grace
    requeued: list[str] = field(default_factory=list)  # interrupted and put back in the queue


RUNNER_ERROR_STEPS: tuple[str, ...] = (
    "claim",  # taking the next job failed (store unreachable)
    "progress",  # recording progress failed (best effort)
    "finish",  # recording a finished job failed (retried)
    "process",  # a job raised an unexpected exception (it ends failed, internal error)
    "worker",  # an exception escaped a job's handling, or a worker task ended (restarted)
    "stuck",  # a worker did not come round its loop for stuck_after_s
    "housekeeping",  # a heartbeat/recovery/expiry step failed (retried next interval)
)
"""The ``step`` label of ``avaserve_job_runner_errors_total``: where a runner error happened."""

# Backstop on any single store call made by the runner: the store's own socket timeouts fire
# first; this only turns a call that never returns (a client bug) into a retried error.
_STORE_CALL_TIMEOUT_S = 30.0


def _reraise_if_cancelling() -> None:
    """Inside an ``except Exception`` of a retry loop: re-raise CancelledError when this task
    is being cancelled, whatever the exception the cancellation surfaced as."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class JobRunner:
    """A bounded pool of asyncio workers that run jobs from a ``JobStore``.

    workers: jobs run concurrently by this process. Each pulls the next job only when free.
    worker_id: this process's identity in the store (its processing list and heartbeat). Must
        be unique per live process; the default (hostname + random) is.
    max_attempts: starts allowed per job across crashes (drains do not count).
    heartbeat_ttl_s: how long after a crash its jobs become recoverable. Shorter -> faster
        recovery, but a process stalled (GC, swapping) for longer is declared dead while still
        running its jobs, and they run twice. Heartbeats are sent every ttl/3.
    retention_s: finished jobs and their files are deleted this long after finishing.
    files_root: work dirs are only ever deleted inside it (a corrupt record cannot point the
        runner at another directory). Folders in it that no job record owns are removed once
        untouched for ``orphan_grace_s`` (at start-up and every few minutes).
    progress_interval_s: how often progress goes to the store and cancellations are noticed.
    control_store: the store ``cancel``/``delete`` use (the API's, with short timeouts);
        defaults to ``store``.
    finish_retry_s: how long a worker keeps retrying to record a finished job while the store
        is unreachable (backoff 0.25 s doubling to 4 s). After that the result is kept in memory
        and housekeeping retries it; the worker moves on.
    stuck_after_s: a worker that has not come round its loop for this long is reported stuck
        (readiness 503) and its job, if any, is stopped and failed.
    orphan_grace_s: an upload folder with no job record is removed only when nothing in it
        changed for this long (an upload still streaming in has a folder but no record yet).

    Failures never end a worker silently: whatever a job raises ends it ``failed`` with a
    reason, a store outage is retried, and each such event is logged and counted in
    ``errors`` (by step; exported as ``avaserve_job_runner_errors_total``).
    """

    def __init__(
        self,
        store: JobStore,
        process: ProcessFn,
        *,
        workers: int = 1,
        worker_id: str | None = None,
        max_attempts: int = 2,
        heartbeat_ttl_s: float = 30.0,
        retention_s: float = 24 * 3600,
        files_root: Path | None = None,
        progress_interval_s: float = 0.5,
        claim_timeout_s: float = 1.0,
        control_store: JobStore | None = None,
        finish_retry_s: float = 120.0,
        stuck_after_s: float = 120.0,
        orphan_grace_s: float = 900.0,
        orphan_sweep_s: float = 300.0,
    ) -> None:
        if workers < 1 or max_attempts < 1 or heartbeat_ttl_s <= 0:
            raise ValueError("JobRunner: workers and max_attempts >= 1, heartbeat_ttl_s > 0")
        if finish_retry_s < 0 or stuck_after_s <= 0 or orphan_grace_s < 0:
            raise ValueError(
                "JobRunner: finish_retry_s >= 0, stuck_after_s > 0, orphan_grace_s >= 0"
            )
        self.store = store
        self.control_store = control_store or store
        self.process = process
        self.workers = workers
        self.worker_id = worker_id or f"{os.uname().nodename}-{uuid.uuid4().hex[:8]}"
        self.max_attempts = max_attempts
        self.heartbeat_ttl_s = heartbeat_ttl_s
        self.retention_s = retention_s
        self.files_root = None if files_root is None else Path(files_root).resolve()
        self.progress_interval_s = progress_interval_s
        self.claim_timeout_s = claim_timeout_s
        self.finish_retry_s = finish_retry_s
        self.stuck_after_s = stuck_after_s
        self.orphan_grace_s = orphan_grace_s
        self.orphan_sweep_s = orphan_sweep_s
        # Read by metrics at scrape time (refreshed by housekeeping; with Redis: cluster-wide).
        self.state_counts: dict[JobState, int] = dict.fromkeys(JOB_STATES, 0)
        # Seconds since the oldest queued job was queued / the stalest running job last moved.
        self.oldest_s: dict[str, float] = {"queued": 0.0, "running": 0.0}
        self.errors: Counter[str] = Counter({step: 0 for step in RUNNER_ERROR_STEPS})
        self.orphans_removed = 0
        self.store_resets = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._workers: dict[int, asyncio.Task[None]] = {}
        self._housekeeper: asyncio.Task[None] | None = None
        self._tick: dict[int, float] = {}  # worker index -> monotonic time it last came round
        self._job_of: dict[int, str] = {}  # worker index -> job id it runs
        self._running: dict[str, asyncio.Task[Mapping[str, str]]] = {}
        self._stop_reason: dict[str, str] = {}  # job id -> drain|cancelled|deleted|stuck
        # Finished jobs the store could not record in time: job id -> (state, error, results).
        self._unrecorded: dict[str, tuple[JobState, str | None, dict[str, str]]] = {}
        self._suspects: set[str] = set()  # held in the store, run by no worker (last audit)
        self._last_sweep = 0.0
        self._stopping = False
        self._started = False

    @property
    def accepting(self) -> bool:
        """False once draining: the app should answer new uploads with 503."""
        return self._started and not self._stopping

    @property
    def running_jobs(self) -> list[str]:
        return list(self._running)

    def worker_states(self) -> dict[str, int]:
        """Workers by state: ``healthy``, ``stuck`` (has not come round its loop for
        ``stuck_after_s``) or ``dead`` (its task ended while the runner is not stopping);
        a stopped housekeeping task counts as one dead worker (no heartbeat, no recovery)."""
        out = {"healthy": 0, "stuck": 0, "dead": 0}
        if not self._started or self._stopping:
            return out
        now = time.monotonic()
        for index, task in self._workers.items():
            if task.done():
                out["dead"] += 1
            elif now - self._tick.get(index, now) > self.stuck_after_s:
                out["stuck"] += 1
            else:
                out["healthy"] += 1
        if self._housekeeper is not None and self._housekeeper.done():
            out["dead"] += 1
        return out

    @property
    def workers_ok(self) -> bool:
        """For readiness: every worker (and housekeeping) alive and coming round its loop."""
        states = self.worker_states()
        return states["stuck"] == 0 and states["dead"] == 0

    async def start(self) -> RecoveryReport:
        """Register, recover dead workers' jobs, remove orphaned upload folders, and start the
        workers and housekeeping."""
        if self._started:
            raise RuntimeError("JobRunner already started")
        self._started = True
        await self.store.heartbeat(self.worker_id, self.heartbeat_ttl_s)
        await self.store.check_reset()  # learn the store's identity (see housekeeping)
        report = await self.store.recover(self.worker_id, max_attempts=self.max_attempts)
        if report.requeued or report.failed:
            log.warning(
                "recovered jobs of stopped workers: %d re-queued, %d failed after %d attempts",
                len(report.requeued),
                len(report.failed),
                self.max_attempts,
            )
        self.state_counts = await self.store.counts()
        try:
            await self.sweep_orphans()
        except Exception:  # noqa: BLE001 - start-up goes on; housekeeping sweeps again
            log.warning("could not sweep orphaned upload folders at start-up", exc_info=True)
        self._last_sweep = time.monotonic()
        loop = asyncio.get_running_loop()
        for i in range(self.workers):
            self._spawn_worker(i)
        self._housekeeper = loop.create_task(self._housekeeping(), name="job-housekeeping")
        return report

    def _spawn_worker(self, index: int) -> None:
        self._tick[index] = time.monotonic()
        task = asyncio.get_running_loop().create_task(
            self._worker(index), name=f"job-worker-{index}"
        )
        self._workers[index] = task

    @property
    def _all_tasks(self) -> list[asyncio.Task[None]]:
        tasks = list(self._workers.values())
        if self._housekeeper is not None:
            tasks.append(self._housekeeper)
        return tasks

    async def drain(self, grace_s: float) -> DrainReport:
        """Stop taking jobs; give running ones ``grace_s`` to finish; re-queue the rest.

        Idle workers stop within ``claim_timeout_s``. Afterwards nothing of this runner is left
        in the store: interrupted jobs are back at the head of the queue for another replica
        (or this one after restart), with no attempt charged.
        """
        self._stopping = True
        report = DrainReport()
        in_flight = dict(self._running)
        workers = [t for t in self._workers.values() if not t.done()]
        pending: set[asyncio.Task[None]] = set()
        if workers:
            _, pending = await asyncio.wait(workers, timeout=max(grace_s, 0.0))
        for job_id, task in in_flight.items():
            if task.done() and not task.cancelled():
                report.finished.append(job_id)
            elif not task.done():
                self._stop_reason[job_id] = "drain"
                task.cancel()
        # Each worker re-queues its own interrupted job (a few store calls); give it a moment
        # before cutting it off. release_worker below catches anything it could not do.
        if pending:
            await asyncio.wait(pending, timeout=5.0)
        tasks = self._all_tasks
        for t in tasks:
            t.cancel()
        if tasks:
            # Bounded: a task that swallowed its cancellation must not hold the shutdown.
            _, stuck = await asyncio.wait(tasks, timeout=5.0)
            for t in stuck:
                log.warning("job runner task %s did not stop within 5 s", t.get_name())
        self._workers = {}
        self._housekeeper = None
        # Results the store never took: one last try each (else the job is re-queued below).
        for job_id in list(self._unrecorded):
            await self._record_unrecorded(job_id)
        # Whatever is still listed under this worker (e.g. a job claimed as the drain began).
        leftover = await self.store.release_worker(self.worker_id)
        report.requeued = sorted(
            {j for j, why in self._stop_reason.items() if why == "drain"} | set(leftover)
        )
        self._stop_reason.clear()
        log.info(
            "job runner drained: %d finished in grace, %d re-queued",
            len(report.finished),
            len(report.requeued),
        )
        return report

    async def cancel(self, job_id: str, *, owner: str | None) -> JobState | None:
        """Cancel a queued or running job (a running one stops within a progress interval on
        whichever replica runs it). Returns the state before, None when not found."""
        before = await self.control_store.cancel(job_id, owner=owner)
        if before == "running" and job_id in self._running:
            self._stop_reason[job_id] = "cancelled"
            self._running[job_id].cancel()
        return before

    async def delete(self, job_id: str, *, owner: str | None) -> bool:
        """Cancel if needed, remove the record and delete the job's files."""
        task = self._running.get(job_id)
        job = await self.control_store.delete(job_id, owner=owner)
        if job is None:
            return False
        if task is not None:
            self._stop_reason[job_id] = "deleted"
            task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait({task}, timeout=5.0)
        self._remove_files(job)
        return True

    async def sweep_orphans(self) -> int:
        """Remove upload folders (``files_root/<job id>``) that no job record owns and that
        nothing touched for ``orphan_grace_s``: left by a Redis that restarted empty, a crash
        between upload and submit, or a store that lost a record. Returns how many. Raises when
        the store cannot be asked (nothing is removed on a guess)."""
        root = self.files_root
        if root is None or not root.is_dir():
            return 0
        now = time.time()
        removed = 0
        for entry in list(os.scandir(root)):
            if not is_job_id(entry.name) or not entry.is_dir(follow_symlinks=False):
                continue
            if entry.name in self._running or entry.name in self._unrecorded:
                continue
            if now - _newest_mtime(Path(entry.path)) < self.orphan_grace_s:
                continue
            if await self.store.get(entry.name) is not None:
                continue
            await asyncio.to_thread(shutil.rmtree, entry.path, True)
            removed += 1
            log.info("removed upload folder %s: no job record owns it", entry.name)
        self.orphans_removed += removed
        return removed

    # ---------------------------------------------------------------- internals
    def _count(self, step: str) -> None:
        self.errors[step] += 1

    async def _worker(self, index: int) -> None:
        while not self._stopping:
            self._tick[index] = time.monotonic()
            try:
                async with asyncio.timeout(self.claim_timeout_s + _STORE_CALL_TIMEOUT_S):
                    job = await self.store.claim(self.worker_id, self.claim_timeout_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a store outage must not kill the pool
                _reraise_if_cancelling()
                self._count("claim")
                log.warning("job store unavailable while claiming (%r); retrying in 1 s", exc)
                await asyncio.sleep(1.0)
                continue
            if job is None:
                continue
            if self._stopping:  # claimed just as the drain began: hand it back untouched
                with contextlib.suppress(Exception):  # release_worker re-queues it otherwise
                    await self.store.requeue(
                        job.id, self.worker_id, charge_attempt=False, max_attempts=0
                    )
                self._stop_reason[job.id] = "drain"
                return
            self._job_of[index] = job.id
            try:
                await self._run(job, index)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the job fails, the worker goes on
                _reraise_if_cancelling()
                self._count("worker")
                log.exception("job %s: unexpected error in its worker; marking it failed", job.id)
                await self._finish(
                    job.id, "failed", error=_INTERNAL_ERROR.format(id=job.id), index=index
                )
            finally:
                self._job_of.pop(index, None)
                self._running.pop(job.id, None)

    async def _run(self, job: Job, index: int | None = None) -> None:
        latest = [0.0]

        def progress(fraction: float) -> None:
            latest[0] = fraction

        if not Path(job.input_path).is_file():
            await self._finish(
                job.id,
                "failed",
                error="The uploaded file is not available to this server (with several "
                "replicas, the upload directory must be shared storage). Upload it again.",
                index=index,
            )
            return
        log.info("job %s started (attempt %d, owner %s)", job.id, job.attempts, job.owner)
        task: asyncio.Task[Mapping[str, str]] = asyncio.ensure_future(self.process(job, progress))
        self._running[job.id] = task
        try:
            await self._watch(job.id, task, latest, index)
            results = await task
        except asyncio.CancelledError:
            me = asyncio.current_task()
            await self._stopped(job, index)
            if me is not None and me.cancelling():
                raise  # the worker itself is being stopped, not just this job
            return
        except (VideoInputError, JobError) as exc:
            message = exc.message if isinstance(exc, VideoInputError) else str(exc)
            log.info("job %s failed: %s", job.id, message)
            await self._finish(job.id, "failed", error=message, index=index)
        except Exception:  # noqa: BLE001 - the job fails, the worker lives on
            self._count("process")
            log.exception("job %s crashed", job.id)
            await self._finish(
                job.id, "failed", error=_INTERNAL_ERROR.format(id=job.id), index=index
            )
        else:
            recorded = await self._finish(job.id, "done", results=results, index=index)
            if recorded:
                log.info("job %s done", job.id)
            elif recorded is False:
                await self._forget_if_vanished(job)
        finally:
            self._running.pop(job.id, None)

    async def _finish(
        self,
        job_id: str,
        state: JobState,
        *,
        error: str | None = None,
        results: Mapping[str, str] | None = None,
        index: int | None = None,
    ) -> bool | None:
        """``store.finish``, retried with backoff while the store is unreachable (a Redis that
        stalls or restarts), for up to ``finish_retry_s``. Returns what the store said (False:
        the job was cancelled, deleted or lost meanwhile), or None when it gave up: the outcome
        is then kept in ``_unrecorded`` and housekeeping retries it. Never raises (but for
        the worker's own cancellation)."""
        deadline = time.monotonic() + self.finish_retry_s
        delay = 0.25
        attempt = 0
        while True:
            attempt += 1
            if index is not None:
                self._tick[index] = time.monotonic()
            try:
                async with asyncio.timeout(_STORE_CALL_TIMEOUT_S):
                    recorded = await self.store.finish(
                        job_id, self.worker_id, state, error=error, results=results
                    )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - retried, then handed to housekeeping
                _reraise_if_cancelling()
                self._count("finish")
                if time.monotonic() + delay > deadline:
                    log.error(
                        "job %s: could not record it as %s after %d attempt(s) (%r); "
                        "housekeeping keeps retrying",
                        job_id,
                        state,
                        attempt,
                        exc,
                    )
                    self._unrecorded[job_id] = (state, error, dict(results or {}))
                    return None
                log.warning(
                    "job %s: job store unavailable while recording it as %s (%r); retry in %.2f s",
                    job_id,
                    state,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 4.0)
                continue
            if attempt > 1:
                log.info("job %s: recorded as %s after %d attempts", job_id, state, attempt)
            self._unrecorded.pop(job_id, None)
            return recorded

    async def _record_unrecorded(self, job_id: str) -> None:
        state, error, results = self._unrecorded[job_id]
        try:
            async with asyncio.timeout(_STORE_CALL_TIMEOUT_S):
                await self.store.finish(job_id, self.worker_id, state, error=error, results=results)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - next round
            _reraise_if_cancelling()
            self._count("finish")
            log.warning("job %s: still cannot record it as %s (%r)", job_id, state, exc)
            return
        self._unrecorded.pop(job_id, None)
        log.info("job %s: recorded as %s (late)", job_id, state)

    async def _forget_if_vanished(self, job: Job) -> None:
        """The store refused to finish ``job``: if its record is gone (deleted on another
        replica, or a Redis that restarted empty), remove its files, which nobody else will."""
        try:
            gone = await self.store.get(job.id) is None
        except Exception:  # noqa: BLE001 - the orphan sweep removes them later
            return
        if gone:
            log.warning(
                "job %s vanished from the job store while running (deleted elsewhere, or the "
                "store lost its data); its files were removed",
                job.id,
            )
            self._remove_files(job)

    async def _watch(
        self,
        job_id: str,
        task: asyncio.Task[Mapping[str, str]],
        latest: list[float],
        index: int | None = None,
    ) -> None:
        """Until ``task`` ends: push progress, and stop the task when the job was cancelled or
        deleted elsewhere (another replica served the DELETE), or its record vanished."""
        while not task.done():
            if index is not None:
                self._tick[index] = time.monotonic()
            await asyncio.wait({task}, timeout=self.progress_interval_s)
            if task.done():
                return
            try:
                async with asyncio.timeout(_STORE_CALL_TIMEOUT_S):
                    state = await self.store.set_progress(job_id, latest[0])
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - progress is best effort
                _reraise_if_cancelling()
                self._count("progress")
                log.warning("could not record progress of job %s", job_id, exc_info=True)
                continue
            if state is None or state == "cancelled":
                self._stop_reason[job_id] = "deleted" if state is None else "cancelled"
                task.cancel()

    async def _stopped(self, job: Job, index: int | None = None) -> None:
        """The job's task was cancelled: act on why."""
        why = self._stop_reason.get(job.id, "drain")
        task = self._running.get(job.id)
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        if why == "drain":
            self._stop_reason[job.id] = "drain"
            try:
                await self.store.requeue(
                    job.id, self.worker_id, charge_attempt=False, max_attempts=self.max_attempts
                )
            except Exception:  # noqa: BLE001 - drain's release_worker re-queues it
                log.warning("job %s: could not re-queue it now; drain will", job.id)
            else:
                log.info("job %s interrupted by shutdown; re-queued", job.id)
        elif why == "deleted":
            self._stop_reason.pop(job.id, None)
            await self._finish(job.id, "cancelled", index=index)  # drops it from processing
            log.info("job %s was deleted or vanished from the job store; stopped", job.id)
            self._remove_files(job)
        elif why == "stuck":
            self._stop_reason.pop(job.id, None)
            await self._finish(
                job.id,
                "failed",
                error=f"Processing stopped making progress for over {self.stuck_after_s:.0f} s "
                f"and was stopped. Job {job.id}; retrying may help.",
                index=index,
            )
        else:
            await self._finish(job.id, "cancelled", index=index)
            self._stop_reason.pop(job.id, None)
            log.info("job %s cancelled", job.id)

    async def _housekeeping(self) -> None:
        # Loops until cancelled. A client library may turn a cancellation that lands inside
        # a Redis call into an ordinary error (seen as a drain that never returned in CI),
        # so the error branches ask the task itself before retrying. Each step is tried on its
        # own: an outage of one store call must not skip the others (the heartbeat above all).
        interval = self.heartbeat_ttl_s / 3
        while True:
            await asyncio.sleep(interval)
            self._supervise()
            for step in (
                self._beat,
                self._check_reset,
                self._recover,
                self._retry_unrecorded,
                self._audit,
                self._expire,
                self._sweep,
                self._refresh_counts,
            ):
                try:
                    async with asyncio.timeout(max(interval, _STORE_CALL_TIMEOUT_S)):
                        await step()
                except asyncio.CancelledError:
                    raise
                except Exception:  # noqa: BLE001 - retried next interval
                    _reraise_if_cancelling()
                    self._count("housekeeping")
                    log.warning("job housekeeping (%s) failed; retrying", step.__name__,
                                exc_info=True)  # fmt: skip

    def _supervise(self) -> None:
        """Restart dead workers; stop the job of a stuck one (it is failed with a reason)."""
        if self._stopping:
            return
        now = time.monotonic()
        for index, task in list(self._workers.items()):
            if task.done():
                exc = None if task.cancelled() else task.exception()
                self._count("worker")
                log.error("job worker %d ended (%r); starting a new one", index, exc)
                job_id = self._job_of.pop(index, None)
                orphan = self._running.pop(job_id, None) if job_id is not None else None
                if orphan is not None:
                    orphan.cancel()  # nobody awaits it any more; the audit re-queues the job
                self._spawn_worker(index)
            elif now - self._tick.get(index, now) > self.stuck_after_s:
                self._count("stuck")
                job_id = self._job_of.get(index)
                log.error(
                    "job worker %d has not come round its loop for %.0f s (job %s)",
                    index,
                    now - self._tick[index],
                    job_id,
                )
                job_task = self._running.get(job_id) if job_id else None
                if job_id and job_task is not None and not job_task.done():
                    self._stop_reason[job_id] = "stuck"
                    job_task.cancel()

    async def _beat(self) -> None:
        await self.store.heartbeat(self.worker_id, self.heartbeat_ttl_s)

    async def _check_reset(self) -> None:
        if await self.store.check_reset():
            self.store_resets += 1
            self._last_sweep = 0.0  # the lost jobs' folders are orphans now: sweep this round
            log.error(
                "the job store lost its data (Redis restarted without persistence?): every "
                "queued and finished job is gone; running jobs stop and their files are removed"
            )

    async def _recover(self) -> None:
        await self.store.recover(self.worker_id, max_attempts=self.max_attempts)

    async def _retry_unrecorded(self) -> None:
        for job_id in list(self._unrecorded):
            await self._record_unrecorded(job_id)

    async def _audit(self) -> None:
        """Jobs the store lists under this worker that no worker here runs (a worker died, or
        its finish was lost) would stay ``running`` forever behind this process's heartbeat:
        seen in two audits in a row, they are re-queued (charging an attempt) or failed."""
        held = set(await self.store.held(self.worker_id))
        orphans = held - set(self._running) - set(self._unrecorded)
        for job_id in orphans & self._suspects:
            outcome = await self.store.requeue(
                job_id, self.worker_id, charge_attempt=True, max_attempts=self.max_attempts
            )
            log.error("job %s was held by no worker of this process: %s", job_id, outcome)
        self._suspects = orphans - self._suspects

    async def _expire(self) -> None:
        for job in await self.store.expired(time.time() - self.retention_s):
            if await self.store.delete(job.id, owner=None) is not None:
                self._remove_files(job)

    async def _sweep(self) -> None:
        if time.monotonic() - self._last_sweep < self.orphan_sweep_s:
            return
        self._last_sweep = time.monotonic()
        await self.sweep_orphans()

    async def _refresh_counts(self) -> None:
        self.state_counts = await self.store.counts()
        self.oldest_s = await self.store.oldest(time.time())

    def _remove_files(self, job: Job) -> None:
        work_dir = Path(job.work_dir).resolve()
        if self.files_root is not None and not work_dir.is_relative_to(self.files_root):
            log.error("job %s: refusing to delete %s outside %s", job.id, work_dir, self.files_root)
            return
        shutil.rmtree(work_dir, ignore_errors=True)


def _newest_mtime(folder: Path) -> float:
    """The latest modification time of a folder and the files directly in it."""
    newest = folder.stat().st_mtime
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            with contextlib.suppress(OSError):
                newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
    return newest
