"""A 429 on a later request of a batch sent in several requests: what was answered before it is
recorded delivered, only the contacts left wait (unspent, behind a pause), and a retry sends
each event exactly once - by the receiver's dedupe id and by content."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from syncworker import delivery
from syncworker.config import Settings
from syncworker.delivery import ATTEMPTS, PAUSE, Delivery
from syncworker.emulators.amplitude import AmplitudeEmulator
from syncworker.emulators.mixpanel import MixpanelEmulator
from syncworker.emulators.segment import SegmentEmulator
from syncworker.emulators.webhook_receiver import WebhookReceiver, new_secret
from syncworker.events import HygieneEvent, Kind
from syncworker.ledger import PENDING
from syncworker.runtime import Runtime
from tests.conftest import SettingsFactory
from tests.processes import wait_until

SECRET = new_secret()
EMAILS = [f"p{i}@example.com" for i in range(8)]
T0 = time.time() - 3600  # recent: analytics tools refuse old events
REASON = "550 mailbox unavailable " + "x" * 1200  # long: a few events fill a request


@pytest.fixture()
def runtime_for(
    make_settings: SettingsFactory, use_runtime: Callable[[Settings], Runtime]
) -> Callable[[str, dict[str, str]], Runtime]:
    def build(name: str, values: dict[str, str]) -> Runtime:
        settings = make_settings(
            destinations={name: {"RATE": "1000/1", **values}},
            backoff_base_s=10.0,
            max_attempts=3,
            http_timeout_s=2.0,
        )
        return use_runtime(settings)

    return build


def hard_bounces(rt: Runtime) -> list[str]:
    """One hard bounce per address; returns the event keys."""
    events = [
        HygieneEvent(f"ev-{e}", "test", "test", e, Kind.HARD_BOUNCE, T0 + i, reason=REASON)
        for i, e in enumerate(EMAILS)
    ]
    rt.ledger.apply(events)
    return [e.key for e in events]


def pending(conn: redis.Redis, dest: str) -> dict[str, float]:
    return {k.decode(): v for k, v in conn.zrange(PENDING + dest, 0, -1, withscores=True)}


def throttle_then_resume(
    rt: Runtime,
    conn: redis.Redis,
    dest: str,
    keys: list[str],
    delivered_keys: Callable[[], set[str]],
) -> set[str]:
    """Run the loop into the 429, check what it left, lift the pause and run it to the end;
    return the keys delivered before the 429."""
    before = time.time()
    report = Delivery(rt, dest).run()
    assert report.stopped == "throttled"
    assert 29 < delivery.paused_for(conn, dest) <= 30
    first = delivered_keys()
    assert first and first < set(keys)  # some parts went through, some did not
    due = pending(conn, dest)
    assert set(due) == set(keys) - first  # only the undelivered wait ...
    assert all(before + 29 < at <= time.time() + 30 for at in due.values())  # ... behind the pause
    assert conn.hlen(ATTEMPTS + dest) == 0  # ... without spending an attempt
    for change_key, email in zip(keys, EMAILS, strict=True):
        view = rt.ledger.view(email)
        assert view is not None
        wanted = "applied" if change_key in first else "throttled"
        assert view.sync[dest]["status"] == wanted, email
    # Retry-After has passed
    conn.delete(PAUSE + dest)
    conn.zadd(PENDING + dest, dict.fromkeys(due, time.time()))
    assert Delivery(rt, dest).run().stopped == "drained"
    assert delivered_keys() == set(keys)
    assert not pending(conn, dest)
    return first


# -- webhook -----------------------------------------------------------------------------------


@pytest.fixture()
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(SECRET) as emulator:
        yield emulator


def webhook_events(receiver: WebhookReceiver) -> list[dict[str, Any]]:
    """Every event of every body the receiver accepted (bodies with a new webhook-id)."""
    return receiver.events


def test_webhook_sends_each_event_once_when_a_later_body_is_throttled(
    runtime_for: Callable[[str, dict[str, str]], Runtime],
    redis_conn: redis.Redis,
    receiver: WebhookReceiver,
) -> None:
    rt = runtime_for(
        "webhook", {"URL": receiver.endpoint, "SECRET": SECRET, "MAX_BATCH_BYTES": "4000"}
    )
    keys = hard_bounces(rt)
    receiver.fail_next(1, 429, after=2, headers={"Retry-After": "30"})
    throttle_then_resume(
        rt, redis_conn, "webhook", keys, lambda: {e["key"] for e in webhook_events(receiver)}
    )
    assert receiver.duplicates == 0
    sent = Counter(e["key"] for e in webhook_events(receiver))
    assert sent == Counter(keys)  # by content: each event in exactly one accepted body
    # the 429 answered body is sent again as the same events under the same webhook-id
    throttled = [r for r in receiver.requests if r.status == 429]
    assert len(throttled) == 1
    assert throttled[0].headers["webhook-id"] in receiver.webhook_ids


def test_webhook_through_the_worker_delivers_each_event_once_after_a_429(
    runtime_for: Callable[[str, dict[str, str]], Runtime],
    redis_conn: redis.Redis,
    receiver: WebhookReceiver,
    run_worker: Callable[..., int],
) -> None:
    """The real deliver job: the pause it takes is waited out, then the rest goes once."""
    rt = runtime_for(
        "webhook", {"URL": receiver.endpoint, "SECRET": SECRET, "MAX_BATCH_BYTES": "4000"}
    )
    keys = hard_bounces(rt)
    receiver.fail_next(1, 429, after=1, headers={"Retry-After": "1"})
    delivery.flush(rt, ["webhook"])
    run_worker()
    first = {e["key"] for e in webhook_events(receiver)}
    assert first and first < set(keys)
    assert set(pending(redis_conn, "webhook")) == set(keys) - first
    assert redis_conn.hlen(ATTEMPTS + "webhook") == 0
    assert 0 < delivery.paused_for(redis_conn, "webhook") <= 1
    wait_until(lambda: delivery.tick(rt) == ["webhook"], 10, "the pause to end and a flush")
    run_worker()
    assert Counter(e["key"] for e in webhook_events(receiver)) == Counter(keys)
    assert receiver.duplicates == 0
    assert not pending(redis_conn, "webhook")


# -- Segment -----------------------------------------------------------------------------------


def test_segment_sends_each_message_once_when_a_later_batch_is_throttled(
    runtime_for: Callable[[str, dict[str, str]], Runtime], redis_conn: redis.Redis
) -> None:
    with SegmentEmulator(write_key="seg") as segment:
        rt = runtime_for(
            "segment", {"WRITE_KEY": "seg", "BASE_URL": segment.url, "MAX_BATCH_BYTES": "8000"}
        )
        keys = hard_bounces(rt)
        segment.fail_next(1, 429, after=1, headers={"Retry-After": "30"})

        def delivered() -> set[str]:
            return {m["properties"]["event_key"] for m in segment.received if m["type"] == "track"}

        throttle_then_resume(rt, redis_conn, "segment", keys, delivered)
        assert segment.duplicates == 0
        received = segment.received
        assert len(received) == len(segment.message_ids) == 2 * len(keys)  # by messageId
        tracks = Counter(m["properties"]["event_key"] for m in received if m["type"] == "track")
        assert tracks == Counter(keys)  # by content


# -- Mixpanel ----------------------------------------------------------------------------------


def test_mixpanel_imports_each_event_once_when_a_later_import_is_throttled(
    runtime_for: Callable[[str, dict[str, str]], Runtime], redis_conn: redis.Redis
) -> None:
    with MixpanelEmulator() as mixpanel:
        rt = runtime_for(
            "mixpanel",
            {"TOKEN": "mixpanel-test-token", "BASE_URL": mixpanel.url, "MAX_BATCH_BYTES": "4000"},
        )
        keys = hard_bounces(rt)
        mixpanel.fail_next(1, 429, after=1, headers={"Retry-After": "30"})

        def delivered() -> set[str]:
            return {e["properties"]["event_key"] for e in mixpanel.received}

        throttle_then_resume(rt, redis_conn, "mixpanel", keys, delivered)
        assert mixpanel.duplicates == 0
        assert len(mixpanel.received) == len(mixpanel.insert_ids) == len(keys)  # by $insert_id
        assert Counter(e["properties"]["event_key"] for e in mixpanel.received) == Counter(keys)


# -- Amplitude ---------------------------------------------------------------------------------


def test_amplitude_sends_each_event_once_when_a_later_upload_is_throttled(
    runtime_for: Callable[[str, dict[str, str]], Runtime], redis_conn: redis.Redis
) -> None:
    with AmplitudeEmulator() as amplitude:
        rt = runtime_for(
            "amplitude",
            {
                "API_KEY": "amplitude-test-api-key",
                "BASE_URL": amplitude.url,
                "MAX_BATCH_BYTES": "6000",
            },
        )
        keys = hard_bounces(rt)
        amplitude.fail_next(1, 429, after=1, headers={"Retry-After": "30"})

        def delivered() -> set[str]:
            return {e["event_properties"]["event_key"] for e in amplitude.received}

        throttle_then_resume(rt, redis_conn, "amplitude", keys, delivered)
        assert amplitude.duplicates == 0
        assert len(amplitude.received) == len(amplitude.insert_ids) == len(keys)  # by insert_id
        received = Counter(e["event_properties"]["event_key"] for e in amplitude.received)
        assert received == Counter(keys)  # by content


def test_webhook_resends_a_throttled_body_under_its_webhook_id_whatever_the_pending_order(
    runtime_for: Callable[[str, dict[str, str]], Runtime],
    redis_conn: redis.Redis,
    receiver: WebhookReceiver,
) -> None:
    """The contacts left wait side by side and come back in another order than they were taken:
    the bodies are split the same way again, so the receiver sees the throttled body's id."""
    rt = runtime_for(
        "webhook", {"URL": receiver.endpoint, "SECRET": SECRET, "MAX_BATCH_BYTES": "4000"}
    )
    keys = hard_bounces(rt)
    # taken in an order that is neither the keys' nor the events' (pending since a while)
    taken_order = [keys[i] for i in (5, 1, 7, 3, 0, 6, 2, 4)]
    redis_conn.zadd(PENDING + "webhook", {k: T0 + n for n, k in enumerate(taken_order)})
    receiver.fail_next(1, 429, after=1, headers={"Retry-After": "30"})
    throttle_then_resume(
        rt, redis_conn, "webhook", keys, lambda: {e["key"] for e in webhook_events(receiver)}
    )
    throttled = [r.headers["webhook-id"] for r in receiver.requests if r.status == 429]
    assert len(throttled) == 1 and throttled[0] in receiver.webhook_ids
    assert Counter(e["key"] for e in webhook_events(receiver)) == Counter(keys)
    assert receiver.duplicates == 0
