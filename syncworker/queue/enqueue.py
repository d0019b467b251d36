"""The two RQ queues, and the one-round-trip write of accepted requests to the ingest inbox (the
group commit: requests arriving together go in one atomic call).

Jobs carry JSON only (RQ's JSON serializer) and descriptions without addresses, because RQ logs
job descriptions at INFO.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid
import zlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import hiredis
import redis
import redis.connection
from rq import Queue
from rq import Retry as JobRetry
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from rq.utils import now

from syncworker import codec
from syncworker.store import scripts
from syncworker.store.encoding import to_json
from syncworker.store.keys import (
    INBOX,
    INBOX_GROUP,
    INBOX_QUEUED,
    INGEST,
    STATS,
)

if TYPE_CHECKING:
    from syncworker.events import HygieneEvent
    from syncworker.intake.contract import Quarantined

INBOX_QUEUED_TTL_S = 3600  # a backstop only: the supervisor frees the flag of a job that is gone

INGEST_FUNC = "syncworker.jobs.ingest"  # one request's payload (jobs queued by older releases)
DRAIN_FUNC = "syncworker.jobs.drain_inbox"  # what ingest jobs run now: the inbox, in batches
DRAIN_DESCRIPTION = "ingest inbox"
INGEST_TIMEOUT = 600  # seconds an ingest job may run (it stops reading after its budget)
JOB_OPTIONS: dict[str, Any] = {
    "timeout": INGEST_TIMEOUT,
    "result_ttl": 0,  # nobody reads the result; a kept one costs ~6.5 KB
    "failure_ttl": 30 * 86400,  # a failed ingest stays inspectable and requeueable
    "retry": JobRetry(max=3, interval=[5, 30, 120]),  # also how an abandoned job comes back
}
VARYING = frozenset({"created_at", "enqueued_at"})
COMPRESS_FROM = 4096  # bytes of payload: below this, compressing costs more than it saves


def encode_payload(payload: dict[str, Any]) -> bytes:
    """A request's payload as an inbox entry holds it: JSON, zlib'd (level 1) when large."""
    encoded = to_json(payload)
    return encoded if len(encoded) < COMPRESS_FROM else zlib.compress(encoded, 1)


def ensure_drain(conn: redis.Redis) -> bool:
    """Queue an ingest job unless one is queued and not yet started; True if this queued one."""
    job_id = uuid.uuid4().hex
    with conn.pipeline(transaction=True) as pipe:
        try:
            pipe.watch(INBOX_QUEUED)  # type: ignore[no-untyped-call]  # redis-py's, untyped
            if pipe.exists(INBOX_QUEUED):
                return False
            pipe.multi()
            pipe.set(INBOX_QUEUED, job_id, ex=INBOX_QUEUED_TTL_S)
            queue(conn, INGEST).enqueue_call(
                DRAIN_FUNC,
                job_id=job_id,
                description=DRAIN_DESCRIPTION,
                pipeline=pipe,
                **JOB_OPTIONS,
            )
            pipe.execute()
        except redis.WatchError:
            return False
    return True


def queue(conn: redis.Redis, name: str) -> Queue:
    return Queue(name, connection=conn, serializer=JSONSerializer)


class _Slot:
    """One request's job (id and fields that vary) and counters, waiting to be written.

    ``woken`` is a lock held from the start, and released once to wake the request's thread:
    the cheapest one-shot signal between threads (an Event adds a Condition and its own lock).
    """

    __slots__ = ("job", "counters", "woken", "lead", "error")

    def __init__(self, job: tuple[str, list[Any]] | None, counters: Mapping[str, int]) -> None:
        self.job = job
        self.counters = counters
        self.woken: threading.Lock | None = None  # made by a request that has to wait
        self.lead = False  # woken to write the next batch, not because its own was written
        self.error: BaseException | None = None

    def wake(self) -> None:
        if self.woken is not None:
            self.woken.release()


class Enqueuer:
    """Writes each accepted request's payload to the ingest inbox, and its counters, before the
    200.

    A request's payload becomes one entry of the inbox stream (syncworker/inbox.py), and an ingest
    job is queued with it unless one is already waiting to start: so a burst of single-event
    requests costs one job, which applies their events in batches. ``Queue.enqueue`` would send
    about eight commands; this writes RQ's job hash (as ``Job.to_dict()`` gives it) and pushes
    the id in the same atomic script call as the entry. Concurrent requests of one process
    (threaded gunicorn workers) share that round trip: the first to arrive writes every waiting
    request's entry in one call (group commit); each request returns once the call holding its
    entry has succeeded, and raises its error otherwise.

    Only one thread writes at a time, so the writes go over one connection of their own, packed
    once and sent without redis-py's per-command pool and retry layers.
    """

    def __init__(self, conn: redis.Redis, max_batch: int = 256) -> None:
        self.conn = conn
        self.queue = queue(conn, INGEST)
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._waiting: list[_Slot] = []
        self._writing = False
        self.transactions = 0  # round trips made, for tests and benchmarks
        # Every ingest job is alike but for its id and times: take the other fields from RQ's
        # own Job.to_dict() once, so the hash is RQ's, not a copy of it
        probe = self.queue.create_job(
            DRAIN_FUNC, description=DRAIN_DESCRIPTION, status=JobStatus.QUEUED, **JOB_OPTIONS
        )
        probe.enqueued_at = now()
        fixed = [x for item in probe.to_dict().items() if item[0] not in VARYING for x in item]
        self.script = scripts.enqueue_source(fixed)
        self._sha = hashlib.sha1(self.script.encode()).hexdigest()
        self._head = scripts.enqueue_head(
            self._sha,
            queue_key=self.queue.key,
            queues_key=self.queue.redis_queues_keys,
            stats=STATS,
            job_prefix=Job.key_for(""),
            inbox=INBOX,
            group=INBOX_GROUP,
            queued_flag=INBOX_QUEUED,
            queued_ttl_s=INBOX_QUEUED_TTL_S,
        )
        self._connection: redis.connection.AbstractConnection | None = None
        self._pid = os.getpid()
        self._second = (-1, "")  # a second, and its text: one attribute, so threads see a pair

    def entry(self, payload: dict[str, Any], description: str) -> tuple[str, list[Any]]:
        """A new inbox entry: its reference, and its note and encoded payload."""
        return uuid.uuid4().hex, [description, encode_payload(payload)]

    def _stamp(self) -> str:
        """Now, as RQ's ``utcformat`` writes it (``%Y-%m-%dT%H:%M:%S.%fZ``)."""
        moment = time.time()
        second, text = self._second
        if second != int(moment):
            second = int(moment)
            text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = (second, text)
        return f"{text}.{int((moment - second) * 1e6):06d}Z"

    def ingest_events(
        self,
        source: str,
        esp: str,
        events: Sequence[HygieneEvent],
        quarantined: Sequence[Quarantined],
        counters: Mapping[str, int],
        note: str = "",
    ) -> str | None:
        """Queue one request's (or one replay batch's) events and invalid items in the shape
        ``jobs.ingest`` reads; with neither, only the counters are written."""
        payload: dict[str, Any] | None = None
        if events or quarantined:
            payload = {
                "source": source,
                "esp": esp,
                "received_at": time.time(),
                "events": [codec.dump(event) for event in events],
                "quarantined": [{"reason": q.reason, "raw": q.raw} for q in quarantined],
            }
        description = f"ingest source={source} events={len(events)} quarantined={len(quarantined)}"
        return self.ingest(payload, f"{description} {note}" if note else description, counters)

    def ingest(
        self,
        payload: dict[str, Any] | None,
        description: str,
        counters: Mapping[str, int],
    ) -> str | None:
        entry = self.entry(payload, description) if payload is not None else None
        self._commit(_Slot(entry, counters))
        return entry[0] if entry is not None else None

    def _commit(self, slot: _Slot) -> None:
        with self._lock:
            self._waiting.append(slot)
            follow = self._writing
            self._writing = True
            if follow:
                slot.woken = threading.Lock()
                slot.woken.acquire()
        if follow:
            # woken once: its batch was written, or it is to write the next
            slot.woken.acquire()  # type: ignore[union-attr]
            if not slot.lead:
                if slot.error is not None:
                    # a follower raises its own instance: tracebacks are not shared by threads
                    raise _copy(slot.error) from slot.error
                return
        with self._lock:
            batch = self._waiting[: self.max_batch]
            del self._waiting[: self.max_batch]
        stranded: list[_Slot] = []
        try:
            self._write(batch)
        except BaseException as exc:
            for other in batch:
                other.error = exc
            if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
                # Redis is out of reach: the requests that queued up meanwhile have waited for
                # this write already, and another would wait a whole timeout more: they fail now
                with self._lock:
                    stranded, self._waiting = self._waiting, []
                for other in stranded:
                    other.error = exc
        with self._lock:
            successor = self._waiting[0] if self._waiting else None
            self._writing = successor is not None
        for other in stranded:
            other.wake()
        for other in batch:
            if other is not slot:
                other.wake()
        if successor is not None:
            successor.lead = True
            successor.wake()
        if slot.error is not None:
            raise slot.error

    def _write(self, batch: list[_Slot]) -> None:
        totals: dict[str, int] = {}
        args: list[Any] = []
        for slot in batch:
            for name, amount in slot.counters.items():
                totals[name] = totals.get(name, 0) + amount
            if slot.job is not None:
                args.append(slot.job[0])
                args += slot.job[1]
        counters = [x for item in totals.items() for x in item]
        job = [uuid.uuid4().hex, self._stamp()]  # queued only if no ingest job is waiting
        command = [*self._head, *job, len(totals), *counters, *args]
        self._call(command)
        self.transactions += 1

    def _call(self, command: list[Any]) -> Any:
        """Send one EVALSHA on the writer's connection; load the script if Redis lacks it.

        A connection that fails is dropped, and a request fails fast (503: its ESP retries)
        rather than wait on a retry loop; one that had gone stale while idle (a Redis restart,
        an idle timeout) is replaced once at once. Writing a job twice is harmless: the ledger
        dedupes events by key.
        """
        connection = self._connection
        if connection is None or self._pid != os.getpid():  # a forked child makes its own
            pool = self.conn.connection_pool
            connection = pool.connection_class(**pool.connection_kwargs)
            self._connection, self._pid = connection, os.getpid()
            fresh = True
        else:
            fresh = False
        packed = hiredis.pack_command(tuple(command))
        for attempt in range(3):
            try:
                connection.send_packed_command([packed])
                return connection.read_response()
            except redis.exceptions.NoScriptError:
                if attempt == 2:
                    raise
                connection.send_command("SCRIPT", "LOAD", self.script)
                connection.read_response()
            except redis.ConnectionError:
                connection.disconnect()
                if fresh or attempt == 2:
                    raise
                fresh = True  # the next attempt connects anew
            except BaseException:
                connection.disconnect()
                raise
        raise AssertionError("unreachable")


def _copy(exc: BaseException) -> BaseException:
    try:
        return type(exc)(*exc.args)
    except Exception:  # an exception type with an unusual constructor
        return redis.ConnectionError(f"queue write failed: {type(exc).__name__}")
