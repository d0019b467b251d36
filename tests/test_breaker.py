"""The destination's circuit breaker: calls with no answer open it, an open breaker spends no
attempt and sends one probe at a time, an answer closes it; throttling and per-contact answers
never open it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import orjson
import pytest
import redis

from syncworker.bootstrap import Runtime
from syncworker.config import Settings
from syncworker.delivery import breaker, deadletters, schedule
from syncworker.delivery.loop import Delivery
from syncworker.destinations import Outcome
from syncworker.devkit.emulators.hubspot import HubSpotEmulator
from syncworker.store import keys
from syncworker.store.keys import ATTEMPTS, DEAD, DSTATS, PAUSE, PENDING
from syncworker.store.stats import overview
from syncworker.web.app import create_app
from tests.conftest import SettingsFactory
from tests.replies import items
from tests.test_delivery import unsubscribe_all as unsubscribe
from tests.test_status import metric_samples

EMAILS = [f"b{i:02d}@example.com" for i in range(20)]


@pytest.fixture()
def hubspot() -> Iterator[HubSpotEmulator]:
    with HubSpotEmulator(token="hs") as emulator:
        emulator.seed(*EMAILS)
        yield emulator


@pytest.fixture()
def rt(
    make_settings: SettingsFactory,
    use_runtime: Callable[[Settings], Runtime],
    hubspot: HubSpotEmulator,
) -> Runtime:
    settings = make_settings(
        destinations={
            "hubspot": {"TOKEN": "hs", "BASE_URL": hubspot.url, "RATE": "1000/1", "BATCH_SIZE": "5"}
        },
        max_attempts=3,
        backoff_base_s=0.0,
        breaker_failures=2,
        breaker_probe_s=30.0,
        http_timeout_s=0.5,
    )
    return use_runtime(settings)


def state(conn: redis.Redis) -> dict[str, object]:
    return breaker.read(conn, "hubspot")


def probe_now(conn: redis.Redis) -> None:
    """The probe interval has passed: its pause is over and the probe is due."""
    conn.delete(PAUSE + "hubspot")
    conn.hset(keys.BREAKER + "hubspot", "probe_at", 0)
    conn.zadd(PENDING + "hubspot", {k: 0 for k in items(conn.zrange(PENDING + "hubspot", 0, -1))})


def test_calls_with_no_answer_open_the_breaker_and_pause_the_destination(
    rt: Runtime, redis_conn: redis.Redis, hubspot: HubSpotEmulator
) -> None:
    unsubscribe(rt, EMAILS)
    hubspot.down(503)
    report = Delivery(rt, "hubspot").run()
    assert report.stopped == "breaker_open"
    assert len(hubspot.requests) == 2  # two failed batches open it; the rest wait
    seen = state(redis_conn)
    assert seen["state"] == "open" and seen["failures"] == 2
    assert "503" in str(seen["last_error"])
    pause = orjson.loads(redis_conn.get(PAUSE + "hubspot") or b"{}")
    assert pause["reason"] == "breaker open"
    assert 29 < schedule.paused_for(redis_conn, "hubspot") <= 30
    # the first failure was an ordinary retry; the one that opened it spent nothing
    assert redis_conn.hlen(ATTEMPTS + "hubspot") == 5
    assert redis_conn.zcard(PENDING + "hubspot") == 20
    view = rt.ledger.view(EMAILS[5])  # of the batch that opened it
    assert view is not None and view.sync["hubspot"]["status"] == "held"
    assert Delivery(rt, "hubspot").run().stopped == "paused"
    assert "hubspot" not in schedule.tick(rt)
    assert len(hubspot.requests) == 2


def test_an_open_breaker_sends_one_small_probe_and_spends_no_attempt(
    rt: Runtime, redis_conn: redis.Redis, hubspot: HubSpotEmulator
) -> None:
    unsubscribe(rt, EMAILS)
    hubspot.down(503)
    Delivery(rt, "hubspot").run()
    before = dict(redis_conn.hgetall(ATTEMPTS + "hubspot"))
    for probe in range(1, 6):  # far more probes than MAX_ATTEMPTS
        probe_now(redis_conn)
        assert "hubspot" in schedule.tick(rt) or redis_conn.exists(keys.TAKERS + "hubspot")
        redis_conn.delete(keys.TAKERS + "hubspot")
        report = Delivery(rt, "hubspot").run()
        assert report.stopped == "breaker_open" and report.batches == 1
        assert len(hubspot.requests) == 2 + probe
        assert len(hubspot.requests[-1].json["inputs"]) == 1  # BREAKER_PROBE_BATCH
        assert state(redis_conn)["state"] == "open"
    assert dict(redis_conn.hgetall(ATTEMPTS + "hubspot")) == before
    assert redis_conn.llen(DEAD + "hubspot") == 0
    assert int(redis_conn.hget(DSTATS + "hubspot", "probes") or 0) == 5


def test_a_probe_that_is_answered_closes_the_breaker_and_the_backlog_drains(
    rt: Runtime, redis_conn: redis.Redis, hubspot: HubSpotEmulator
) -> None:
    unsubscribe(rt, EMAILS)
    hubspot.down(503)
    Delivery(rt, "hubspot").run()
    hubspot.up()
    probe_now(redis_conn)
    redis_conn.zadd(
        PENDING + "hubspot", {k: 0 for k in items(redis_conn.hkeys(ATTEMPTS + "hubspot"))}
    )
    report = Delivery(rt, "hubspot").run()
    assert report.stopped == "drained"
    assert hubspot.opted_out == set(EMAILS)
    seen = state(redis_conn)
    assert seen["state"] == "closed" and seen["failures"] == 0
    assert seen["last_success_at"] is not None
    assert redis_conn.get(PAUSE + "hubspot") is None
    assert redis_conn.llen(DEAD + "hubspot") == 0


def test_only_one_job_probes_at_a_time(
    rt: Runtime, redis_conn: redis.Redis, hubspot: HubSpotEmulator
) -> None:
    """While one job's probe is out, another job for the destination waits instead of sending."""
    unsubscribe(rt, EMAILS)
    hubspot.down(503)
    Delivery(rt, "hubspot").run()
    probe_now(redis_conn)
    first = Delivery(rt, "hubspot")
    gate, _ = first.breaker.admit()
    assert gate == breaker.PROBE and state(redis_conn)["state"] == "half_open"
    sent = len(hubspot.requests)
    assert Delivery(rt, "hubspot").run().stopped == "breaker_open"
    assert len(hubspot.requests) == sent
    assert schedule.paused_for(redis_conn, "hubspot") > 0


