"""The delivery loop against real emulators: throttling, bad credentials, backoff, dead letters,
replay, leases and isolation between destinations."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import orjson
import pytest
import redis
from click.testing import CliRunner

from syncworker.bootstrap import Runtime
from syncworker.cli import main
from syncworker.config import Settings
from syncworker.delivery import deadletters, schedule
from syncworker.delivery import loop as delivery
from syncworker.delivery.loop import Delivery
from syncworker.destinations import Outcome
from syncworker.devkit.emulators.hubspot import HubSpotEmulator
from syncworker.devkit.emulators.segment import SegmentEmulator
from syncworker.events import HygieneEvent, Kind
from syncworker.store.keys import ATTEMPTS, DEAD, DSTATS, INFLIGHT, PENDING
from tests.conftest import SettingsFactory
from tests.replies import scored

EMAILS = [f"c{i}@example.com" for i in range(25)]


@pytest.fixture()
def hubspot() -> Iterator[HubSpotEmulator]:
    with HubSpotEmulator(token="hs") as emulator:
        emulator.seed(*EMAILS)
        yield emulator


@pytest.fixture()
def segment() -> Iterator[SegmentEmulator]:
    with SegmentEmulator(write_key="seg") as emulator:
        yield emulator


@pytest.fixture()
def rt(
    make_settings: SettingsFactory,
    use_runtime: Callable[[Settings], Runtime],
    hubspot: HubSpotEmulator,
    segment: SegmentEmulator,
) -> Runtime:
    settings = make_settings(
        destinations={
            "hubspot": {"TOKEN": "hs", "BASE_URL": hubspot.url, "RATE": "1000/1"},
            "segment": {"WRITE_KEY": "seg", "BASE_URL": segment.url, "RATE": "1000/1"},
        },
        backoff_base_s=10.0,
        backoff_cap_s=100.0,
        max_attempts=3,
        auth_pause_s=60.0,
        http_timeout_s=0.5,
    )
    return use_runtime(settings)


def unsubscribe_all(rt: Runtime, emails: list[str] = EMAILS) -> None:
    rt.ledger.apply(
        [HygieneEvent(f"k-{e}", "test", "test", e, Kind.UNSUBSCRIBE, 1000.0) for e in emails]
    )


def pending(conn: redis.Redis, dest: str) -> dict[str, float]:
    return {k.decode(): v for k, v in scored(conn.zrange(PENDING + dest, 0, -1, withscores=True))}


def test_batches_reach_the_destination_with_one_request_per_100(
    rt: Runtime, hubspot: HubSpotEmulator
) -> None:
    unsubscribe_all(rt)
    report = Delivery(rt, "hubspot").run()
    assert report.outcomes == {"applied": 25}
    assert hubspot.opted_out == set(EMAILS)
    assert len(hubspot.requests) == 1
    view = rt.ledger.view(EMAILS[0])
    assert view is not None and view.sync["hubspot"]["status"] == "applied"


def test_429_pauses_until_retry_after_and_spends_no_attempt(
    rt: Runtime, redis_conn: redis.Redis, hubspot: HubSpotEmulator
) -> None:
    unsubscribe_all(rt)
    hubspot.fail_next(1, 429, headers={"Retry-After": "30"})
    before = time.time()
    report = Delivery(rt, "hubspot").run()
    assert report.stopped == "throttled" and report.outcomes == {"throttled": 25}
    assert 29 < schedule.paused_for(redis_conn, "hubspot") <= 30
    due = pending(redis_conn, "hubspot")
    assert set(due) == set(EMAILS)
    assert all(before + 29 < at <= time.time() + 30 for at in due.values())
    assert redis_conn.hlen(ATTEMPTS + "hubspot") == 0
    assert redis_conn.hget(DSTATS + "hubspot", "throttled") == b"1"
    # paused: a deliver run does nothing, and tick does not schedule one
    assert Delivery(rt, "hubspot").run().stopped == "paused"
    assert "hubspot" not in schedule.tick(rt)


def test_bad_credentials_pause_and_keep_contacts_pending(
    rt: Runtime, redis_conn: redis.Redis, hubspot: HubSpotEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    unsubscribe_all(rt)
    hubspot.token = "rotated-elsewhere"
    assert Delivery(rt, "hubspot").run().stopped == "bad_credentials"
    assert 59 < schedule.paused_for(redis_conn, "hubspot") <= 60
    assert set(pending(redis_conn, "hubspot")) == set(EMAILS)
    assert redis_conn.llen(DEAD + "hubspot") == 0
    assert redis_conn.hlen(ATTEMPTS + "hubspot") == 0
    assert "bad_credentials" in caplog.text
    assert "status=401" in caplog.text and "body=" in caplog.text
    assert "@" not in caplog.text


def test_server_errors_back_off_exponentially_then_dead_letter(
    rt: Runtime, redis_conn: redis.Redis, hubspot: HubSpotEmulator
) -> None:
    unsubscribe_all(rt, EMAILS[:2])
    for attempt in (1, 2):
        hubspot.fail_next(1, 503)
        now = time.time()
        Delivery(rt, "hubspot").run()
        due = pending(redis_conn, "hubspot")
        delay = 10.0 * 2 ** (attempt - 1)  # base 10 s, doubling, equal jitter: [d/2, d]
        assert all(now + delay / 2 - 1 <= at <= now + delay + 1 for at in due.values()), due
        attempts = orjson.loads(redis_conn.hget(ATTEMPTS + "hubspot", EMAILS[0]) or b"{}")
        assert attempts["n"] == attempt
        redis_conn.zadd(PENDING + "hubspot", dict.fromkeys(due, 0))  # make them due now
    hubspot.fail_next(1, 503)
    report = Delivery(rt, "hubspot").run()
    assert report.outcomes["dead"] == 2
    dead = [orjson.loads(d) for d in redis_conn.lrange(DEAD + "hubspot", 0, -1)]
    assert {d["id"] for d in dead} == set(EMAILS[:2])
    assert all(d["attempts"] == 3 and "503" in d["error"] for d in dead)
    assert pending(redis_conn, "hubspot") == {}
    view = rt.ledger.view(EMAILS[0])
    assert view is not None and view.sync["hubspot"]["status"] == "dead"


def test_retrying_stops_at_the_age_cap(
    rt: Runtime, redis_conn: redis.Redis, hubspot: HubSpotEmulator
) -> None:
    unsubscribe_all(rt, EMAILS[:1])
    old = {"n": 1, "first": time.time() - 2 * 86400}
    redis_conn.hset(ATTEMPTS + "hubspot", EMAILS[0], orjson.dumps(old))
    hubspot.fail_next(1, 502)
    assert Delivery(rt, "hubspot").run().outcomes["dead"] == 1


@pytest.mark.slow
def test_timeout_is_retried_not_dead_lettered(
    rt: Runtime, redis_conn: redis.Redis, hubspot: HubSpotEmulator
) -> None:
    unsubscribe_all(rt, EMAILS[:3])
    hubspot.slow_next(1, 2.0)  # beyond the 0.5 s client timeout
    report = Delivery(rt, "hubspot").run()
    assert report.outcomes == {"retry": 3}
    assert set(pending(redis_conn, "hubspot")) == set(EMAILS[:3])
    assert redis_conn.llen(DEAD + "hubspot") == 0


def test_permanent_error_dead_letters_and_replay_delivers(
    rt: Runtime, redis_conn: redis.Redis, hubspot: HubSpotEmulator, redis_url: str
) -> None:
    unsubscribe_all(rt, EMAILS[:4])
    hubspot.refuse = set(EMAILS[:4])  # each is refused, in any batch
    assert Delivery(rt, "hubspot").run().outcomes["dead"] == 4
    assert redis_conn.llen(DEAD + "hubspot") == 4 and hubspot.opted_out == set()
    env = {
        "REDIS_URL": redis_url,
        "SYNCWORKER_DESTINATIONS": "hubspot",
        "SYNCWORKER_HUBSPOT_TOKEN": "hs",
        "SYNCWORKER_HUBSPOT_BASE_URL": hubspot.url,
    }
    result = CliRunner().invoke(main, ["replay", "hubspot"], env=env)
    assert result.exit_code == 0, result.output
    assert "4 dead letter(s) back to pending" in result.output
    assert redis_conn.llen(DEAD + "hubspot") == 0
    hubspot.refuse = set()
    Delivery(rt, "hubspot").run()
    assert hubspot.opted_out == set(EMAILS[:4])


def test_replay_names_enabled_destinations(redis_url: str) -> None:
    env = {"REDIS_URL": redis_url}
    result = CliRunner().invoke(main, ["replay", "salesforce"], env=env)
    assert result.exit_code == 1
    assert "not enabled" in result.output


def test_event_dead_letters_replay_with_their_event(
    rt: Runtime, redis_conn: redis.Redis, segment: SegmentEmulator
) -> None:
    unsubscribe_all(rt, EMAILS[:2])
    segment.fail_next(3, 400)  # the batch, then each half on its own
    Delivery(rt, "segment").run()
    redis_conn.delete(*redis_conn.keys("sw:ev:*"))  # the events' TTL passed meanwhile
    assert deadletters.replay_dead(rt, "segment") == 2
    assert Delivery(rt, "segment").run().outcomes == {"applied": 2}
    assert {t["userId"] for t in segment.tracks} == set(EMAILS[:2])


def test_one_destination_down_does_not_delay_another(
    rt: Runtime, redis_conn: redis.Redis, hubspot: HubSpotEmulator, segment: SegmentEmulator
) -> None:
    unsubscribe_all(rt)
    hubspot.down()
    Delivery(rt, "hubspot").run()
    Delivery(rt, "segment").run()
    assert len(segment.tracks) == 25
    assert pending(redis_conn, "segment") == {}
    assert set(pending(redis_conn, "hubspot")) == set(EMAILS)  # backing off, not lost
    hubspot.up()
    redis_conn.zadd(PENDING + "hubspot", dict.fromkeys(EMAILS, 0))
    Delivery(rt, "hubspot").run()
    assert hubspot.opted_out == set(EMAILS)


def test_a_crashed_batch_is_retaken_after_its_lease(
    rt: Runtime, redis_conn: redis.Redis, hubspot: HubSpotEmulator
) -> None:
    """A worker killed mid-batch leaves its ids in flight; they come back when the lease ends."""
    unsubscribe_all(rt, EMAILS[:5])
    taken = Delivery(rt, "hubspot").take()  # taken, then the "worker" dies
    assert len(taken) == 5 and pending(redis_conn, "hubspot") == {}
    assert Delivery(rt, "hubspot").run().outcomes == {}  # lease still running
    redis_conn.zadd(INFLIGHT + "hubspot", dict.fromkeys(taken, time.time() - 1))
    assert "hubspot" in schedule.tick(rt)
    Delivery(rt, "hubspot").run()
    assert hubspot.opted_out == set(EMAILS[:5])
    assert redis_conn.zcard(INFLIGHT + "hubspot") == 0


def test_changes_during_flight_are_synced_again(
    rt: Runtime, redis_conn: redis.Redis, hubspot: HubSpotEmulator
) -> None:
    """State-based sync: a change that lands while a batch is in flight is sent afterwards."""
    unsubscribe_all(rt, EMAILS[:1])
    d = Delivery(rt, "hubspot")
    ids = d.take()
    rt.ledger.apply([HygieneEvent("k2", "t", "t", EMAILS[0], Kind.HARD_BOUNCE, 2000.0)])
    instance, _ = rt.destinations["hubspot"].instantiate(redis_conn, rt.settings)
    d.process(instance, ids, delivery.Report())
    assert set(pending(redis_conn, "hubspot")) == {EMAILS[0]}
    Delivery(rt, "hubspot").run()
    status = hubspot.properties[EMAILS[0]]["syncworker_hygiene_status"]
    assert status == "hard_bounce;unsubscribe"


def test_local_rate_limit_wait_beyond_cap_pauses_briefly(
    make_settings: SettingsFactory,
    use_runtime: Callable[[Settings], Runtime],
    hubspot: HubSpotEmulator,
    redis_conn: redis.Redis,
) -> None:
    settings = make_settings(
        destinations={
            "hubspot": {"TOKEN": "hs", "BASE_URL": hubspot.url, "RATE": "1/60", "BATCH_SIZE": "5"}
        },  # fmt: skip
    )
    rt = use_runtime(settings)
    unsubscribe_all(rt, EMAILS[:10])
    report = Delivery(rt, "hubspot").run()
    assert report.outcomes == {"applied": 5, "throttled": 5}
    assert len(hubspot.requests) == 1 and hubspot.throttled == 0
    assert 55 < schedule.paused_for(redis_conn, "hubspot") <= 63
    assert redis_conn.hget(DSTATS + "hubspot", "rate_waits") == b"1"


def test_a_deferred_contact_waits_without_spending_an_attempt(
    rt: Runtime, redis_conn: redis.Redis
) -> None:
    """A vendor's per-contact limit (RD Station: 24 updates a day) is a wait, not a failure."""
    unsubscribe_all(rt, EMAILS[:2])
    d = Delivery(rt, "hubspot")
    ids = d.take()
    changes, _ = d.read_changes(ids)
    now = time.time()
    outcomes = [Outcome.deferred(3600, "contact update limit"), Outcome.retry("503")]
    d.record(changes, outcomes, delivery.Report())
    due = pending(redis_conn, "hubspot")
    assert now + 3599 <= due[changes[0].key] <= time.time() + 3600
    assert redis_conn.hget(ATTEMPTS + "hubspot", changes[0].key) is None  # no attempt spent
    assert redis_conn.hget(ATTEMPTS + "hubspot", changes[1].key) is not None
    view = rt.ledger.view(changes[0].email)
    assert view is not None and view.sync["hubspot"]["status"] == "deferred"


def test_a_flag_set_before_is_cleared_when_changes_coalesce(
    rt: Runtime, hubspot: HubSpotEmulator
) -> None:
    """Hard bounce synced; then unsuppress and a new unsubscribe arrive before the next sync:
    HubSpot must lose the bounce flag, though the contact is suppressed again."""
    email = EMAILS[0]
    rt.ledger.apply([HygieneEvent("h1", "t", "t", email, Kind.HARD_BOUNCE, 1000.0)])
    Delivery(rt, "hubspot").run()
    assert hubspot.properties[email]["syncworker_hygiene_status"] == "hard_bounce"
    rt.ledger.unsuppress(email, "fixed")
    rt.ledger.apply([HygieneEvent("u1", "t", "t", email, Kind.UNSUBSCRIBE, time.time() + 1)])
    Delivery(rt, "hubspot").run()
    properties = hubspot.properties[email]
    assert properties["syncworker_hygiene_status"] == "unsubscribe"  # no stale hard_bounce
    assert not properties.get("syncworker_bounced_at")  # cleared
    assert email in hubspot.opted_out
