"""Intake's write: each accepted request an inbox entry, one ordinary RQ ingest job for many of
them, group commit across threads, errors reach every request."""

from __future__ import annotations

import threading
import zlib
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
import redis
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from syncworker.devkit.redis_server import RedisServer, free_port
from syncworker.queue import inbox
from syncworker.queue.enqueue import DRAIN_DESCRIPTION, DRAIN_FUNC, Enqueuer
from syncworker.queue.workers import QuickStopSimpleWorker
from syncworker.store.connections import connect
from syncworker.store.keys import INBOX, INBOX_QUEUED, INGEST, STATS
from tests.replies import fields, items, optional, stream_entries


def payload(i: int) -> dict[str, Any]:
    return {"source": "t", "events": [], "quarantined": [], "n": i}


def run_threads(n: int, target: Any) -> list[threading.Thread]:
    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
        assert not t.is_alive(), "a request thread never returned"
    return threads


def entries(conn: redis.Redis) -> list[tuple[str, dict[bytes, bytes]]]:
    return [(i.decode(), fields) for i, fields in stream_entries(conn, INBOX)]


def queued_jobs(conn: redis.Redis) -> list[str]:
    return [i.decode() for i in items(conn.lrange(f"rq:queue:{INGEST}", 0, -1))]


@pytest.mark.slow
def test_requests_are_inbox_entries_and_one_ordinary_rq_job_applies_them(
    redis_conn: redis.Redis, use_runtime: Any, make_settings: Any
) -> None:
    use_runtime(make_settings())
    enqueuer = Enqueuer(redis_conn)
    refs = [enqueuer.ingest(payload(i), f"ingest n={i}", {"in:t:x": 1}) for i in range(3)]
    stored = entries(redis_conn)
    assert [f[b"r"].decode() for _, f in stored] == refs
    assert [orjson.loads(f[b"p"]) for _, f in stored] == [payload(i) for i in range(3)]
    assert [f[b"d"] for _, f in stored] == [b"ingest n=0", b"ingest n=1", b"ingest n=2"]
    jobs = queued_jobs(redis_conn)
    assert len(jobs) == 1, "one ingest job for requests arriving while it waits to start"
    assert redis_conn.get(INBOX_QUEUED) == jobs[0].encode()
    job = Job.fetch(jobs[0], connection=redis_conn, serializer=JSONSerializer)
    assert (job.func_name, list(job.args), job.description) == (DRAIN_FUNC, [], DRAIN_DESCRIPTION)
    assert job.retries_left == 3 and job.result_ttl == 0
    assert redis_conn.ttl(f"rq:job:{jobs[0]}") == -1
    queue = Queue(INGEST, connection=redis_conn, serializer=JSONSerializer)
    worker = QuickStopSimpleWorker([queue], connection=redis_conn, serializer=JSONSerializer)
    worker.work(burst=True, logging_level="WARNING")
    assert queue.count == 0 and queue.failed_job_registry.count == 0
    assert redis_conn.xlen(INBOX) == 0, "applied entries are acknowledged and deleted"
    assert redis_conn.xpending(INBOX, inbox.GROUP)["pending"] == 0
    assert redis_conn.get(INBOX_QUEUED) is None
    assert redis_conn.hget(STATS, "in:t:x") == b"3"
    # the next request, with no job waiting, queues one again
    enqueuer.ingest(payload(9), "ingest", {})
    assert len(queued_jobs(redis_conn)) == 1


def test_concurrent_requests_share_writes_and_each_entry_lands_once(
    redis_conn: redis.Redis, redis_url: str
) -> None:
    enqueuer = Enqueuer(connect(redis_url, timeout=5.0))
    start = threading.Barrier(16)
    ids: list[str] = []
    lock = threading.Lock()

    def request(i: int) -> None:
        start.wait()
        for j in range(25):
            ref = enqueuer.ingest(payload(i * 100 + j), "ingest", {"in:t:bounce": 1})
            with lock:
                ids.append(ref or "")

    # hold writes for a moment so that requests pile up behind the first writer
    redis_conn.client_pause(300, all=False)  # CLIENT PAUSE 300 WRITE
    run_threads(16, request)
    stored = entries(redis_conn)
    assert sorted(f[b"r"].decode() for _, f in stored) == sorted(ids) and len(set(ids)) == 400
    assert sorted(orjson.loads(f[b"p"])["n"] for _, f in stored) == sorted(
        i * 100 + j for i in range(16) for j in range(25)
    )
    assert redis_conn.hget(STATS, "in:t:bounce") == b"400"
    assert enqueuer.transactions < 400, "requests waiting together were written together"
    assert len(queued_jobs(redis_conn)) == 1


def test_redis_down_fails_every_waiting_request_and_recovers() -> None:
    port = free_port()
    enqueuer = Enqueuer(connect(f"redis://127.0.0.1:{port}/0", timeout=0.5))
    errors: list[BaseException] = []
    lock = threading.Lock()

    def request(i: int) -> None:
        try:
            enqueuer.ingest(payload(i), "ingest", {"in:t:x": 1})
        except BaseException as exc:
            with lock:
                errors.append(exc)

    run_threads(12, request)
    assert len(errors) == 12
    assert all(isinstance(e, redis.ConnectionError) for e in errors)
    assert len({id(e) for e in errors}) == 12, "each request raises its own exception"
    with RedisServer(port=port) as server:
        assert enqueuer.ingest(payload(0), "ingest", {}) is not None
        conn = redis.Redis.from_url(server.url)
        assert conn.xlen(INBOX) == 1 and conn.llen(f"rq:queue:{INGEST}") == 1
        conn.close()


