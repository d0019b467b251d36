"""Deliver jobs fill their batches and share a destination, with a real worker: a trickle of
single contacts goes out in full batches, a lone contact is not held back, several jobs send to
one destination at once without sending a contact twice, a killed one's slot and batch are taken
over while the other goes on, and a destination allowing one job never has two requests out."""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from syncworker import codec
from syncworker.devkit.emulators.hubspot import HubSpotEmulator
from syncworker.devkit.emulators.webhook_receiver import WebhookReceiver, new_secret
from syncworker.events import HygieneEvent, Kind
from syncworker.queue.enqueue import Enqueuer
from syncworker.store.keys import INFLIGHT, INGEST, PENDING, TAKERS, taken_key
from tests.faults.test_recovery import horses
from tests.processes import Process, clean_env, start_worker, wait_until
from tests.replies import items, optional

pytestmark = pytest.mark.slow  # real worker processes taking batches side by side

EMAILS = [f"t{i:04d}@example.com" for i in range(1000)]
SECRET = new_secret()


@pytest.fixture()
def hubspot() -> Iterator[HubSpotEmulator]:
    with HubSpotEmulator(token="hs") as emulator:
        emulator.seed(*EMAILS)
        yield emulator


@pytest.fixture()
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(SECRET) as emulator:
        yield emulator


def env(redis_url: str, hubspot: HubSpotEmulator, **extra: str) -> dict[str, str]:
    return clean_env(
        {
            "REDIS_URL": redis_url,
            "SYNCWORKER_DESTINATIONS": "hubspot",
            "SYNCWORKER_HUBSPOT_TOKEN": "hs",
            "SYNCWORKER_HUBSPOT_BASE_URL": hubspot.url,
            "SYNCWORKER_STOP_GRACE": "1",
            **{f"SYNCWORKER_{k}": v for k, v in extra.items()},
        }
    )


def ingest(conn: redis.Redis, emails: list[str], prefix: str = "k") -> None:
    """One ingest job per contact, as single-event ESPs send them."""
    enqueuer = Enqueuer(conn)
    for i, email in enumerate(emails):
        event = HygieneEvent(f"{prefix}{i}", "t", "t", email, Kind.UNSUBSCRIBE, 1.7e9 + i)
        enqueuer.ingest({"source": "t", "events": [codec.dump(event)]}, "ingest test", {})


def ingest_all(conn: redis.Redis, emails: list[str]) -> None:
    """One ingest job for them all: they are pending at once."""
    events: list[Any] = [
        codec.dump(HygieneEvent(f"a{i}", "t", "t", e, Kind.UNSUBSCRIBE, 1.7e9 + i))
        for i, e in enumerate(emails)
    ]
    Enqueuer(conn).ingest({"source": "t", "events": events}, "ingest test", {})


def sent(hubspot: HubSpotEmulator) -> Counter[str]:
    """How many times each address was in an answered batch request."""
    counts: Counter[str] = Counter()
    for request in hubspot.requests:
        if request.status == 200 and isinstance(request.json, dict):
            counts.update(str(e) for e in request.json.get("inputs", []))
    return counts


def started(worker: Process, conn: redis.Redis) -> None:
    def ready() -> bool:
        assert worker.alive(), worker.output()
        return (
            conn.llen(f"rq:queue:{INGEST}") == 0
            and b"worker: queues" in worker.log_file.read_bytes()
        )

    wait_until(ready, 30, "the worker")


def test_a_trickle_of_single_contacts_goes_out_in_full_batches(
    redis_url: str, redis_conn: redis.Redis, hubspot: HubSpotEmulator, tmp_path: Path
) -> None:
    """Each ingest starts a deliver job at once; the job waits for a batch to fill instead of
    sending each contact on its own (measured before: 1.1 contacts a request)."""
    emails = EMAILS[:300]
    worker = start_worker(env(redis_url, hubspot, BATCH_WAIT="1"), tmp_path / "w.log")
    try:
        started(worker, redis_conn)
        ingest(redis_conn, emails)
        wait_until(lambda: hubspot.opted_out == set(emails), 60, "every contact", 0.1)
        counts = sent(hubspot)
        assert set(counts) == set(emails) and max(counts.values()) == 1
        batches = [r for r in hubspot.requests if isinstance(r.json, dict)]
        assert len(batches) <= len(emails) // 20, [len(r.json["inputs"]) for r in batches]
    finally:
        worker.stop()


def test_a_lone_contact_is_sent_without_waiting_for_others(
    redis_url: str, redis_conn: redis.Redis, hubspot: HubSpotEmulator, tmp_path: Path
) -> None:
    """The wait for a full batch is bounded: one contact and nothing after it still goes out."""
    worker = start_worker(env(redis_url, hubspot, BATCH_WAIT="1"), tmp_path / "w.log")
    try:
        started(worker, redis_conn)
        ingest(redis_conn, EMAILS[:1])
        wait_until(lambda: hubspot.opted_out == {EMAILS[0]}, 15, "the lone contact", 0.1)
        assert len(hubspot.requests) == 1
    finally:
        worker.stop()