def test_throttling_and_refusals_do_not_open_the_breaker(
    rt: Runtime, redis_conn: redis.Redis, hubspot: HubSpotEmulator
) -> None:
    unsubscribe(rt, EMAILS)
    hubspot.refuse = set(EMAILS)  # every contact refused: answers, not an outage
    Delivery(rt, "hubspot").run()
    assert redis_conn.llen(DEAD + "hubspot") == 20
    assert state(redis_conn)["state"] == "closed" and state(redis_conn)["failures"] == 0
    hubspot.refuse = set()
    deadletters.replay_dead(rt, "hubspot")
    for _ in range(3):
        hubspot.fail_next(1, 429, headers={"Retry-After": "1"})
        assert Delivery(rt, "hubspot").run().stopped == "throttled"
        redis_conn.delete(PAUSE + "hubspot")
        redis_conn.zadd(
            PENDING + "hubspot",
            {k: 0 for k in items(redis_conn.zrange(PENDING + "hubspot", 0, -1))},
        )
    assert state(redis_conn)["state"] == "closed"


def test_a_per_contact_wait_is_not_an_outage(rt: Runtime, redis_conn: redis.Redis) -> None:
    """A vendor's limit on one contact (``Outcome.deferred``) neither opens nor closes it."""
    d = Delivery(rt, "hubspot")
    for _ in range(5):
        assert d.judge([Outcome.deferred(3600, "24 updates a day")] * 3) == "closed"
    assert state(redis_conn)["failures"] == 0
    d.judge([Outcome.retry("503")])
    assert d.judge([Outcome.deferred(3600, "limit")]) == "closed"
    assert state(redis_conn)["failures"] == 1  # a wait does not reset the count either
    assert d.judge([Outcome.retry("503")]) == "open"


