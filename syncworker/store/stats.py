"""The one reader of syncworker's counters and backlogs in Redis: a snapshot of the whole system,
read in one pipeline, that ``syncworker status``, ``GET /v1/stats`` (:func:`overview`) and
``/metrics`` (syncworker/web/metrics.py) are built on."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis
from rq.registry import FailedJobRegistry

from syncworker.bootstrap import Runtime
from syncworker.delivery import breaker
from syncworker.queue.workers import short_name
from syncworker.store.keys import (
    BREAKER,
    DEAD,
    DELIVER,
    DSTATS,
    INBOX,
    INFLIGHT,
    INGEST,
    PAUSE,
    PENDING,
    QUARANTINE,
    QUARANTINE_BYTES,
    STATS,
    rq_queue,
)


def failed_job_keys() -> dict[str, str]:
    """Queue short name -> the key of RQ's failed-job registry of that queue."""
    return {short_name(q): FailedJobRegistry(q, connection=None).key for q in (INGEST, DELIVER)}


@dataclass(frozen=True)
class DestinationStats:
    """One destination's backlog, counters, pause and breaker as read."""

    pending: int  # ids in its pending set
    in_flight: int  # ids a deliver job is sending
    dead_letters: int
    pause: Any  # why and until when it is paused (None: it is not)
    counters: dict[str, int]  # its delivery counters, as Redis returned them
    breaker: dict[str, Any]  # its breaker (syncworker.delivery.breaker.describe)
    oldest_due: float | None  # the due time of its longest-waiting pending id


@dataclass(frozen=True)
class Snapshot:
    """Everything the status, the stats API and the metrics show, read at ``at``."""

    at: float
    counters: dict[str, int]  # the STATS hash, as Redis returned it
    queues: dict[str, int]  # RQ queue short name -> jobs waiting
    inbox: int  # accepted requests whose events are not yet applied
    failed_jobs: dict[str, int]  # queue short name -> jobs in RQ's failed-job registry
    quarantined: int
    quarantined_bytes: int
    destinations: dict[str, DestinationStats]


def read(conn: redis.Redis, destinations: Sequence[str]) -> Snapshot:
    """Read every counter and backlog in one pipeline."""
    failed = failed_job_keys()
    names = list(destinations)
    with conn.pipeline(transaction=False) as pipe:
        pipe.hgetall(STATS)
        pipe.llen(rq_queue(INGEST))
        pipe.llen(rq_queue(DELIVER))
        pipe.llen(QUARANTINE)
        pipe.get(QUARANTINE_BYTES)
        pipe.xlen(INBOX)
        for key in failed.values():
            # scored by expiry (failure_ttl): what RQ's cleanup would still keep
            pipe.zcount(key, time.time(), "+inf")
        for name in names:
            pipe.zcard(PENDING + name)
            pipe.zcard(INFLIGHT + name)
            pipe.llen(DEAD + name)
            pipe.get(PAUSE + name)
            pipe.hgetall(DSTATS + name)
            pipe.hgetall(BREAKER + name)
            pipe.zrange(PENDING + name, 0, 0, withscores=True)
        replies = pipe.execute()
    at = time.time()
    stats, ingest, deliver, quarantine, quarantine_bytes, inbox = replies[:6]
    failed_jobs = dict(zip(failed, replies[6 : 6 + len(failed)], strict=True))
    first = 6 + len(failed)
    by_name: dict[str, DestinationStats] = {}
    for i, name in enumerate(names):
        pending, inflight, dead, pause, dstats, raw_breaker, oldest = replies[
            first + 7 * i : first + 7 + 7 * i
        ]
        by_name[name] = DestinationStats(
            pending=pending,
            in_flight=inflight,
            dead_letters=dead,
            pause=orjson.loads(pause) if pause else None,
            counters={k.decode(): int(v) for k, v in dstats.items()},
            breaker=breaker.describe(raw_breaker),
            oldest_due=float(oldest[0][1]) if oldest else None,
        )
    return Snapshot(
        at=at,
        counters={k.decode(): int(v) for k, v in stats.items()},
        queues={short_name(INGEST): ingest, short_name(DELIVER): deliver},
        inbox=inbox,
        failed_jobs=failed_jobs,
        quarantined=quarantine,
        quarantined_bytes=int(quarantine_bytes or 0),
        destinations=by_name,
    )


def health(snapshot: Snapshot, name: str) -> dict[str, Any]:
    """A destination's health: its breaker (state, since when, failures in a row, next probe),
    its pause (reason, until when), how long its longest-waiting due contact has waited, and the
    time of its last answered call and of its last call with no answer (with that error)."""
    dest = snapshot.destinations[name]
    seen = dest.breaker
    due = dest.oldest_due
    return {
        "breaker": {k: seen[k] for k in ("state", "since", "failures", "next_probe_at")},
        "paused": dest.pause,
        # a contact becomes pending with its time and goes back with the time it is due
        "oldest_pending_s": round(max(0.0, snapshot.at - due), 3) if due is not None else None,
        "last_success_at": seen["last_success_at"],
        "last_error_at": seen["last_error_at"],
        "last_error": seen["last_error"],
    }


def overview(rt: Runtime) -> dict[str, Any]:
    """The snapshot as ``syncworker status`` prints it and ``GET /v1/stats`` returns it."""
    snapshot = read(rt.conn, list(rt.destinations))
    destinations: dict[str, Any] = {}
    for name, dest in snapshot.destinations.items():
        destinations[name] = {
            "pending": dest.pending,
            "in_flight": dest.in_flight,
            "dead_letters": dest.dead_letters,
            "paused": dest.pause,
            "counters": dict(sorted(dest.counters.items())),
            **health(snapshot, name),
        }
    return {
        "queues": snapshot.queues,
        # accepted requests whose events are not yet applied (an ingest job may be reading them)
        "inbox": snapshot.inbox,
        # jobs in RQ's failed-job registries (`rq requeue` retries them); the counters hold
        # jobs_failed:<queue>, every failed run, retried or not
        "failed_jobs": snapshot.failed_jobs,
        "quarantined": snapshot.quarantined,
        "quarantined_bytes": snapshot.quarantined_bytes,
        "counters": dict(sorted(snapshot.counters.items())),
        "destinations": destinations,
    }