def test_two_takers_send_to_one_destination_at_once_each_contact_once(
    redis_url: str, redis_conn: redis.Redis, hubspot: HubSpotEmulator, tmp_path: Path
) -> None:
    hubspot.slow_next(40, 0.3)  # each request takes a while: the next taker's overlap it
    worker = start_worker(
        env(redis_url, hubspot, DELIVER_WORKERS="2", HUBSPOT_RATE="1000/1"), tmp_path / "w.log"
    )
    try:
        started(worker, redis_conn)
        ingest_all(redis_conn, EMAILS)
        wait_until(lambda: hubspot.opted_out == set(EMAILS), 60, "every contact", 0.1)
        counts = sent(hubspot)
        assert set(counts) == set(EMAILS) and max(counts.values()) == 1
        assert hubspot.peak_in_flight == 2, worker.output()
    finally:
        worker.stop()


def test_a_killed_takers_slot_and_batch_are_taken_over_while_the_other_goes_on(
    redis_url: str, redis_conn: redis.Redis, hubspot: HubSpotEmulator, tmp_path: Path
) -> None:
    hubspot.slow_next(1, 120.0)  # the first batch is held, unanswered, longer than the test
    worker = start_worker(
        # a loaded machine's slow answer must not time out and be sent again: the held request
        # is the only one left unanswered
        env(
            redis_url,
            hubspot,
            DELIVER_WORKERS="2",
            HUBSPOT_RATE="20/1",
            LEASE="300",
            HTTP_TIMEOUT="60",
        ),
        tmp_path / "w.log",
    )
    try:
        started(worker, redis_conn)
        ingest_all(redis_conn, EMAILS)
        wait_until(lambda: hubspot.slow_pending == 0, 30, "a batch held in flight")
        answered = len(hubspot.requests)
        wait_until(lambda: len(hubspot.requests) > answered + 2, 30, "the other taker")
        held = held_taker(redis_conn, hubspot)
        pid = int(redis_conn.hget(f"rq:worker:{held}", "pid") or 0)
        for horse in horses(pid):
            os.kill(horse, signal.SIGKILL)  # the taker whose request is held dies

        def done() -> bool:
            left = redis_conn.zcard(PENDING + "hubspot") + redis_conn.zcard(INFLIGHT + "hubspot")
            return hubspot.opted_out == set(EMAILS) and left == 0

        wait_until(done, 30, "every contact, the held batch too", 0.1)
        counts = sent(hubspot)
        assert set(counts) == set(EMAILS) and max(counts.values()) == 1
    finally:
        worker.stop()


def held_taker(conn: redis.Redis, hubspot: HubSpotEmulator) -> str:
    """The worker running the taker whose batch is in flight and unanswered."""
    answered = set(sent(hubspot))
    for raw in items(conn.hkeys(TAKERS + "hubspot")):
        job_id = raw.decode()
        batch = {k.decode() for k in items(conn.hkeys(taken_key("hubspot", job_id)))}
        if (
            batch
            and not batch & answered
            and all(conn.zscore(INFLIGHT + "hubspot", i) for i in batch)
        ):
            worker = optional(conn.hget(f"rq:job:{job_id}", "worker_name"))
            if worker is not None:
                return worker.decode()
    raise AssertionError("no taker holds the unanswered batch")


def test_a_destination_allowing_one_taker_never_has_two_requests_out(
    redis_url: str,
    redis_conn: redis.Redis,
    hubspot: HubSpotEmulator,
    receiver: WebhookReceiver,
    tmp_path: Path,
) -> None:
    receiver.slow_next(8, 0.3)
    worker_env = {
        **env(redis_url, hubspot, DELIVER_WORKERS="3", WEBHOOK_RATE="1000/1"),
        "SYNCWORKER_DESTINATIONS": "hubspot,webhook",
        "SYNCWORKER_WEBHOOK_URL": receiver.endpoint,
        "SYNCWORKER_WEBHOOK_SECRET": SECRET,
    }
    worker = start_worker(worker_env, tmp_path / "w.log")
    try:
        started(worker, redis_conn)
        ingest_all(redis_conn, EMAILS)
        ingest(redis_conn, EMAILS[:50], prefix="again")  # more work while it is busy
        wait_until(lambda: len(receiver.events) >= len(EMAILS) + 50, 60, "every event", 0.1)
        assert receiver.duplicates == 0
        assert receiver.peak_in_flight == 1
    finally:
        worker.stop()
