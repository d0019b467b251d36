"""Intake's enqueue: ordinary RQ jobs, group commit across threads, errors reach every request."""

from __future__ import annotations

import threading
import zlib
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
import redis
from rq import Queue
from rq.serializers import JSONSerializer

from syncworker.queueing import INGEST, STATS, Enqueuer, connect
from syncworker.redis_server import RedisServer, free_port
from syncworker.workers import QuickStopSimpleWorker


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


def test_jobs_are_ordinary_rq_jobs(
    redis_conn: redis.Redis, use_runtime: Any, make_settings: Any
) -> None:
    use_runtime(make_settings())
    job_id = Enqueuer(redis_conn).ingest(payload(1), "ingest source=t events=0", {"in:t:x": 1})
    queue = Queue(INGEST, connection=redis_conn, serializer=JSONSerializer)
    job = queue.fetch_job(job_id or "")
    assert job is not None and list(job.args) == [payload(1)]
    assert job.description == "ingest source=t events=0"
    assert job.retries_left == 3 and job.result_ttl == 0
    assert redis_conn.ttl(f"rq:job:{job_id}") == -1
    worker = QuickStopSimpleWorker([queue], connection=redis_conn, serializer=JSONSerializer)
    worker.work(burst=True, logging_level="WARNING")
    assert queue.count == 0 and queue.failed_job_registry.count == 0
    assert redis_conn.hget(STATS, "in:t:x") == b"1"


def test_concurrent_requests_share_writes_and_each_job_lands_once(
    redis_conn: redis.Redis, redis_url: str
) -> None:
    enqueuer = Enqueuer(connect(redis_url, timeout=5.0))
    start = threading.Barrier(16)
    ids: list[str] = []
    lock = threading.Lock()

    def request(i: int) -> None:
        start.wait()
        for j in range(25):
            job_id = enqueuer.ingest(payload(i * 100 + j), "ingest", {"in:t:bounce": 1})
            with lock:
                ids.append(job_id or "")

    # hold writes for a moment so that requests pile up behind the first writer
    redis_conn.execute_command("CLIENT", "PAUSE", "300", "WRITE")
    run_threads(16, request)
    queued = [i.decode() for i in redis_conn.lrange(f"rq:queue:{INGEST}", 0, -1)]
    assert sorted(queued) == sorted(ids) and len(set(ids)) == 400
    assert redis_conn.hget(STATS, "in:t:bounce") == b"400"
    assert enqueuer.transactions < 400, "requests waiting together were written together"
    queue = Queue(INGEST, connection=redis_conn, serializer=JSONSerializer)
    args = sorted(queue.fetch_job(i).args[0]["n"] for i in ids[:50])  # type: ignore[union-attr]
    assert len(set(args)) == 50


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
        assert conn.llen(f"rq:queue:{INGEST}") == 1
        conn.close()


def test_counters_alone_need_no_job(redis_conn: redis.Redis) -> None:
    assert Enqueuer(redis_conn).ingest(None, "x", {"in:t:Delivery": 2}) is None
    assert redis_conn.llen(f"rq:queue:{INGEST}") == 0
    assert redis_conn.hget(STATS, "in:t:Delivery") == b"2"


def test_a_failed_write_does_not_poison_the_next_one(redis_conn: redis.Redis) -> None:
    enqueuer = Enqueuer(redis_conn)
    with pytest.raises(TypeError):
        enqueuer.ingest({"x": {1, 2}}, "x", {})  # not JSON: the write fails before Redis
    assert enqueuer.ingest(payload(1), "x", {}) is not None
    assert redis_conn.llen(f"rq:queue:{INGEST}") == 1


