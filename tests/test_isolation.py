"""A batch refused whole because of one bad contact: the delivery loop splits it until only the
contacts at fault are dead-lettered; the others are delivered."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import orjson
import pytest
import redis

from syncworker.bootstrap import Runtime
from syncworker.config import Settings
from syncworker.delivery import schedule
from syncworker.delivery.loop import Delivery
from syncworker.devkit.emulators.hubspot import HubSpotEmulator
from syncworker.devkit.emulators.webhook_receiver import WebhookReceiver, new_secret
from syncworker.store.keys import ATTEMPTS, DEAD, DSTATS, PAUSE, PENDING
from tests.conftest import SettingsFactory
from tests.replies import items
from tests.test_delivery import unsubscribe_all as unsubscribe

EMAILS = [f"c{i:03d}@example.com" for i in range(100)]
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


@pytest.fixture()
def rt(
    make_settings: SettingsFactory,
    use_runtime: Callable[[Settings], Runtime],
    hubspot: HubSpotEmulator,
    receiver: WebhookReceiver,
) -> Runtime:
    settings = make_settings(
        destinations={
            "hubspot": {"TOKEN": "hs", "BASE_URL": hubspot.url, "RATE": "1000/1"},
            "webhook": {"URL": receiver.endpoint, "SECRET": SECRET, "RATE": "1000/1"},
        },
        max_attempts=3,
    )
    return use_runtime(settings)


def dead(conn: redis.Redis, dest: str) -> set[str]:
    return {orjson.loads(d)["email"] for d in conn.lrange(DEAD + dest, 0, -1)}


def bound(k: int, n: int) -> int:
    """The first request plus at most 2·k·log2(n) to isolate k bad contacts among n."""
    return 1 + 2 * k * math.ceil(math.log2(n))


def test_one_bad_contact_is_the_only_dead_letter_of_its_batch(
    rt: Runtime, redis_conn: redis.Redis, hubspot: HubSpotEmulator
) -> None:
    bad = EMAILS[37]
    hubspot.refuse = {bad}
    unsubscribe(rt, EMAILS)
    report = Delivery(rt, "hubspot").run()
    assert dead(redis_conn, "hubspot") == {bad}
    assert hubspot.opted_out == set(EMAILS) - {bad}
    assert report.outcomes["dead"] == 1 and report.outcomes["applied"] == 99
    assert len(hubspot.requests) <= bound(1, 100)
    entry = orjson.loads(redis_conn.lindex(DEAD + "hubspot", 0) or b"{}")
    assert "400" in entry["error"] and "VALIDATION_ERROR" in entry["error"]
    view = rt.ledger.view(EMAILS[0])
    assert view is not None and view.sync["hubspot"]["status"] == "applied"


def test_bad_events_in_a_refused_webhook_delivery_are_isolated(
    rt: Runtime, redis_conn: redis.Redis, receiver: WebhookReceiver
) -> None:
    bad = {EMAILS[3], EMAILS[50], EMAILS[98]}
    receiver.refuse = bad
    unsubscribe(rt, EMAILS)
    Delivery(rt, "webhook").run()
    assert dead(redis_conn, "webhook") == bad
    assert {e["email"] for e in receiver.events} == set(EMAILS) - bad
    assert len(receiver.requests) <= bound(3, 100)
    assert receiver.duplicates == 0


def test_a_429_while_splitting_pauses_and_spends_no_attempt(
    rt: Runtime, redis_conn: redis.Redis, hubspot: HubSpotEmulator
) -> None:
    """The split requests wait at the limits like any other: a 429 among them pauses the
    destination and the contacts not yet settled go back to pending, with no attempt spent."""
    bad = EMAILS[10]
    hubspot.refuse = {bad}
    hubspot.fail_next(1, 429, after=2, headers={"Retry-After": "30"})
    unsubscribe(rt, EMAILS)
    report = Delivery(rt, "hubspot").run()
    assert report.stopped == "throttled"
    assert 29 < schedule.paused_for(redis_conn, "hubspot") <= 30
    assert redis_conn.llen(DEAD + "hubspot") == 0
    assert redis_conn.hlen(ATTEMPTS + "hubspot") == 0
    waiting = {k.decode() for k in items(redis_conn.zrange(PENDING + "hubspot", 0, -1))}
    assert bad in waiting
    assert waiting | hubspot.opted_out == set(EMAILS)  # every contact applied or pending

    redis_conn.delete(PAUSE + "hubspot")  # the pause is over
    redis_conn.zadd(PENDING + "hubspot", dict.fromkeys(waiting, 0))
    Delivery(rt, "hubspot").run()
    assert dead(redis_conn, "hubspot") == {bad}
    assert hubspot.opted_out == set(EMAILS) - {bad}
    assert int(redis_conn.hget(DSTATS + "hubspot", "splits") or 0) > 0
