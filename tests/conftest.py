"""Shared fixtures: a private real redis-server per session, settings, runtime, burst worker."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from rq.serializers import JSONSerializer

from syncworker import bootstrap as runtime
from syncworker.config import DestinationConfig, Settings, SourceConfig
from syncworker.devkit.redis_server import RedisServer
from syncworker.queue.workers import QuickStopSimpleWorker
from syncworker.store.keys import DELIVER, INGEST


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server on a free loopback port, started for this test session only."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The private server's URL, flushed before each test so tests do not see each other."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    yield redis_server.url


@pytest.fixture()
def redis_conn(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


SettingsFactory = Callable[..., Settings]


@pytest.fixture()
def make_settings(redis_url: str) -> SettingsFactory:
    """Settings for a test: ``sources={name: (esp, values)}``, ``destinations={name: values}``."""

    def make(
        sources: dict[str, tuple[str, dict[str, str]]] | None = None,
        destinations: dict[str, dict[str, str]] | None = None,
        **overrides: Any,
    ) -> Settings:
        base = Settings(redis_url=redis_url)
        return base.replace(
            sources={
                name: SourceConfig(name=name, esp=esp, values=values)
                for name, (esp, values) in (sources or {}).items()
            },
            destinations={
                name: DestinationConfig(name=name, values=values)
                for name, values in (destinations or {}).items()
            },
            **overrides,
        )

    return make


@pytest.fixture()
def use_runtime(redis_conn: redis.Redis) -> Iterator[Callable[[Settings], runtime.Runtime]]:
    """Configure this process's worker runtime (as `syncworker worker` does) for the test."""

    def configure(settings: Settings) -> runtime.Runtime:
        rt = runtime.Runtime.build(settings, redis_conn)
        runtime.configure(rt)
        return rt

    yield configure
    runtime.configure(None)


@pytest.fixture()
def run_worker(redis_conn: redis.Redis) -> Callable[..., int]:
    """Drain the queues with an in-process burst worker (real RQ, real Redis); return jobs run."""

    def drain(queues: tuple[str, ...] = (INGEST, DELIVER), rounds: int = 50) -> int:
        total = 0
        for _ in range(rounds):
            worker = QuickStopSimpleWorker(
                list(queues), connection=redis_conn, serializer=JSONSerializer
            )
            worker.work(burst=True, logging_level="WARNING")
            done = worker.successful_job_count + worker.failed_job_count
            total += done
            if done == 0:
                break
        return total

    return drain


@pytest.fixture()
def blackhole_port() -> Iterator[int]:
    """A TCP port that accepts connections and never answers (a hung Redis)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                accepted.append(conn)
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    server.close()
