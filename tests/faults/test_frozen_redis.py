"""A frozen Redis (the process stopped, its socket still accepting) is a 503 within
SYNCWORKER_REDIS_TIMEOUT, for every request of a busy intake process."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from syncworker.devkit.redis_server import RedisServer
from syncworker.web.app import create_app
from tests.conftest import SettingsFactory
from tests.test_web import AUTH, BOUNCE

TIMEOUT_S = 1.0
SLACK_S = 0.5  # Flask, the test client and a loaded 2-core machine


@pytest.fixture()
def server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    try:
        yield server
    finally:
        assert server.process is not None
        os.kill(server.process.pid, signal.SIGCONT)
        server.stop()


def test_frozen_redis_is_a_503_within_the_redis_timeout(
    make_settings: SettingsFactory, server: RedisServer
) -> None:
    settings = make_settings(
        sources={"postmark": ("postmark", {"USERNAME": "pm", "PASSWORD": "secret"})},
        redis_timeout_s=TIMEOUT_S,
    ).replace(redis_url=server.url)
    app = create_app(settings)
    warm = app.test_client().post("/webhooks/postmark", json=BOUNCE, headers=AUTH)
    assert warm.status_code == 200
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)
    answers: list[tuple[int, float]] = []
    lock = threading.Lock()

    def post() -> None:
        client = app.test_client()
        start = time.monotonic()
        status = client.post("/webhooks/postmark", json=BOUNCE, headers=AUTH).status_code
        with lock:
            answers.append((status, time.monotonic() - start))

    # arriving over the first second: some while a write that will time out is under way
    threads = [threading.Timer(i * 0.1, post) for i in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert [status for status, _ in answers] == [503] * 10
    slowest = max(elapsed for _, elapsed in answers)
    assert slowest <= TIMEOUT_S + SLACK_S, f"slowest 503 took {slowest:.2f}s"