def test_counters_alone_need_no_entry_and_no_job(redis_conn: redis.Redis) -> None:
    assert Enqueuer(redis_conn).ingest(None, "x", {"in:t:Delivery": 2}) is None
    assert redis_conn.llen(f"rq:queue:{INGEST}") == 0 and redis_conn.xlen(INBOX) == 0
    assert redis_conn.hget(STATS, "in:t:Delivery") == b"2"


def test_a_failed_write_does_not_poison_the_next_one(redis_conn: redis.Redis) -> None:
    enqueuer = Enqueuer(redis_conn)
    with pytest.raises(TypeError):
        enqueuer.ingest({"x": {1, 2}}, "x", {})  # not JSON: the write fails before Redis
    assert enqueuer.ingest(payload(1), "x", {}) is not None
    assert redis_conn.xlen(INBOX) == 1 and redis_conn.llen(f"rq:queue:{INGEST}") == 1


def test_the_job_hash_is_the_one_rq_writes(redis_conn: redis.Redis) -> None:
    """The enqueue fast path takes its fixed fields from RQ's own Job.to_dict(); the rest must
    decode the same: a job written by either path is the same job to a worker."""
    from rq.job import JobStatus

    from syncworker.queue.enqueue import JOB_OPTIONS

    Enqueuer(redis_conn).ingest(payload(7), "ingest x", {})
    (job_id,) = queued_jobs(redis_conn)
    queue = Queue(INGEST, connection=redis_conn, serializer=JSONSerializer)
    reference = queue.create_job(
        DRAIN_FUNC, description=DRAIN_DESCRIPTION, status=JobStatus.QUEUED, **JOB_OPTIONS
    )
    expected = reference.to_dict()
    stored = {k.decode(): v for k, v in fields(redis_conn.hgetall(Job.key_for(job_id))).items()}
    assert set(stored) == set(expected) | {"enqueued_at"}
    for name in set(expected) - {"created_at"}:
        value = expected[name]  # encoded as redis-py encodes it: a str (enum) by its value
        if isinstance(value, str):
            value = str.encode(value)
        elif not isinstance(value, bytes):
            value = str(value).encode()
        assert stored[name] == value, name
    ours = Job.fetch(job_id, connection=redis_conn, serializer=JSONSerializer)
    assert (ours.func_name, list(ours.args), ours.kwargs) == (DRAIN_FUNC, [], {})
    assert ours.get_status() == JobStatus.QUEUED and ours.origin == INGEST


def test_a_large_payload_is_compressed_and_a_small_one_is_plain(redis_conn: redis.Redis) -> None:
    from syncworker.queue.enqueue import COMPRESS_FROM

    enqueuer = Enqueuer(redis_conn)
    enqueuer.ingest(payload(1), "small", {})
    big_payload = {**payload(2), "events": [{"reason": "x" * 100, "n": i} for i in range(200)]}
    enqueuer.ingest(big_payload, "big", {})
    (_, small), (_, big) = entries(redis_conn)
    assert small[b"p"].startswith(b'{"source"')
    assert len(orjson.dumps(big_payload)) > COMPRESS_FROM
    assert zlib.decompress(big[b"p"]).startswith(b'{"source"')
    assert len(big[b"p"]) < len(orjson.dumps(big_payload)) // 4
    assert [inbox.decode(small[b"p"]), inbox.decode(big[b"p"])] == [payload(1), big_payload]


def test_a_dropped_connection_is_replaced_at_once(redis_url: str) -> None:
    conn = connect(redis_url, timeout=0.5)
    enqueuer = Enqueuer(conn)
    assert enqueuer.ingest(payload(1), "x", {}) is not None
    # the server drops every client (as a restart or an idle timeout would): the next write
    # reconnects at once instead of failing the request
    admin = redis.Redis.from_url(redis_url)
    admin.client_kill_filter(_type="normal", skipme=True)
    assert enqueuer.ingest(payload(2), "x", {}) is not None
    assert admin.xlen(INBOX) == 2
    admin.close()


def test_the_script_is_loaded_when_redis_has_lost_it(redis_conn: redis.Redis) -> None:
    enqueuer = Enqueuer(redis_conn)
    assert enqueuer.ingest(payload(1), "x", {}) is not None
    redis_conn.script_flush()
    assert enqueuer.ingest(payload(2), "x", {}) is not None
    assert redis_conn.xlen(INBOX) == 2


def test_job_times_are_written_as_rq_writes_them(redis_conn: redis.Redis) -> None:
    from rq.utils import utcformat, utcparse

    before = utcformat(datetime.now(UTC))
    Enqueuer(redis_conn).ingest(payload(1), "x", {})
    after = utcformat(datetime.now(UTC))
    (job_id,) = queued_jobs(redis_conn)
    stored = optional(redis_conn.hget(Job.key_for(job_id), "created_at"))
    assert stored is not None
    assert before <= stored.decode() <= after  # same format, so text order is time order
    assert utcformat(utcparse(stored.decode())) == stored.decode()
    job = Job.fetch(job_id, connection=redis_conn, serializer=JSONSerializer)
    assert job.created_at == job.enqueued_at
