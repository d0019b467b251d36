"""Redis connections, the two RQ queues, and the one-round-trip enqueue of an ingest job.

Jobs carry JSON only (RQ's JSON serializer) and descriptions without addresses, because RQ logs
job descriptions at INFO.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from rq import Queue
from rq import Retry as JobRetry
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from rq.utils import now, utcformat

INGEST = "syncworker-ingest"
DELIVER = "syncworker-deliver"
QUEUES = (INGEST, DELIVER)
STATS = "sw:stats"
QUARANTINE = "sw:quarantine"  # verified requests whose events failed validation

# Writes a batch of RQ jobs atomically in one command: each job's hash (as ``Job.to_dict()``
# gives it), its id pushed on the queue, the queue registered, the intake counters bumped.
ENQUEUE_LUA = """
local queue, queues, stats = ARGV[1], ARGV[2], ARGV[3]
local i = 5
for _ = 1, tonumber(ARGV[4]) do
  redis.call('HINCRBY', stats, ARGV[i], ARGV[i + 1])
  i = i + 2
end
local pushed = 0
while i <= #ARGV do
  local key, id, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  i = i + 3
  redis.call('HSET', key, unpack(ARGV, i, i + 2 * n - 1))
  i = i + 2 * n
  redis.call('RPUSH', queue, id)
  pushed = pushed + 1
end
if pushed > 0 then redis.call('SADD', queues, queue) end
return pushed
"""
INGEST_FUNC = "syncworker.jobs.ingest"
INGEST_TIMEOUT = 600  # seconds an ingest job may run (a 10 MB body is ~30k events: ~2 s)
JOB_OPTIONS: dict[str, Any] = {
    "timeout": INGEST_TIMEOUT,
    "result_ttl": 0,  # nobody reads the result; a kept one costs ~6.5 KB
    "failure_ttl": 30 * 86400,  # a failed ingest stays inspectable and requeueable
    "retry": JobRetry(max=3, interval=[5, 30, 120]),  # also how an abandoned job comes back
}
VARYING = frozenset({"created_at", "enqueued_at", "description", "data"})


def connect(url: str, timeout: float = 1.0) -> redis.Redis:
    """A client that fails fast: no retry loop, so intake can answer 503 within ~``timeout``."""
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=timeout,
        socket_timeout=max(timeout, 0.1),
        retry=Retry(NoBackoff(), 0),
        retry_on_timeout=False,
        health_check_interval=30,
    )


def connect_worker(url: str) -> redis.Redis:
    """A client for workers: RQ blocks on BLMOVE, so no short read timeout here."""
    return redis.Redis.from_url(url, socket_connect_timeout=5, health_check_interval=30)


def queue(conn: redis.Redis, name: str) -> Queue:
    return Queue(name, connection=conn, serializer=JSONSerializer)


@dataclass(eq=False)
class _Slot:
    """One request's job (id and hash fields, flat) and counters, waiting to be written."""

    job: tuple[str, list[Any]] | None
    counters: Mapping[str, int]
    woken: threading.Event = field(default_factory=threading.Event)
    lead: bool = False  # woken to write the next batch, not because its own was written
    error: BaseException | None = None


