"""RQ workers stop within seconds: in-process burst workers, and a real `syncworker worker` on
SIGTERM in the middle of a big ingest job, which then completes or is requeued, losing nothing."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import redis
from rq import Queue, Worker
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from syncworker import codec
from syncworker.events import HygieneEvent, Kind
from syncworker.queue.enqueue import Enqueuer
from syncworker.queue.workers import QuickStopSimpleWorker
from syncworker.store.keys import DELIVER, INBOX_QUEUED, INGEST
from tests import ledger_reads
from tests.processes import Process, clean_env, start_worker, wait_until
from tests.replies import optional

pytestmark = pytest.mark.slow  # real worker processes, stopped and restarted


def test_burst_workers_stop_at_once(redis_conn: redis.Redis) -> None:
    """RQ's command listener used to wait out its 60 s read after a stop now and then (about one
    stop in twenty): every one of many burst runs ends within seconds."""
    queue = Queue("stop-test", connection=redis_conn, serializer=JSONSerializer)
    slowest = 0.0
    for _ in range(150):
        job = queue.enqueue("os.getpid")
        started = time.monotonic()
        worker = QuickStopSimpleWorker([queue], connection=redis_conn, serializer=JSONSerializer)
        worker.work(burst=True, logging_level="WARNING")
        slowest = max(slowest, time.monotonic() - started)
        assert job.get_status() == "finished"
        assert slowest < 5, f"a burst worker took {slowest:.1f}s to stop"


def big_job(conn: redis.Redis, n: int, addresses: int = 500) -> str:
    events = [
        codec.dump(
            HygieneEvent(
                f"stop-{i}",
                "t",
                "t",
                f"stop{i % addresses}@example.com",
                Kind.UNSUBSCRIBE,
                1.7e9 + i,
            )
        )
        for i in range(n)
    ]
    assert Enqueuer(conn).ingest({"source": "t", "events": events}, "ingest test", {})
    job_id = optional(conn.get(INBOX_QUEUED))  # the ingest job queued to read the inbox
    assert job_id is not None
    return job_id.decode()


def applied(conn: redis.Redis) -> int:
    """Events of ``big_job`` the ledger has applied (each counted by the write that applies it)."""
    return ledger_reads.applied(conn)


def stop_mid_job(conn: redis.Redis, worker: Process, job_id: str) -> float:
    """SIGTERM the worker once the job has applied some events; seconds it took to exit."""
    started = StartedJobRegistry(queue=Queue(INGEST, connection=conn, serializer=JSONSerializer))
    wait_until(lambda: job_id in started.get_job_ids(cleanup=False), 30, "the job to start")
    wait_until(lambda: applied(conn) > 0, 30, "the job to apply events")
    began = time.monotonic()
    worker.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: not worker.alive(), 60, "the worker to exit", interval=0.02)
    return time.monotonic() - began


def test_sigterm_mid_job_lets_the_job_finish_and_stops(
    redis_url: str, redis_conn: redis.Redis, tmp_path: Path
) -> None:
    """Within its stop grace, the running ingest job completes: every event is applied."""
    env = clean_env({"REDIS_URL": redis_url, "SYNCWORKER_STOP_GRACE": "60"})
    job_id = big_job(redis_conn, 5_000)
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        took = stop_mid_job(redis_conn, worker, job_id)
        assert worker.proc.returncode == 0, worker.output()
    finally:
        worker.stop()
    assert applied(redis_conn) == 5_000
    assert not redis_conn.exists(f"rq:job:{job_id}")  # finished (result_ttl=0), not failed
    assert took < 15, f"stopping took {took:.1f}s"
    print(f"stop with a job to finish: {took:.2f}s")


def test_job_running_past_the_stop_grace_is_requeued_and_lands_after_a_restart(
    redis_url: str, redis_conn: redis.Redis, tmp_path: Path
) -> None:
    """A job longer than the stop grace is stopped and requeued through its retry; the worker
    exits within seconds, and the next worker applies every event (the ledger dedupes)."""
    env = clean_env({"REDIS_URL": redis_url, "SYNCWORKER_STOP_GRACE": "1"})
    job_id = big_job(redis_conn, 60_000, addresses=60_000)  # several seconds of work
    worker = start_worker(env, tmp_path / "worker1.log")
    try:
        took = stop_mid_job(redis_conn, worker, job_id)
        assert worker.proc.returncode == 0, worker.output()
    finally:
        worker.stop()
    assert took < 6, f"stopping took {took:.1f}s"
    print(f"stop past the grace: {took:.2f}s")
    assert applied(redis_conn) < 60_000, "the job was meant to be cut short"
    queue = Queue(INGEST, connection=redis_conn, serializer=JSONSerializer)
    assert job_id in queue.scheduled_job_registry.get_job_ids(), "requeued by its retry"

    restarted = start_worker(env, tmp_path / "worker2.log")
    try:
        wait_until(
            lambda: not redis_conn.exists(f"rq:job:{job_id}"),
            120,
            "the requeued job to finish",
            interval=0.2,
        )
    finally:
        restarted.stop()
    assert applied(redis_conn) == 60_000
    assert queue.failed_job_registry.count == 0


def test_the_worker_runs_several_deliver_processes_and_restarts_one_that_dies(
    redis_url: str, redis_conn: redis.Redis, tmp_path: Path
) -> None:
    """Each deliver process is an RQ worker of its own on the deliver queue; one that is killed
    is replaced while the others go on."""
    deliver = Queue(DELIVER, connection=redis_conn, serializer=JSONSerializer)

    def pids() -> set[int]:
        return {w.pid for w in Worker.all(queue=deliver) if w.pid}

    env = clean_env({"REDIS_URL": redis_url, "SYNCWORKER_DELIVER_WORKERS": "3"})
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        wait_until(lambda: len(pids()) == 3, 30, "three deliver workers")
        first = pids()
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        wait_until(
            lambda: len(pids() - {victim}) == 3 and first - {victim} <= pids(),
            30,
            "the killed deliver worker to be replaced",
        )
        assert worker.alive(), worker.output()
    finally:
        worker.stop()