def test_the_job_hash_is_the_one_rq_writes(redis_conn: redis.Redis) -> None:
    """The enqueue fast path takes its fixed fields from RQ's own Job.to_dict(); the rest must
    decode the same: a job written by either path is the same job to a worker."""
    from rq.job import Job, JobStatus

    from syncworker.queueing import INGEST_FUNC, JOB_OPTIONS

    enqueuer = Enqueuer(redis_conn)
    job_id = enqueuer.ingest(payload(7), "ingest x", {}) or ""
    queue = Queue(INGEST, connection=redis_conn, serializer=JSONSerializer)
    reference = queue.create_job(
        INGEST_FUNC, args=(payload(7),), description="ingest x", status=JobStatus.QUEUED,
        **JOB_OPTIONS,
    )  # fmt: skip
    expected = reference.to_dict()
    stored = {k.decode(): v for k, v in redis_conn.hgetall(Job.key_for(job_id)).items()}
    assert set(stored) == set(expected) | {"enqueued_at"}
    for name in set(expected) - {"created_at", "data"}:
        value = expected[name]  # encoded as redis-py encodes it: a str (enum) by its value
        if isinstance(value, str):
            value = str.encode(value)
        elif not isinstance(value, bytes):
            value = str(value).encode()
        assert stored[name] == value, name
    ours = Job.fetch(job_id, connection=redis_conn, serializer=JSONSerializer)
    assert (ours.func_name, list(ours.args), ours.kwargs) == (INGEST_FUNC, [payload(7)], {})
    assert ours.get_status() == JobStatus.QUEUED and ours.origin == INGEST


def test_large_job_data_is_compressed_and_small_is_plain(redis_conn: redis.Redis) -> None:
    from rq.job import Job

    from syncworker.queueing import COMPRESS_FROM

    enqueuer = Enqueuer(redis_conn)
    small = enqueuer.ingest(payload(1), "small", {}) or ""
    big_payload = {**payload(2), "events": [{"reason": "x" * 100, "n": i} for i in range(200)]}
    big = enqueuer.ingest(big_payload, "big", {}) or ""
    small_raw = redis_conn.hget(Job.key_for(small), "data") or b""
    big_raw = redis_conn.hget(Job.key_for(big), "data") or b""
    assert small_raw.startswith(b'["syncworker.jobs.ingest"')
    assert len(orjson.dumps(big_payload)) > COMPRESS_FROM
    assert zlib.decompress(big_raw).startswith(b'["syncworker.jobs.ingest"')
    assert len(big_raw) < len(orjson.dumps(big_payload)) // 4
    for job_id, expected in ((small, payload(1)), (big, big_payload)):
        job = Job.fetch(job_id, connection=redis_conn, serializer=JSONSerializer)
        assert list(job.args) == [expected]


def test_a_dropped_connection_is_replaced_at_once(redis_url: str) -> None:
    conn = connect(redis_url, timeout=0.5)
    enqueuer = Enqueuer(conn)
    assert enqueuer.ingest(payload(1), "x", {}) is not None
    # the server drops every client (as a restart or an idle timeout would): the next write
    # reconnects at once instead of failing the request
    admin = redis.Redis.from_url(redis_url)
    admin.client_kill_filter(_type="normal", skipme=True)
    assert enqueuer.ingest(payload(2), "x", {}) is not None
    assert admin.llen(f"rq:queue:{INGEST}") == 2
    admin.close()


def test_the_script_is_loaded_when_redis_has_lost_it(redis_conn: redis.Redis) -> None:
    enqueuer = Enqueuer(redis_conn)
    assert enqueuer.ingest(payload(1), "x", {}) is not None
    redis_conn.script_flush()
    assert enqueuer.ingest(payload(2), "x", {}) is not None
    assert redis_conn.llen(f"rq:queue:{INGEST}") == 2


def test_job_times_are_written_as_rq_writes_them(redis_conn: redis.Redis) -> None:
    from rq.job import Job
    from rq.utils import utcformat, utcparse

    before = utcformat(datetime.now(UTC))
    job_id = Enqueuer(redis_conn).ingest(payload(1), "x", {}) or ""
    after = utcformat(datetime.now(UTC))
    stored = redis_conn.hget(Job.key_for(job_id), "created_at")
    assert stored is not None
    assert before <= stored.decode() <= after  # same format, so text order is time order
    assert utcformat(utcparse(stored.decode())) == stored.decode()
    job = Job.fetch(job_id, connection=redis_conn, serializer=JSONSerializer)
    assert job.created_at == job.enqueued_at
