"""The ingest inbox: many requests' events per batch, entries of dead readers taken over, those of
live ones left alone, and the scheduler's tick queueing a reader for entries nobody reads."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis
from rq import Queue
from rq.serializers import JSONSerializer

from syncworker import codec
from syncworker.bootstrap import Runtime
from syncworker.config import Settings
from syncworker.events import HygieneEvent, Kind
from syncworker.queue import inbox, jobs
from syncworker.queue.enqueue import DRAIN_FUNC, Enqueuer
from syncworker.store.keys import INBOX, INBOX_QUEUED, INGEST, STATS
from tests.replies import text


def post(conn: redis.Redis, n: int, prefix: str = "e") -> None:
    enqueuer = Enqueuer(conn)
    for i in range(n):
        event = HygieneEvent(
            f"{prefix}-{i}", "t", "t", f"{prefix}{i}@example.com", Kind.UNSUBSCRIBE, 1.7e9 + i
        )
        enqueuer.ingest({"source": "t", "esp": "t", "events": [codec.dump(event)]}, "test", {})


def applied(conn: redis.Redis) -> int:
    return int(conn.hget(STATS, "ledger:suppressed") or 0)


def read_as(conn: redis.Redis, consumer: str, count: int) -> list[str]:
    """Read entries as an ingest job named ``consumer`` would, and leave them unacknowledged."""
    inbox.ensure_group(conn)
    return [entry_id for entry_id, _ in inbox.Reader(conn, consumer).read(count, None)]


def test_one_job_applies_many_requests_in_few_batches(
    redis_conn: redis.Redis, use_runtime: Callable[[Settings], Runtime], make_settings: Any
) -> None:
    use_runtime(make_settings())
    post(redis_conn, 450)
    totals = jobs.drain_inbox()
    assert totals == {"suppressed": 450}
    assert applied(redis_conn) == 450
    assert redis_conn.xlen(INBOX) == 0
    assert redis_conn.xpending(INBOX, inbox.GROUP)["pending"] == 0
    assert redis_conn.xinfo_consumers(INBOX, inbox.GROUP) == [], "the job left the group"


def test_entries_of_a_dead_reader_are_taken_over_and_applied_once(
    redis_conn: redis.Redis, use_runtime: Callable[[Settings], Runtime], make_settings: Any
) -> None:
    use_runtime(make_settings())
    post(redis_conn, 30)
    held = read_as(redis_conn, "a-job-that-died", 10)  # no such job: its reader is gone
    assert len(held) == 10
    jobs.drain_inbox()
    assert applied(redis_conn) == 30
    assert redis_conn.xlen(INBOX) == 0
    assert redis_conn.xpending(INBOX, inbox.GROUP)["pending"] == 0
    names = [c["name"] for c in redis_conn.xinfo_consumers(INBOX, inbox.GROUP)]
    assert b"a-job-that-died" not in names
    post(redis_conn, 30)  # the same events again (an ESP's redelivery): duplicates
    jobs.drain_inbox()
    assert applied(redis_conn) == 30
    assert int(redis_conn.hget(STATS, "ledger:duplicate") or 0) == 30


def test_entries_of_a_live_reader_are_left_to_it(
    redis_conn: redis.Redis, use_runtime: Callable[[Settings], Runtime], make_settings: Any
) -> None:
    use_runtime(make_settings())
    post(redis_conn, 20)
    # a queued job is alive: what it holds (it read before, and was requeued) stays its own
    job = Queue(INGEST, connection=redis_conn, serializer=JSONSerializer).enqueue(DRAIN_FUNC)
    held = read_as(redis_conn, job.id, 5)
    jobs.drain_inbox()
    assert applied(redis_conn) == 15
    rows = redis_conn.xpending_range(INBOX, inbox.GROUP, "-", "+", 100, consumername=job.id)
    assert sorted(text(r["message_id"]) for r in rows) == sorted(held)


def test_a_reader_holding_entries_is_never_removed(redis_conn: redis.Redis) -> None:
    post(redis_conn, 3)
    read_as(redis_conn, "reader", 2)
    inbox.Reader(redis_conn, "other").forget("reader")
    names = [c["name"] for c in redis_conn.xinfo_consumers(INBOX, inbox.GROUP)]
    assert names == [b"reader"]
    assert redis_conn.xpending(INBOX, inbox.GROUP)["pending"] == 2


def test_the_tick_queues_a_reader_for_entries_nobody_reads(redis_conn: redis.Redis) -> None:
    assert inbox.tick(redis_conn, None) is False  # nothing waits
    post(redis_conn, 2)
    queued = Queue(INGEST, connection=redis_conn, serializer=JSONSerializer)
    assert queued.count == 1
    assert inbox.tick(redis_conn, None) is False  # one is queued already
    # the queued job is lost (deleted by hand, say): its flag no longer holds anything up
    (job_id,) = queued.job_ids
    queued.remove(job_id)
    redis_conn.delete(f"rq:job:{job_id}")
    assert inbox.tick(redis_conn, None) is True
    assert queued.count == 1 and redis_conn.get(INBOX_QUEUED) == queued.job_ids[0].encode()


def test_acknowledging_a_batch_reads_the_next_in_the_same_round_trip(
    redis_conn: redis.Redis,
) -> None:
    """What ``done`` reads with the acknowledgement is pending under the reader, exactly as what
    ``read`` reads: a reader that dies after it holds the entries for the next to take over."""
    post(redis_conn, 25)
    inbox.ensure_group(redis_conn)
    reader = inbox.Reader(redis_conn, "reader-1")
    first = [entry_id for entry_id, _ in reader.read(10, None)]
    second = [entry_id for entry_id, _ in reader.done(first, then_read=10)]
    assert len(second) == 10 and not set(first) & set(second)
    assert redis_conn.xlen(INBOX) == 15  # the first ten acknowledged and deleted
    pending = redis_conn.xpending_range(INBOX, inbox.GROUP, "-", "+", 100, "reader-1")
    assert sorted(text(p["message_id"]) for p in pending) == sorted(second)
    last = reader.done(second, then_read=10)
    assert len(last) == 5
    assert reader.done([e for e, _ in last], then_read=10) == []  # none left: no wait
    assert redis_conn.xlen(INBOX) == 0
    assert redis_conn.xpending(INBOX, inbox.GROUP)["pending"] == 0
