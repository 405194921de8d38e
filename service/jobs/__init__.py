"""Video jobs: the record, two stores (in-process and Redis) and the worker pool that runs them.

::

    POST /v1/jobs -> admit_job -> store.submit --> [queue] --claim--> [processing:<worker>]
                                                                         |  JobRunner worker
                                                                         |  process(job, progress)
                                                   finished (done|failed|cancelled) <--'
    housekeeping (every few s): heartbeat, recover dead workers' jobs, delete expired jobs

States: ``queued -> running -> done | failed``, and ``queued|running -> cancelled``.

Never silently lost
-------------------
With Redis the queue is a *reliable queue*: ``claim`` moves a job id atomically from the shared
queue list into this worker's ``processing:<worker_id>`` list (``BLMOVE``), and only
``finish``/``requeue`` take it out. Each worker keeps a heartbeat key with a TTL. When a process
dies, its heartbeat expires and any runner's ``recover`` (run at start-up and periodically)
finds the dead worker's processing list and puts each job back in the queue, or marks it
``failed`` with a message once it has used up ``max_attempts`` starts (a video that crashes the
process must not crash every replica in turn). A graceful drain re-queues unfinished jobs
without charging an attempt.

Workers never die silently. Whatever a job raises ends it ``failed`` with a reason; recording
the outcome is retried with backoff while the store is unreachable (a Redis stall), then left
to housekeeping, and the worker takes the next job. Housekeeping also restarts a worker task
that ended, stops (and fails) the job of a worker that stopped coming round its loop, and
re-queues any job the store lists under this process that no worker here runs, so the
process's heartbeat cannot keep such a job ``running`` forever. Each event is logged and
counted (``JobRunner.errors``); dead or stuck workers turn readiness to 503.

A Redis restarted without persistence loses every job. The store notices (a random ``epoch``
key that never expires disappears or changes): running jobs whose records vanished are stopped
and their files removed, upload folders no record owns are swept, and the API's 404 says the
store lost its data. Persistence (AOF) is what keeps queued jobs across a Redis restart.

All Redis keys share one hash tag (``{avaserve:jobs}``), so the multi-key Lua scripts that
make each transition atomic stay valid on Redis Cluster. Jobs are few and small; one slot holds
them easily.

Files: a job owns ``work_dir`` (the upload and every result live inside it). The runner deletes
it on DELETE and when the job expires after ``retention_s``. With several replicas sharing Redis,
``work_dir`` must be on storage they all mount (a job may run on any replica).

Modules: ``record`` (the job, its states, ``JobMeta`` and the ``JobStore`` interface),
``store_memory`` (in-process), ``store_redis`` (Redis), ``runner`` (the worker pool) and
``annotate`` (the service's ``process``: an upload through the engine into result files).
"""

from service.jobs.record import (
    ACTIVE_STATES,
    JOB_STATES,
    TERMINAL_STATES,
    Job,
    JobError,
    JobMeta,
    JobOptions,
    JobQuotaExceeded,
    JobState,
    JobStore,
    RecoveryReport,
    RequeueOutcome,
    is_job_id,
    new_job_id,
    read_meta,
    write_meta,
)
from service.jobs.runner import (
    RUNNER_ERROR_STEPS,
    DrainReport,
    JobRunner,
    ProcessFn,
    ProgressFn,
)
from service.jobs.store_memory import InMemoryJobStore
from service.jobs.store_redis import RedisJobStore

__all__ = [
    "ACTIVE_STATES",
    "JOB_STATES",
    "RUNNER_ERROR_STEPS",
    "TERMINAL_STATES",
    "DrainReport",
    "InMemoryJobStore",
    "Job",
    "JobError",
    "JobMeta",
    "JobOptions",
    "JobQuotaExceeded",
    "JobRunner",
    "JobState",
    "JobStore",
    "ProcessFn",
    "ProgressFn",
    "RecoveryReport",
    "RedisJobStore",
    "RequeueOutcome",
    "is_job_id",
    "new_job_id",
    "read_meta",
    "write_meta",
]