class Enqueuer:
    """Writes each accepted request's ingest job, and its counters, to Redis before the 200.

    ``Queue.enqueue`` sends about eight commands per job and runs RQ's dependency machinery; at
    one job per webhook request that, and the round trip, are most of intake's cost. An ingest
    job has no dependencies and no TTL, so this writes the hash RQ's ``Job.to_dict()`` gives and
    pushes the id in one atomic script call. Concurrent requests of one process (threaded
    gunicorn workers) share that round trip: the first to arrive writes every waiting request's
    job in one call (group commit); each request returns once the call holding its job has
    succeeded, and raises its error otherwise. The worker sees ordinary RQ jobs.
    """

    def __init__(self, conn: redis.Redis, max_batch: int = 256) -> None:
        self.conn = conn
        self.queue = queue(conn, INGEST)
        self.max_batch = max_batch
        self._script = conn.register_script(ENQUEUE_LUA)
        self._lock = threading.Lock()
        self._waiting: list[_Slot] = []
        self._writing = False
        self.transactions = 0  # round trips made, for tests and benchmarks
        # Every ingest job is alike but for its id, times, description and arguments: take the
        # other fields from RQ's own Job.to_dict() once, so the hash is RQ's, not a copy of it
        probe = self.queue.create_job(
            INGEST_FUNC, args=(None,), description="", status=JobStatus.QUEUED, **JOB_OPTIONS
        )
        probe.enqueued_at = now()
        self._fixed = [
            x for item in probe.to_dict().items() if item[0] not in VARYING for x in item
        ]

    def job(self, payload: dict[str, Any], description: str) -> tuple[str, list[Any]]:
        """A new ingest job: its id and its hash fields, as ``Job.to_dict()`` would give them."""
        stamp = utcformat(now())
        try:
            encoded = orjson.dumps([INGEST_FUNC, None, [payload], {}])
        except TypeError:  # an integer beyond 64 bits: the stdlib encoder takes any
            encoded = json.dumps([INGEST_FUNC, None, [payload], {}]).encode()
        fields: list[Any] = ["created_at", stamp, "enqueued_at", stamp]
        # level 1: a payload is compressed once and read once, speed over ratio
        fields += ["description", description, "data", zlib.compress(encoded, 1), *self._fixed]
        return str(uuid.uuid4()), fields

    def ingest(
        self,
        payload: dict[str, Any] | None,
        description: str,
        counters: Mapping[str, int],
    ) -> str | None:
        job = self.job(payload, description) if payload is not None else None
        self._commit(_Slot(job, counters))
        return job[0] if job is not None else None

    def _commit(self, slot: _Slot) -> None:
        with self._lock:
            self._waiting.append(slot)
            follow = self._writing
            self._writing = True
        if follow:
            slot.woken.wait()  # woken once: its batch was written, or it is to write the next
            if not slot.lead:
                if slot.error is not None:
                    # a follower raises its own instance: tracebacks are not shared by threads
                    raise _copy(slot.error) from slot.error
                return
        with self._lock:
            batch = self._waiting[: self.max_batch]
            del self._waiting[: self.max_batch]
        try:
            self._write(batch)
        except BaseException as exc:
            for other in batch:
                other.error = exc
        with self._lock:
            successor = self._waiting[0] if self._waiting else None
            self._writing = successor is not None
        for other in batch:
            if other is not slot:
                other.woken.set()
        if successor is not None:
            successor.lead = True
            successor.woken.set()
        if slot.error is not None:
            raise slot.error

    def _write(self, batch: list[_Slot]) -> None:
        totals: dict[str, int] = {}
        jobs: list[Any] = []
        for slot in batch:
            for name, amount in slot.counters.items():
                totals[name] = totals.get(name, 0) + amount
            if slot.job is not None:
                job_id, fields = slot.job
                jobs += [Job.key_for(job_id), job_id, len(fields) // 2, *fields]
        counters = [x for item in totals.items() for x in item]
        args = [self.queue.key, self.queue.redis_queues_keys, STATS, len(totals), *counters, *jobs]
        self._script(args=args)
        self.transactions += 1


def _copy(exc: BaseException) -> BaseException:
    try:
        return type(exc)(*exc.args)
    except Exception:  # an exception type with an unusual constructor
        return redis.ConnectionError(f"queue write failed: {type(exc).__name__}")


def store_quarantine(
    conn: redis.Redis, source: str, items: list[dict[str, Any]], limit: int
) -> None:
    """Keep what a verified request carried but could not be used, newest first, capped."""
    now = time.time()
    with conn.pipeline(transaction=True) as pipe:
        for item in items:
            pipe.lpush(QUARANTINE, orjson.dumps({"source": source, "at": now, **item}))
        pipe.ltrim(QUARANTINE, 0, max(0, limit - 1))
        pipe.hincrby(STATS, "quarantined", len(items))
        pipe.execute()