def test_status_and_metrics_show_each_destinations_health(
    rt: Runtime,
    redis_conn: redis.Redis,
    hubspot: HubSpotEmulator,
    make_settings: SettingsFactory,
) -> None:
    """Breaker state, pause reason and end, the oldest due contact's wait, last success and
    last error, per destination, in `status` / `/v1/stats` and in `/metrics`."""
    unsubscribe(rt, EMAILS[:5])
    Delivery(rt, "hubspot").run()
    unsubscribe(rt, EMAILS[5:10])
    hubspot.fail_next(1, 429, headers={"Retry-After": "30"})
    Delivery(rt, "hubspot").run()
    redis_conn.zadd(PENDING + "hubspot", {EMAILS[5]: time.time() - 60})  # due a minute ago

    shown = overview(rt)["destinations"]["hubspot"]
    assert shown["breaker"] == {
        "state": "closed",
        "since": None,
        "failures": 0,
        "next_probe_at": None,
    }
    assert shown["paused"]["reason"] == "throttled (429)"
    assert shown["paused"]["until"] > time.time() + 29
    assert 59 < shown["oldest_pending_s"] < 120
    assert shown["last_success_at"] is not None and shown["last_error_at"] is None

    client = create_app(rt.settings).test_client()
    samples = metric_samples(client.get("/metrics").get_data(as_text=True))
    dest = ("destination", "hubspot")
    assert samples[("syncworker_breaker_state", (dest, ("state", "closed")))] == 1
    assert samples[("syncworker_breaker_state", (dest, ("state", "open")))] == 0
    until = samples[("syncworker_paused_until_seconds", (dest, ("reason", "throttled")))]
    assert until > time.time() + 29
    assert samples[("syncworker_oldest_pending_age_seconds", (dest,))] > 59
    assert samples[("syncworker_last_success_seconds", (dest,))] > 0
    assert samples[("syncworker_last_error_seconds", (dest,))] == 0


def test_the_last_error_is_kept_with_addresses_masked(rt: Runtime, redis_conn: redis.Redis) -> None:
    Delivery(rt, "hubspot").judge([Outcome.retry("503: no answer for jane.doe@example.com")])
    last = str(state(redis_conn)["last_error"])
    assert "503" in last and "jane.doe@example.com" not in last


def test_a_throttled_probe_gives_no_verdict_and_the_next_job_probes_again(
    rt: Runtime, redis_conn: redis.Redis, hubspot: HubSpotEmulator
) -> None:
    unsubscribe(rt, EMAILS)
    hubspot.down(503)
    Delivery(rt, "hubspot").run()
    hubspot.up()
    hubspot.fail_next(1, 429, headers={"Retry-After": "5"})
    probe_now(redis_conn)
    assert Delivery(rt, "hubspot").run().stopped == "throttled"
    seen = state(redis_conn)
    assert seen["state"] == "open" and seen["failures"] == 2  # the 429 counted neither way
    assert 4 < schedule.paused_for(redis_conn, "hubspot") <= 5  # the 429's pause, as usual
    probe_now(redis_conn)
    assert Delivery(rt, "hubspot").run().stopped == "drained"
    assert state(redis_conn)["state"] == "closed"
    assert redis_conn.llen(DEAD + "hubspot") == 0
