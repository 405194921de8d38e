"""Admission control: how many jobs and live streams a key, and the whole service, may hold.

Two kinds of limits, both answered the same way over HTTP:

* per key exceeded  -> **429 Too Many Requests** (the caller should slow down);
* global exceeded   -> **503 Service Unavailable** (the service is full; another replica, or
  a retry later, will do),

both with ``Retry-After``. Limits fail fast: a request never queues for a slot, since a client
holding an HTTP connection open while it waits costs more than a retry.

* ``ConcurrencyLimiter`` counts slots in this process: live streams (a slot per open
  WebSocket, held with ``async with limiter.slot(key_id):``). Its global cap is therefore per
  replica, which is what it protects (this process's CPU).
* Jobs outlive requests and, with Redis, processes, so their count comes from the job store:
  ``admit_job`` submits through ``JobStore.submit(..., max_active_per_owner, max_active_total)``,
  which checks and enqueues atomically, and turns its ``JobQuotaExceeded`` into 429/503.

For WebSockets, catch ``LimitExceeded`` before ``accept`` and refuse the handshake with
``WebSocketException(LimitExceeded.ws_close_code)`` (1013, "try again later").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal

from fastapi import HTTPException, status

from service.jobs import Job, JobQuotaExceeded, JobStore

Scope = Literal["key", "global"]
WS_TRY_AGAIN_LATER = 1013


class LimitExceeded(HTTPException):
    """A concurrency limit was reached: 429 (per key) or 503 (global), with ``Retry-After``.

    An ``HTTPException``, so raising it from a route or dependency needs no handler.
    """

    ws_close_code = WS_TRY_AGAIN_LATER

    def __init__(
        self, *, resource: str, scope: Scope, limit: int, retry_after_s: int, close: bool = False
    ) -> None:
        self.resource = resource
        self.scope = scope
        self.limit = limit
        self.retry_after_s = retry_after_s
        if scope == "key":
            code = status.HTTP_429_TOO_MANY_REQUESTS
            detail = (
                f"This API key already has {limit} {resource} in progress (the limit); "
                f"wait for one to finish, then retry after {retry_after_s} s"
            )
        else:
            code = status.HTTP_503_SERVICE_UNAVAILABLE
            detail = (
                f"The service is at its limit of {limit} {resource}; retry after {retry_after_s} s"
            )
        headers = {"Retry-After": str(retry_after_s)}
        if close:  # the request body was not read: close instead of draining it
            headers["Connection"] = "close"
        super().__init__(code, detail, headers=headers)


class ConcurrencyLimiter:
    """Slots per key and in total, for one kind of resource (e.g. ``"streams"``).

    per_key: slots one key may hold. Protects other keys from one greedy client.
    global_limit: slots in total in this process. Protects the process itself; set it from
        what the hardware sustains (for live streams: what keeps p95 lag within budget).
    retry_after_s: the ``Retry-After`` hint sent on refusal.

    Not thread-safe: use it from the event loop (acquire/release never await, so there is no
    interleaving between the check and the increment).
    """

    def __init__(
        self, resource: str, *, per_key: int, global_limit: int, retry_after_s: int = 5
    ) -> None:
        if per_key < 1 or global_limit < 1 or retry_after_s < 1:
            raise ValueError(
                f"ConcurrencyLimiter({resource}): per_key, global_limit and retry_after_s must "
                f"be >= 1, got {per_key}, {global_limit}, {retry_after_s}"
            )
        self.resource = resource
        self.per_key = per_key
        self.global_limit = global_limit
        self.retry_after_s = retry_after_s
        self._held: Counter[str] = Counter()
        self._total = 0

    def active(self, key_id: str | None = None) -> int:
        """Slots held by ``key_id``, or in total."""
        return self._total if key_id is None else self._held[key_id]

    def acquire(self, key_id: str) -> None:
        """Take a slot now or raise ``LimitExceeded``. Pair with ``release``."""
        # Per key first: a key over its own cap should hear 429 (its fault), not 503.
        if self._held[key_id] >= self.per_key:
            raise LimitExceeded(
                resource=self.resource,
                scope="key",
                limit=self.per_key,
                retry_after_s=self.retry_after_s,
            )
        if self._total >= self.global_limit:
            raise LimitExceeded(
                resource=self.resource,
                scope="global",
                limit=self.global_limit,
                retry_after_s=self.retry_after_s,
            )
        self._held[key_id] += 1
        self._total += 1

    def release(self, key_id: str) -> None:
        if self._held[key_id] <= 0:
            raise RuntimeError(f"{self.resource}: release without acquire for {key_id}")
        self._held[key_id] -= 1
        if not self._held[key_id]:
            del self._held[key_id]
        self._total -= 1

    @asynccontextmanager
    async def slot(self, key_id: str) -> AsyncIterator[None]:
        """Hold a slot for the body of an ``async with`` (released on any exit, cancellation
        included). Raises ``LimitExceeded`` on entry when none is free."""
        self.acquire(key_id)
        try:
            yield
        finally:
            self.release(key_id)


async def admit_job(
    store: JobStore,
    job: Job,
    *,
    max_per_key: int,
    max_global: int,
    retry_after_s: int,
) -> Job:
    """Submit ``job`` if its owner and the service are under their unfinished-job caps.

    The store checks and enqueues in one atomic step (one Lua script with Redis), so two
    concurrent uploads cannot both squeeze under a cap. Raises ``LimitExceeded``.
    """
    try:
        await store.submit(job, max_active_per_owner=max_per_key, max_active_total=max_global)
    except JobQuotaExceeded as exc:
        raise LimitExceeded(
            resource="jobs", scope=exc.scope, limit=exc.limit, retry_after_s=retry_after_s
        ) from None
    return job
