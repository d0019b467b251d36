"""Redis restarts under a running worker (persistence on): the worker recovers by itself and
every accepted job is applied; nothing accepted is lost."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from syncworker import codec
from syncworker.devkit.emulators.hubspot import HubSpotEmulator
from syncworker.devkit.redis_server import RedisServer
from syncworker.events import HygieneEvent, Kind
from syncworker.queue.enqueue import Enqueuer
from syncworker.store.keys import INFLIGHT, INGEST, PENDING
from tests.ledger_reads import reader
from tests.processes import clean_env, start_worker, wait_until

EMAILS = [f"restart{i:03d}@example.com" for i in range(200)]


class Restartable:
    """A persistent (AOF) redis-server on a fixed port that the test can stop and start again."""

    def __init__(self, data_dir: str) -> None:
        self.server = RedisServer(data_dir=data_dir, persist=True).start()

    @property
    def url(self) -> str:
        return self.server.url

    def restart(self) -> None:
        port, data_dir = self.server.port, self.server.data_dir
        self.server.stop()
        self.server = RedisServer(port=port, data_dir=data_dir, persist=True).start()


@pytest.fixture()
def persistent_redis(tmp_path: Path) -> Iterator[Restartable]:
    redis_ = Restartable(str(tmp_path / "redis"))
    yield redis_
    redis_.server.stop()


def job(start: int, n: int) -> dict[str, object]:
    events = [
        HygieneEvent(f"rs-{i}", "t", "t", EMAILS[i], Kind.UNSUBSCRIBE, 1_700_000_000.0 + i)
        for i in range(start, start + n)
    ]
    return {"source": "t", "events": [codec.dump(e) for e in events]}


def test_worker_survives_a_redis_restart(persistent_redis: Restartable, tmp_path: Path) -> None:
    with HubSpotEmulator(token="hs") as hubspot:
        hubspot.seed(*EMAILS)
        env = clean_env(
            {
                "REDIS_URL": persistent_redis.url,
                "SYNCWORKER_DESTINATIONS": "hubspot",
                "SYNCWORKER_HUBSPOT_TOKEN": "hs",
                "SYNCWORKER_HUBSPOT_BASE_URL": hubspot.url,
                "SYNCWORKER_HUBSPOT_RATE": "1000/1",
                "SYNCWORKER_LEASE": "3",
            }
        )
        conn = redis.Redis.from_url(persistent_redis.url)
        enqueuer = Enqueuer(conn)
        enqueuer.ingest(job(0, 100), "ingest first half", {})
        worker = start_worker(env, tmp_path / "worker.log")
        try:
            wait_until(lambda: len(hubspot.opted_out) >= 100, 60, "the first half delivered")

            persistent_redis.restart()  # Redis goes away under the running worker, and back
            assert worker.alive(), worker.output()

            conn = redis.Redis.from_url(persistent_redis.url)
            assert conn.zcard(PENDING + "hubspot") == 0  # the ledger survived (AOF)
            Enqueuer(conn).ingest(job(100, 100), "ingest second half", {})

            def done() -> bool:
                return (
                    hubspot.opted_out == set(EMAILS)
                    and conn.llen(f"rq:queue:{INGEST}") == 0
                    and conn.zcard(PENDING + "hubspot") + conn.zcard(INFLIGHT + "hubspot") == 0
                )

            wait_until(done, 90, "the worker to recover and deliver the second half", 0.2)
        finally:
            worker.stop()
        assert reader(conn).contact_count() == len(EMAILS)
        conn.close()


def test_worker_waits_out_a_redis_outage_without_restart_loops(
    persistent_redis: Restartable, tmp_path: Path
) -> None:
    """While Redis is away the RQ worker processes wait and reconnect with backoff: they are
    not restarted every second or two, and work flows again once Redis is back."""
    with HubSpotEmulator(token="hs") as hubspot:
        hubspot.seed(*EMAILS)
        env = clean_env(
            {
                "REDIS_URL": persistent_redis.url,
                "SYNCWORKER_DESTINATIONS": "hubspot",
                "SYNCWORKER_HUBSPOT_TOKEN": "hs",
                "SYNCWORKER_HUBSPOT_BASE_URL": hubspot.url,
                "SYNCWORKER_HUBSPOT_RATE": "1000/1",
                "SYNCWORKER_LEASE": "3",
            }
        )
        conn = redis.Redis.from_url(persistent_redis.url)
        Enqueuer(conn).ingest(job(0, 100), "ingest first half", {})
        hubspot.slow_next(1, 3.0)  # Redis goes away while a deliver job is busy
        worker = start_worker(env, tmp_path / "worker.log")
        try:
            wait_until(lambda: conn.zcard(INFLIGHT + "hubspot") > 0, 60, "a batch in flight")
            port, data_dir = persistent_redis.server.port, persistent_redis.server.data_dir
            persistent_redis.server.stop()
            # the supervisor's scheduler step fails once a second while Redis is away
            wait_until(
                lambda: worker.output().count("tick failed") >= 15, 60, "15 s of outage", 0.2
            )
            persistent_redis.server = RedisServer(
                port=port, data_dir=data_dir, persist=True
            ).start()
            conn = redis.Redis.from_url(persistent_redis.url)
            Enqueuer(conn).ingest(job(100, 100), "ingest second half", {})
            wait_until(
                lambda: hubspot.opted_out == set(EMAILS), 60, "the second half delivered", 0.2
            )
            assert worker.alive()
        finally:
            worker.stop()
            conn.close()
        output = worker.log_file.read_text(errors="replace")
        restarts = output.count("; restarting")
        assert restarts <= 1, f"{restarts} restarts of RQ worker processes:\n{output[-3000:]}"
