"""Crashes with real processes: a worker SIGKILLed mid-ingest or mid-delivery loses nothing and
applies nothing twice in effect."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from rq import Queue
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from syncworker import codec
from syncworker.devkit.emulators.hubspot import HubSpotEmulator
from syncworker.events import HygieneEvent, Kind
from syncworker.queue.enqueue import Enqueuer
from syncworker.store.keys import DEAD, INFLIGHT, INGEST, PENDING
from tests import ledger_reads
from tests.processes import clean_env, queued_ingest_job, start_worker, wait_until

EMAILS = [f"crash{i:04d}@example.com" for i in range(300)]


@pytest.fixture()
def hubspot() -> Iterator[HubSpotEmulator]:
    with HubSpotEmulator(token="hs") as emulator:
        emulator.seed(*EMAILS)
        yield emulator


def worker_env(redis_url: str, hubspot: HubSpotEmulator) -> dict[str, str]:
    return clean_env(
        {
            "REDIS_URL": redis_url,
            "SYNCWORKER_DESTINATIONS": "hubspot",
            "SYNCWORKER_HUBSPOT_TOKEN": "hs",
            "SYNCWORKER_HUBSPOT_BASE_URL": hubspot.url,
            "SYNCWORKER_HUBSPOT_RATE": "1000/1",
            "SYNCWORKER_LEASE": "2",
        }
    )


def events(n: int) -> list[dict[str, object]]:
    return [
        codec.dump(
            HygieneEvent(
                f"crash-{i}",
                "t",
                "t",
                EMAILS[i % len(EMAILS)],
                Kind.UNSUBSCRIBE,
                1_700_000_000.0 + i,
            )
        )  # fmt: skip
        for i in range(n)
    ]


def test_worker_killed_mid_delivery_resumes_after_the_lease(
    redis_url: str, redis_conn: redis.Redis, hubspot: HubSpotEmulator, tmp_path: Path
) -> None:
    env = worker_env(redis_url, hubspot)
    Enqueuer(redis_conn).ingest({"source": "t", "events": events(300)}, "ingest test", {})
    hubspot.slow_next(1, 3.0)  # the first batch hangs in flight
    worker = start_worker(env, tmp_path / "worker1.log")
    wait_until(lambda: redis_conn.zcard(INFLIGHT + "hubspot") > 0, 30, "a batch in flight")
    worker.kill_tree()  # the supervisor, its RQ workers, their work-horses
    in_flight = redis_conn.zcard(INFLIGHT + "hubspot")
    assert in_flight == 100  # killed holding a batch

    restarted = start_worker(env, tmp_path / "worker2.log")
    try:
        wait_until(
            lambda: (
                hubspot.opted_out == set(EMAILS)
                and redis_conn.zcard(PENDING + "hubspot") == 0
                and redis_conn.zcard(INFLIGHT + "hubspot") == 0
            ),
            60,
            "delivery to resume after the lease",
            interval=0.1,
        )
    finally:
        restarted.stop()
    assert hubspot.contacts == set(EMAILS)
    assert redis_conn.llen(DEAD + "hubspot") == 0


def test_worker_killed_mid_ingest_job_is_retried_and_applied_once(
    redis_url: str, redis_conn: redis.Redis, hubspot: HubSpotEmulator, tmp_path: Path
) -> None:
    env = worker_env(redis_url, hubspot)
    Enqueuer(redis_conn).ingest({"source": "t", "events": events(60_000)}, "ingest test", {})
    job_id = queued_ingest_job(redis_conn)
    queue = Queue(INGEST, connection=redis_conn, serializer=JSONSerializer)
    started = StartedJobRegistry(queue=queue)
    worker = start_worker(env, tmp_path / "worker1.log")
    wait_until(lambda: job_id in started.get_job_ids(cleanup=False), 30, "the job to start")
    worker.kill_tree()  # the supervisor, its RQ workers, their work-horses
    # nobody finished it; RQ's own sweep finds it once its heartbeat has expired (the next
    # worker's supervisor sooner: test_recovery.py): run RQ's sweep now, as of 10 minutes later
    assert job_id in started.get_job_ids(cleanup=False)
    started.cleanup(timestamp=time.time() + 600)
    scheduled = queue.scheduled_job_registry
    assert job_id in scheduled.get_job_ids(), "an abandoned job with retries left is retried"

    restarted = start_worker(env, tmp_path / "worker2.log")
    try:
        # a finished job is deleted (result_ttl=0); a failed one would stay in the failed registry
        wait_until(
            lambda: not redis_conn.exists(f"rq:job:{job_id}"),
            120,
            "the retried ingest job to finish",
            interval=0.2,
        )
        wait_until(
            lambda: (
                hubspot.opted_out == set(EMAILS)
                and redis_conn.zcard(PENDING + "hubspot") == 0
                and redis_conn.zcard(INFLIGHT + "hubspot") == 0
            ),
            60,
            "the deliveries",
            interval=0.2,
        )
    finally:
        restarted.stop()
    assert queue.failed_job_registry.count == 0
    history = [e["key"] for e in ledger_reads.history(redis_conn, EMAILS[0])]
    # capped, newest first; and each event was applied once (a replayed one is a duplicate):
    assert history == [f"crash-{i}" for i in range(60_000 - 300, 0, -300)][:50]
    assert ledger_reads.applied(redis_conn) == 60_000
    assert redis_conn.llen(DEAD + "hubspot") == 0
