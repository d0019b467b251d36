"""When deliver jobs run: each destination's takers (its slots of concurrent deliver jobs), how
long a job may wait for a full batch and run, and the supervisor's tick, which wakes every
destination whose work has come due (after a backoff, a pause, or a dead job's lease) and frees
the slots of deliver jobs that died.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import redis

from syncworker.bootstrap import DestinationRuntime, Runtime
from syncworker.config import Settings
from syncworker.destinations import Destination
from syncworker.queue.enqueue import queue
from syncworker.queue.workers import heartbeat_stale_s, job_alive, job_gone
from syncworker.store import scripts
from syncworker.store.keys import DELIVER, INFLIGHT, PAUSE, PENDING, TAKERS, taken_key

log = logging.getLogger(__name__)

BATCH_API_CALLS = 3  # requests one batch of a batch API may make (a lookup, a write, a retry)
DELIVER_MARGIN_S = 30  # s: recording a batch's outcomes and re-queueing after the budget


def batch_bound_s(settings: Settings, dest: DestinationRuntime | None = None) -> float:
    """Longest a deliver job may take over one batch: every call of it waiting at two rate
    limiters (an endpoint's and the destination's) and then for the HTTP timeout."""
    calls = BATCH_API_CALLS
    if dest is not None and dest.cls.sync is Destination.sync:  # the per-contact fallback
        calls = max(calls, dest.batch_size)
    return calls * (2 * settings.rate_wait_cap_s + settings.http_timeout_s)


def deliver_timeout(settings: Settings, dest: DestinationRuntime | None = None) -> int:
    """Seconds RQ lets a deliver job run: its budget, then the batch it started just before the
    budget ran out, whose every call may wait at two rate limiters (an endpoint's and the
    destination's) and then for the HTTP timeout; and a margin for recording the outcomes."""
    return math.ceil(settings.job_budget_s + batch_bound_s(settings, dest) + DELIVER_MARGIN_S)


def ensure_taker(runtime: Runtime, destination: str) -> bool:
    """Queue a deliver job for ``destination`` unless enough are already queued or running.

    Each job holds a slot among the destination's takers (``TAKERS``): the first whenever none
    is held, another (up to the destination's ``concurrency``) only while a full batch is due
    for each job already holding one. The slot names its job and is set in the same transaction
    as the job is queued, so no crash leaves a slot without a job; ``tick`` frees a slot whose
    job has died. The key's TTL is only a backstop.
    """
    conn, key = runtime.conn, TAKERS + destination
    dest = runtime.destinations.get(destination)
    limit = dest.concurrency if dest is not None else 1
    size = dest.batch_size if dest is not None else 1

    def wanted(holders: int, due: Callable[[], int]) -> bool:
        # another taker only while each one there is has a full batch of its own to take
        return holders == 0 or (holders < limit and due() >= (holders + 1) * size)

    # first without a transaction, in one round trip: most calls (every ingest batch, every
    # full batch a taker takes) find the slots taken and stop here
    with conn.pipeline(transaction=False) as peek:
        peek.hlen(key)
        peek.zcount(PENDING + destination, "-inf", time.time())
        seen_holders, seen_due = peek.execute()
    if not wanted(int(seen_holders), lambda: int(seen_due)):
        return False
    timeout = deliver_timeout(runtime.settings, dest)
    job_id = uuid.uuid4().hex
    with conn.pipeline(transaction=True) as pipe:
        try:
            pipe.watch(key)  # type: ignore[no-untyped-call]  # redis-py's, untyped
            holders = int(pipe.hlen(key))
            if not wanted(
                holders, lambda: int(pipe.zcount(PENDING + destination, "-inf", time.time()))
            ):
                return False
            pipe.multi()
            pipe.hset(key, job_id, str(time.time()))
            pipe.pexpire(key, (2 * timeout + 60) * 1000)
            queue(conn, DELIVER).enqueue_call(
                "syncworker.jobs.deliver",
                args=(destination, job_id),
                job_id=job_id,
                description=f"deliver {destination}",
                result_ttl=0,
                failure_ttl=7 * 86400,
                timeout=timeout,
                pipeline=pipe,
            )
            pipe.execute()
        except redis.WatchError:
            return False  # another process took a slot meanwhile
    return True


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def request_may_be_out(runtime: Runtime, destination: str, job_id: str) -> float:
    """Seconds for which a request of taker ``job_id`` may still be unanswered: its batch's ids
    still in flight under its lease, taken less than ``batch_bound_s`` ago (0 if none)."""
    conn = runtime.conn
    taken = conn.hgetall(taken_key(destination, job_id))
    if not taken:
        return 0.0
    ids = [_text(i) for i in taken]
    scores = conn.zmscore(INFLIGHT + destination, ids)
    leases = [float(v) for v in taken.values()]
    leases = [
        lease
        for lease, score in zip(leases, scores, strict=True)
        if score is not None and abs(score - lease) < 0.01
    ]
    if not leases:
        return 0.0
    taken_at = min(leases) - runtime.settings.lease_s
    bound = batch_bound_s(runtime.settings, runtime.destinations.get(destination))
    return max(0.0, taken_at + bound - time.time())


def busy(runtime: Runtime, job_id: str) -> bool:
    """Whether deliver job ``job_id`` may still be waiting for a request's answer."""
    return any(request_may_be_out(runtime, name, job_id) > 0 for name in runtime.destinations)


def release_dead_takers(runtime: Runtime, destination: str) -> bool:
    """Free the slot of each taker of ``destination`` whose job is no longer queued or running
    on a live worker (a killed work-horse or worker, a slot from an older release), and make the
    batch it had in flight due now rather than when its lease ends.

    A worker whose process is known to be gone, or whose job has ended, is dead at once. One
    that only looks dead because its heartbeat is late (a starved or stopped process, a worker on
    another host) may still be waiting for the answer to its request: its slot and batch are
    kept until that request must have ended (``batch_bound_s`` after the batch was taken), so
    that a destination never gets a second request alongside one still unanswered.
    """
    conn, key = runtime.conn, TAKERS + destination
    freed = False
    for raw in conn.hkeys(key):
        job_id = _text(raw)
        if job_alive(conn, job_id, heartbeat_stale_s(runtime.settings)):
            continue
        if not job_gone(conn, job_id):  # silent, not known to be gone
            left = request_may_be_out(runtime, destination, job_id)
            if left > 0:
                log.warning(
                    "deliver job silent, its request may still be out: slot kept "
                    "dest=%s job=%s for_s=%.0f",
                    destination,
                    job_id,
                    left,
                )
                continue
        reclaimed = int(
            scripts.Reclaim(conn)(
                key, INFLIGHT + destination, taken_key(destination, job_id), job_id
            )
        )
        if reclaimed < 0:
            continue
        freed = True
        log.warning(
            "slot of a dead deliver job released dest=%s job=%s in_flight_reclaimed=%d",
            destination,
            job_id,
            reclaimed,
        )
    return freed


def wake(runtime: Runtime, destinations: Iterable[str]) -> None:
    """Queue a deliver job for each destination that has new work (unless one is queued)."""
    for name in sorted(destinations):
        ensure_taker(runtime, name)


def paused_for(conn: redis.Redis, destination: str) -> float:
    """Seconds the destination stays paused (0 when it is not)."""
    ms = conn.pttl(PAUSE + destination)
    return max(0.0, int(ms) / 1000) if isinstance(ms, int) and ms > 0 else 0.0


def has_due(conn: redis.Redis, destination: str, now: float | None = None) -> bool:
    now = time.time() if now is None else now
    with conn.pipeline(transaction=False) as pipe:
        pipe.zrangebyscore(PENDING + destination, "-inf", now, start=0, num=1)
        pipe.zrangebyscore(INFLIGHT + destination, "-inf", now, start=0, num=1)
        due, expired = pipe.execute()
    return bool(due or expired)


def tick(runtime: Runtime) -> list[str]:
    """Queue a deliver job for each destination with due work, freeing the slots of takers that
    died first; return the destinations scheduled."""
    scheduled = []
    conn = runtime.conn
    for name in runtime.destinations:
        if paused_for(conn, name):
            continue
        due = has_due(conn, name)
        if due or conn.zcard(INFLIGHT + name):
            # a batch leased by a dead job is due now, even with nothing else to do
            due = release_dead_takers(runtime, name) or due
        if due and ensure_taker(runtime, name):
            scheduled.append(name)
    return scheduled
