"""A snapshot of the whole system for ``syncworker status`` and ``GET /v1/stats``."""

from __future__ import annotations

import time
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


def health(conn: redis.Redis, names: list[str]) -> dict[str, dict[str, Any]]:
    """Per destination: its breaker (state, since when, failures in a row, next probe), its
    pause (reason, until when), how long its longest-waiting due contact has waited, and the
    time of its last answered call and of its last call with no answer (with that error)."""
    with conn.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hgetall(BREAKER + name)
            pipe.get(PAUSE + name)
            pipe.zrange(PENDING + name, 0, 0, withscores=True)
        replies = pipe.execute()
    now = time.time()
    out: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(names):
        raw, pause, oldest = replies[3 * i : 3 + 3 * i]
        seen = breaker.describe(raw)
        due = float(oldest[0][1]) if oldest else None
        out[name] = {
            "breaker": {k: seen[k] for k in ("state", "since", "failures", "next_probe_at")},
            "paused": orjson.loads(pause) if pause else None,
            # a contact becomes pending with its time and goes back with the time it is due
            "oldest_pending_s": round(max(0.0, now - due), 3) if due is not None else None,
            "last_success_at": seen["last_success_at"],
            "last_error_at": seen["last_error_at"],
            "last_error": seen["last_error"],
        }
    return out


def overview(rt: Runtime) -> dict[str, Any]:
    conn = rt.conn
    names = list(rt.destinations)
    failed = failed_job_keys()
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
        replies = pipe.execute()
    stats, ingest, deliver, quarantine, quarantine_bytes, inbox = replies[:6]
    failed_jobs = dict(zip(failed, replies[6 : 6 + len(failed)], strict=True))
    first = 6 + len(failed)
    destinations: dict[str, Any] = {}
    healths = health(conn, names)
    for i, name in enumerate(names):
        pending, inflight, dead, pause, dstats = replies[first + 5 * i : first + 5 + 5 * i]
        destinations[name] = {
            "pending": pending,
            "in_flight": inflight,
            "dead_letters": dead,
            "paused": orjson.loads(pause) if pause else None,
            "counters": {k.decode(): int(v) for k, v in sorted(dstats.items())},
            **healths[name],
        }
    return {
        "queues": {"ingest": ingest, "deliver": deliver},
        # accepted requests whose events are not yet applied (an ingest job may be reading them)
        "inbox": inbox,
        # jobs in RQ's failed-job registries (`rq requeue` retries them); the counters hold
        # jobs_failed:<queue>, every failed run, retried or not
        "failed_jobs": failed_jobs,
        "quarantined": quarantine,
        "quarantined_bytes": int(quarantine_bytes or 0),
        "counters": {k.decode(): int(v) for k, v in sorted(stats.items())},
        "destinations": destinations,
    }
