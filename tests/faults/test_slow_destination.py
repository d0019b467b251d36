"""One destination waiting never holds up another, with a real worker: while HubSpot's job
sleeps at its saturated rate limiter and the webhook receiver holds a request unanswered, Segment
gets every event, new ones included, and HubSpot keeps sending."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from rq.utils import utcparse

from syncworker import codec
from syncworker.devkit.emulators.hubspot import HubSpotEmulator
from syncworker.devkit.emulators.segment import SegmentEmulator
from syncworker.devkit.emulators.webhook_receiver import WebhookReceiver, new_secret
from syncworker.events import HygieneEvent, Kind
from syncworker.queue.enqueue import Enqueuer
from syncworker.queue.workers import WORKER_DEAD_AFTER_S
from syncworker.store.keys import INFLIGHT, PENDING, TAKERS
from tests.processes import clean_env, start_worker, wait_until
from tests.replies import items, optional

FIRST = [f"first{i:03d}@example.com" for i in range(200)]
LATER = [f"later{i:03d}@example.com" for i in range(20)]
SECRET = new_secret()
HOLD_S = 120.0  # the webhook's request is held longer than the whole test
HTTP_TIMEOUT_S = 60.0  # and the worker waits for it as long


@pytest.fixture()
def hubspot() -> Iterator[HubSpotEmulator]:
    with HubSpotEmulator(token="hs") as emulator:
        emulator.seed(*FIRST, *LATER)
        yield emulator


@pytest.fixture()
def segment() -> Iterator[SegmentEmulator]:
    with SegmentEmulator(write_key="wk") as emulator:
        yield emulator


@pytest.fixture()
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(SECRET) as emulator:
        yield emulator


def worker_env(
    redis_url: str, hubspot: HubSpotEmulator, segment: SegmentEmulator, receiver: WebhookReceiver
) -> dict[str, str]:
    return clean_env(
        {
            "REDIS_URL": redis_url,
            "SYNCWORKER_DESTINATIONS": "hubspot,segment,webhook",
            "SYNCWORKER_HUBSPOT_TOKEN": "hs",
            "SYNCWORKER_HUBSPOT_BASE_URL": hubspot.url,
            # every request waits about a second at the limiter (under the 2 s cap): the job
            # sleeps there, batch after batch, for as long as contacts are pending
            "SYNCWORKER_HUBSPOT_RATE": "1/1",
            "SYNCWORKER_HUBSPOT_BATCH_SIZE": "10",
            "SYNCWORKER_SEGMENT_WRITE_KEY": "wk",
            "SYNCWORKER_SEGMENT_BASE_URL": segment.url,
            "SYNCWORKER_WEBHOOK_URL": receiver.endpoint,
            "SYNCWORKER_WEBHOOK_SECRET": SECRET,
            "SYNCWORKER_HTTP_TIMEOUT": str(HTTP_TIMEOUT_S),
            "SYNCWORKER_STOP_GRACE": "1",
        }
    )


def ingest(conn: redis.Redis, prefix: str, emails: list[str]) -> None:
    events: list[dict[str, Any]] = [
        codec.dump(HygieneEvent(f"{prefix}-{i}", "t", "t", e, Kind.UNSUBSCRIBE, 1.7e9 + i))
        for i, e in enumerate(emails)
    ]
    Enqueuer(conn).ingest({"source": "t", "events": events}, "ingest test", {})


def test_a_rate_limited_and_a_hanging_destination_hold_up_no_other(
    redis_url: str,
    redis_conn: redis.Redis,
    hubspot: HubSpotEmulator,
    segment: SegmentEmulator,
    receiver: WebhookReceiver,
    tmp_path: Path,
) -> None:
    receiver.slow_next(1, HOLD_S)
    ingest(redis_conn, "first", FIRST)
    worker = start_worker(worker_env(redis_url, hubspot, segment, receiver), tmp_path / "w.log")
    try:

        def webhook_held() -> bool:
            assert worker.alive(), worker.output()
            return receiver.slow_pending == 0

        wait_until(webhook_held, 30, "the webhook's request to be held")
        wait_until(lambda: len(segment.tracks) >= len(FIRST), 20, "Segment's first events")
        sent = len(hubspot.requests)
        ingest(redis_conn, "later", LATER)  # while the webhook's request is still held

        wait_until(
            lambda: len(segment.tracks) >= len(FIRST) + len(LATER),
            20,
            "Segment's later events while the webhook hangs",
        )
        wait_until(
            lambda: len(hubspot.requests) > sent, 20, "HubSpot to go on while the webhook hangs"
        )
        assert receiver.deliveries == [], worker.output()  # its request is still held
        left = redis_conn.zcard(PENDING + "hubspot") + redis_conn.zcard(INFLIGHT + "hubspot")
        assert left > 0  # HubSpot is still working through its backlog at its limit
        assert len(segment.message_ids) == len(segment.received)  # each event once
    finally:
        worker.stop()


def test_a_silent_taker_with_a_request_out_keeps_its_slot(
    redis_url: str,
    redis_conn: redis.Redis,
    hubspot: HubSpotEmulator,
    segment: SegmentEmulator,
    receiver: WebhookReceiver,
    tmp_path: Path,
) -> None:
    """A worker whose heartbeat is late only looks dead: stopped or starved (a loaded machine),
    its horse may still be waiting for the answer to its request. Its slot was once freed and
    its batch in flight made due then, so a second webhook request went out, carrying the held
    batch's events after the ones that came later, while the first was still unanswered. The
    slot is kept (and its batch) until that request must have ended."""
    receiver.slow_next(1, HOLD_S)
    ingest(redis_conn, "first", FIRST)
    worker = start_worker(worker_env(redis_url, hubspot, segment, receiver), tmp_path / "w.log")
    stopped = 0
    try:
        wait_until(lambda: receiver.slow_pending == 0, 30, "the webhook's request to be held")
        (holder,) = items(redis_conn.hkeys(TAKERS + "webhook"))
        name = optional(redis_conn.hget(b"rq:job:" + holder, "worker_name"))
        assert name is not None
        stopped = int(redis_conn.hget(b"rq:worker:" + name, "pid") or 0)
        os.kill(stopped, signal.SIGSTOP)  # its heartbeat stops; its horse still waits

        def beat_age() -> float:
            beat = optional(redis_conn.hget(b"rq:worker:" + name, "last_heartbeat"))
            return time.time() - utcparse((beat or b"").decode()).timestamp()

        wait_until(lambda: beat_age() > WORKER_DEAD_AFTER_S, 40, "the heartbeat to be late")
        ingest(redis_conn, "later", LATER)
        wait_until(
            lambda: (
                b"slot kept dest=webhook" in worker.log_file.read_bytes()
                or len(receiver.requests) > 0
            ),
            20,
            "the supervisor to judge the silent webhook taker",
        )
        assert receiver.requests == [], worker.output()  # no second request went out
        assert redis_conn.hexists(TAKERS + "webhook", holder)
        assert redis_conn.zcard(INFLIGHT + "webhook") == 100  # the held batch, still leased
    finally:
        if stopped:
            os.kill(stopped, signal.SIGCONT)
        worker.stop()
