"""The suppression ledger's policy, dedupe, ordering and pending marks, on a real Redis."""

from __future__ import annotations

import multiprocessing
import threading

import orjson
import pytest
import redis

from syncworker import codec
from syncworker.config import Settings
from syncworker.events import HygieneEvent, Kind
from syncworker.ledger import APPLY_CHUNK, Ledger, Route, SyncWrite
from syncworker.store.keys import EVENT, PENDING
from tests.replies import data, items

ALL = frozenset(k.value for k in Kind)


def ledger(conn: redis.Redis, **settings: object) -> Ledger:
    route = Route.build(
        {
            "crm": (False, ALL),
            "stream": (True, ALL),
            "bounces_only": (True, frozenset({"hard_bounce"})),
        }
    )
    return Ledger(conn, Settings().replace(**settings), route)


def ev(key: str, kind: Kind, at: float, email: str = "jane@example.com") -> HygieneEvent:
    return HygieneEvent(key, "sendgrid", "sendgrid", email, kind, at, reason="550 5.1.1")


def test_hard_bounce_suppresses_at_once_with_reason_time_and_source(
    redis_conn: redis.Redis,
) -> None:
    led = ledger(redis_conn)
    result = led.apply([ev("k1", Kind.HARD_BOUNCE, 1000.0)])
    assert result.effects == {"suppressed": 1}
    state = led.state("jane@example.com")
    assert state.suppressed
    reason = state.reasons["hard_bounce"]
    assert (reason.at, reason.source, reason.detail) == (1000.0, "sendgrid", "550 5.1.1")


def test_soft_bounce_is_not_suppressed_until_threshold_within_window(
    redis_conn: redis.Redis,
) -> None:
    led = ledger(redis_conn, soft_bounce_threshold=3, soft_bounce_window_s=100.0)
    led.apply([ev("a", Kind.SOFT_BOUNCE, 0.0), ev("b", Kind.SOFT_BOUNCE, 150.0)])
    assert not led.state("jane@example.com").suppressed
    # 0 is outside the 100 s window ending at 220: still only two within it
    led.apply([ev("c", Kind.BLOCKED, 220.0)])
    assert not led.state("jane@example.com").suppressed
    result = led.apply([ev("d", Kind.SOFT_BOUNCE, 230.0)])
    assert result.effects == {"suppressed": 1}
    assert set(led.state("jane@example.com").reasons) == {"soft_bounce"}


def test_retries_of_one_message_count_as_one_soft_bounce(redis_conn: redis.Redis) -> None:
    """Mailgun, Postal and Mailtrap report every retry of a deferred message: one message, one."""
    led = ledger(redis_conn, soft_bounce_threshold=3)
    retries = [
        HygieneEvent(
            f"r{i}",
            "mailgun",
            "mailgun",
            "jane@example.com",
            Kind.SOFT_BOUNCE,
            100.0 + i,
            message_id="m1",
        )  # fmt: skip
        for i in range(5)
    ]
    assert led.apply(retries).effects == {"counted": 5}
    assert not led.state("jane@example.com").suppressed
    others = [
        HygieneEvent(
            f"o{i}",
            "mailgun",
            "mailgun",
            "jane@example.com",
            Kind.SOFT_BOUNCE,
            200.0 + i,
            message_id=f"m{i + 2}",
        )  # fmt: skip
        for i in range(2)
    ]
    assert led.apply(others).effects == {"counted": 1, "suppressed": 1}
    assert led.state("jane@example.com").suppressed


def test_duplicate_event_key_is_applied_once(redis_conn: redis.Redis) -> None:
    led = ledger(redis_conn)
    first = led.apply([ev("same", Kind.UNSUBSCRIBE, 10.0)])
    again = led.apply([ev("same", Kind.UNSUBSCRIBE, 10.0), ev("same", Kind.UNSUBSCRIBE, 10.0)])
    assert first.effects == {"suppressed": 1}
    assert again.effects == {"duplicate": 2}
    view = led.view("jane@example.com")
    assert view is not None and len(view.history) == 1
    assert redis_conn.zcard(PENDING + "stream") == 1


def test_older_unsubscribe_does_not_override_newer_resubscribe(redis_conn: redis.Redis) -> None:
    led = ledger(redis_conn)
    led.apply([ev("u1", Kind.UNSUBSCRIBE, 100.0), ev("r1", Kind.RESUBSCRIBE, 200.0)])
    assert not led.state("jane@example.com").suppressed
    late = led.apply([ev("u0", Kind.UNSUBSCRIBE, 150.0)])  # delivered late, happened earlier
    assert late.effects == {"stale": 1}
    assert not led.state("jane@example.com").suppressed
    led.apply([ev("u2", Kind.UNSUBSCRIBE, 300.0)])
    assert led.state("jane@example.com").suppressed


def test_resubscribe_older_than_unsubscribe_is_stale(redis_conn: redis.Redis) -> None:
    led = ledger(redis_conn)
    led.apply([ev("u", Kind.UNSUBSCRIBE, 300.0)])
    assert led.apply([ev("r", Kind.RESUBSCRIBE, 200.0)]).effects == {"stale": 1}
    assert led.state("jane@example.com").suppressed


def test_resubscribe_does_not_clear_a_hard_bounce(redis_conn: redis.Redis) -> None:
    led = ledger(redis_conn)
    led.apply([ev("h", Kind.HARD_BOUNCE, 100.0), ev("u", Kind.UNSUBSCRIBE, 110.0)])
    led.apply([ev("r", Kind.RESUBSCRIBE, 200.0)])
    state = led.state("jane@example.com")
    assert state.suppressed and set(state.reasons) == {"hard_bounce"}


def test_manual_unsuppress_clears_older_reasons_and_is_recorded(redis_conn: redis.Redis) -> None:
    led = ledger(redis_conn)
    led.apply([ev("h", Kind.HARD_BOUNCE, 100.0), ev("s", Kind.SOFT_BOUNCE, 101.0)])
    led.unsuppress("Jane@Example.com", "verified by phone")
    state = led.state("jane@example.com")
    assert not state.suppressed and state.reasons == {}
    # an event that happened before the unsuppress but arrives after it changes nothing
    assert led.apply([ev("late", Kind.HARD_BOUNCE, 150.0)]).effects == {"stale": 1}
    view = led.view("jane@example.com")
    assert view is not None
    assert view.history[1]["kind"] == "manual_unsuppress"
    assert view.history[1]["detail"] == "verified by phone"


def test_manual_changes_reach_state_destinations_and_event_streams(
    redis_conn: redis.Redis,
) -> None:
    """A manual suppress is an unsubscribe to event streams and an unsuppress a resubscribe, as
    the README promises; streams that take neither kind get nothing."""
    led = ledger(redis_conn)
    result = led.suppress("Bob@Example.com", "asked by email", source="api")
    assert led.state("bob@example.com").suppressed
    assert result.marked == {"crm", "stream"}
    assert redis_conn.zscore(PENDING + "crm", "bob@example.com") is not None
    (key,) = items(redis_conn.zrange(PENDING + "stream", 0, -1))
    stored = codec.load(orjson.loads(data(redis_conn.get(EVENT + key.decode()))))
    assert (stored.email, stored.kind, stored.source, stored.reason) == (
        "bob@example.com",
        Kind.UNSUBSCRIBE,
        "api",
        "asked by email",
    )
    result = led.unsuppress("bob@example.com", "verified", source="api")
    assert result.marked == {"crm", "stream"}
    kinds = sorted(
        codec.load(orjson.loads(data(redis_conn.get(EVENT + k.decode())))).kind
        for k in items(redis_conn.zrange(PENDING + "stream", 0, -1))
    )
    assert kinds == [Kind.RESUBSCRIBE, Kind.UNSUBSCRIBE]
    assert redis_conn.zcard(PENDING + "bounces_only") == 0


def test_manual_change_refuses_what_is_not_an_address(redis_conn: redis.Redis) -> None:
    led = ledger(redis_conn)
    with pytest.raises(codec.InvalidEvent):
        led.suppress("not an address", "typo")
    assert redis_conn.dbsize() == 0


def test_stream_destinations_get_every_field_the_parser_produced(redis_conn: redis.Redis) -> None:
    """The stored event is the codec's form: reason and SMTP code stay apart, nothing is lost."""
    led = ledger(redis_conn)
    event = HygieneEvent(
        "k-fields",
        "sg-main",
        "sendgrid",
        "jane@example.com",
        Kind.HARD_BOUNCE,
        1000.25,
        message_id="m-1",
        reason="mailbox unknown",
        smtp_code="550",
        list_id="list-7",
    )
    led.apply([event])
    stored = codec.load(orjson.loads(data(redis_conn.get(EVENT + "k-fields"))))
    assert stored == event


def test_history_is_capped(redis_conn: redis.Redis) -> None:
    led = ledger(redis_conn, history_limit=5, soft_bounce_threshold=100)
    led.apply([ev(f"k{i}", Kind.SOFT_BOUNCE, float(i)) for i in range(12)])
    view = led.view("jane@example.com")
    assert view is not None
    assert [h["key"] for h in view.history] == ["k11", "k10", "k9", "k8", "k7"]


def test_state_destinations_are_marked_only_when_state_changes(redis_conn: redis.Redis) -> None:
    led = ledger(redis_conn)
    first = led.apply([ev("u1", Kind.UNSUBSCRIBE, 10.0)])
    redis_conn.delete(PENDING + "crm")
    second = led.apply([ev("u2", Kind.UNSUBSCRIBE, 20.0)])  # same state: nothing for the CRM
    assert first.marked == {"crm", "stream"}
    assert second.marked == {"stream"}
    assert redis_conn.zcard(PENDING + "crm") == 0
    assert redis_conn.zcard(PENDING + "stream") == 2


def test_event_destinations_get_only_the_kinds_they_care_about(redis_conn: redis.Redis) -> None:
    led = ledger(redis_conn)
    led.apply([ev("u", Kind.UNSUBSCRIBE, 10.0), ev("h", Kind.HARD_BOUNCE, 11.0)])
    assert redis_conn.zrange(PENDING + "bounces_only", 0, -1) == [b"h"]
    assert redis_conn.get("sw:ev:h") is not None


def test_concurrent_writers_never_lose_an_event(redis_conn: redis.Redis, redis_url: str) -> None:
    """Two processes' worth of writers on one address: every soft bounce is counted once."""

    def writer(prefix: str) -> None:
        conn = redis.Redis.from_url(redis_url)
        led = ledger(conn, soft_bounce_threshold=1000, history_limit=1000)
        for i in range(100):
            led.apply([ev(f"{prefix}{i}", Kind.SOFT_BOUNCE, 1000.0 + i)])
        conn.close()

    threads = [threading.Thread(target=writer, args=(p,)) for p in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    view = ledger(redis_conn, history_limit=1000).view("jane@example.com")
    assert view is not None
    assert len(view.history) == 200
    assert len({h["key"] for h in view.history}) == 200


def test_keys_that_left_the_history_are_still_duplicates_within_the_ttl(
    redis_conn: redis.Redis,
) -> None:
    """Dedupe is per address: the history's keys, then hashes of the keys that left it, each for
    ``dedupe_ttl_s`` after it was recorded; a replayed batch longer than the history applies
    nothing twice."""
    led = ledger(redis_conn, history_limit=3, soft_bounce_threshold=100)
    batch = [ev(f"k{i}", Kind.SOFT_BOUNCE, 1.0 + i) for i in range(20)]
    assert led.apply(batch).effects == {"counted": 20}
    assert led.apply(batch).effects == {"duplicate": 20}
    view = led.view("jane@example.com")
    assert view is not None
    assert [h["key"] for h in view.history] == ["k19", "k18", "k17"]
    other = ev("k1", Kind.SOFT_BOUNCE, 1.0, email="john@example.com")  # keys are per address
    assert led.apply([other]).effects == {"counted": 1}
    # past the TTL (0 s here; a state destination only: an event stream's copy needs a TTL)
    settings = Settings().replace(history_limit=3, soft_bounce_threshold=100, dedupe_ttl_s=0)
    expired = Ledger(redis_conn, settings, Route.build({"crm": (False, ALL)}))
    assert expired.apply(batch[:1]).effects == {"counted": 1}


def test_an_address_is_one_key_however_many_destinations_and_events(
    redis_conn: redis.Redis,
) -> None:
    """State, reasons, history, dedupe and every destination's sync status live in one record:
    no key per event stays once the event-stream events are delivered."""
    led = ledger(redis_conn)
    led.apply([ev(f"k{i}", Kind.HARD_BOUNCE, float(i)) for i in range(5)])
    with redis_conn.pipeline(transaction=True) as pipe:
        for dest in ("crm", "stream"):
            led.write_sync(pipe, "jane@example.com", dest, {"status": "applied", "at": 9.5})
        pipe.execute()
    redis_conn.delete(*redis_conn.keys(EVENT + "*"), *redis_conn.keys(PENDING + "*"))
    keys = sorted(k.decode() for k in items(redis_conn.keys("*")))
    assert keys == ["sw:c:jane@example.com", "sw:contacts:n"]  # the record, the ledger's count
    view = led.view("jane@example.com")
    assert view is not None and len(view.history) == 5
    assert view.sync == {
        "crm": {"status": "applied", "at": 9.5, "version": 0},
        "stream": {"status": "applied", "at": 9.5, "version": 0},
    }
    assert led.confirmed("crm", ["jane@example.com"]) == [frozenset()]


def test_an_event_redis_refuses_fails_alone_in_its_batch(redis_conn: redis.Redis) -> None:
    """Events go to Redis in chunks of APPLY_CHUNK per script call: one whose record Redis cannot
    read fails with Redis's reason, and every other event of the batch, in its chunk and in the
    others, is applied once."""
    led = ledger(redis_conn)
    n = APPLY_CHUNK * 2 + 50
    events = [ev(f"k{i}", Kind.UNSUBSCRIBE, 1000.0 + i, f"u{i}@example.com") for i in range(n)]
    bad = APPLY_CHUNK + 7  # in the second chunk
    redis_conn.rpush("sw:c:" + events[bad].email, "not a record")  # a key of the wrong type
    result = led.apply(events, count=True)
    assert [i for i, _ in result.failed] == [bad]
    assert "WRONGTYPE" in result.failed[0][1]
    assert result.effects == {"suppressed": n - 1, "failed": 1}
    assert all(led.state(e.email).suppressed for i, e in enumerate(events) if i != bad)
    assert redis_conn.hget("sw:stats", "ledger:suppressed") == str(n - 1).encode()
    assert led.apply(events, count=True).effects == {"duplicate": n - 1, "failed": 1}
    assert redis_conn.zcard(PENDING + "crm") == n - 1


def test_a_sync_status_redis_cannot_write_is_skipped_and_the_others_are_written(
    redis_conn: redis.Redis,
) -> None:
    """Sync statuses are written many per script call; one record Redis cannot read spoils none
    of the others, in its call or the next."""
    led = ledger(redis_conn)
    n = APPLY_CHUNK + 30
    emails = [f"s{i}@example.com" for i in range(n)]
    led.apply([ev(f"k{i}", Kind.HARD_BOUNCE, 1000.0 + i, e) for i, e in enumerate(emails)])
    bad = 3
    redis_conn.delete("sw:c:" + emails[bad])
    redis_conn.rpush("sw:c:" + emails[bad], "not a record")
    writes = [SyncWrite(e, "crm", {"status": "applied", "at": 5.0, "version": 1}) for e in emails]
    with redis_conn.pipeline(transaction=True) as pipe:
        led.write_syncs(pipe, writes)
        pipe.execute()
    statuses = led.sync_status([e for i, e in enumerate(emails) if i != bad])
    assert all(s["crm"]["status"] == "applied" for s in statuses)
    assert redis_conn.type("sw:c:" + emails[bad]) == b"list"


def _apply_in_process(redis_url: str, prefix: str, emails: list[str], rounds: int) -> None:
    conn = redis.Redis.from_url(redis_url)
    led = ledger(conn, soft_bounce_threshold=10**6, history_limit=1000)
    for r in range(rounds):
        result = led.apply(
            [ev(f"{prefix}{r}-{e}", Kind.SOFT_BOUNCE, 1000.0 + r, e) for e in emails], count=True
        )
        assert not result.failed, result.failed[:3]
    conn.close()


def _sync_in_process(redis_url: str, emails: list[str], rounds: int) -> None:
    conn = redis.Redis.from_url(redis_url)
    led = ledger(conn)
    for r in range(rounds):
        with conn.pipeline(transaction=True) as pipe:
            led.write_syncs(
                pipe, [SyncWrite(e, "crm", {"status": "applied", "at": float(r)}) for e in emails]
            )
            pipe.execute()
    conn.close()


@pytest.mark.slow
def test_processes_writing_the_same_records_lose_nothing(
    redis_conn: redis.Redis, redis_url: str
) -> None:
    """Records are read, changed in the worker and written only if unchanged: three processes
    applying events to the same addresses, and a fourth writing their sync statuses meanwhile,
    lose no event, count each once and keep the last sync status."""
    emails = [f"p{i}@example.com" for i in range(20)]
    rounds = 40
    ctx = multiprocessing.get_context("fork")
    procs = [
        ctx.Process(target=_apply_in_process, args=(redis_url, p, emails, rounds)) for p in "abc"
    ]
    procs.append(ctx.Process(target=_sync_in_process, args=(redis_url, emails, rounds)))
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    led = ledger(redis_conn, history_limit=1000)
    for email in emails:
        view = led.view(email)
        assert view is not None
        assert len({h["key"] for h in view.history}) == 3 * rounds, email
        assert view.sync["crm"]["status"] in ("applied", "pending")
    assert redis_conn.hget("sw:stats", "ledger:counted") == str(3 * rounds * len(emails)).encode()
    assert redis_conn.get("sw:contacts:n") == str(len(emails)).encode()


def test_a_sync_status_set_in_the_worker_matches_the_scripts_and_never_loses_a_change(
    redis_conn: redis.Redis,
) -> None:
    """Given the record as read, the worker sets the status and Redis only compares and stores;
    the script sets it when the record changed since (an event applied meanwhile stays)."""
    led = ledger(redis_conn, history_limit=10)
    emails = ["x@example.com", "y@example.com"]
    led.apply([ev(f"k-{e}", Kind.HARD_BOUNCE, 1000.0, e) for e in emails])
    raws = {e: data(r) for e, r in zip(emails, led.raw_records(emails), strict=True)}
    status = {"status": "applied", "at": 5.5, "version": 1, "detail": "ok"}
    with redis_conn.pipeline(transaction=True) as pipe:
        led.write_syncs(pipe, [SyncWrite("x@example.com", "crm", status, ["hard_bounce"])])
        led.write_syncs(
            pipe, [SyncWrite("y@example.com", "crm", status, ["hard_bounce"])], read=raws
        )
        pipe.execute()
    x, y = (led.view(e) for e in emails)
    assert x is not None and y is not None
    assert x.sync == y.sync and x.sync["crm"]["status"] == "applied"
    assert led.confirmed("crm", emails) == [frozenset({"hard_bounce"})] * 2
    # y changes after its read: the status is still set, and the change is kept
    raws = {e: data(r) for e, r in zip(emails, led.raw_records(emails), strict=True)}
    led.apply([ev("later", Kind.UNSUBSCRIBE, 2000.0, "y@example.com")])
    with redis_conn.pipeline(transaction=True) as pipe:
        later = {"status": "applied", "at": 9.0, "version": 2}
        led.write_syncs(pipe, [SyncWrite("y@example.com", "crm", later, None)], read=raws)
        pipe.execute()
    y = led.view("y@example.com")
    assert y is not None
    assert set(y.state.reasons) == {"hard_bounce", "unsubscribe"}
    assert (y.sync["crm"]["status"], y.sync["crm"]["version"]) == ("applied", 2)
    assert led.confirmed("crm", ["y@example.com"]) == [frozenset({"hard_bounce"})]


def test_an_address_whose_record_is_corrupt_fails_alone(redis_conn: redis.Redis) -> None:
    """A record that is not the ledger's JSON (or is, with a part of the wrong shape) fails its
    address's events, with the reason; the batch's other addresses are applied."""
    led = ledger(redis_conn)
    redis_conn.set("sw:c:bad@example.com", b"not json")
    redis_conn.set(
        "sw:c:odd@example.com", orjson.dumps([1, 1, 0, {}, [[1.0, 2.0, "s", "k"]], {}, [7]])
    )
    events = [
        ev("a", Kind.HARD_BOUNCE, 1000.0, "bad@example.com"),
        ev("b", Kind.HARD_BOUNCE, 1000.0, "good@example.com"),
        ev("c", Kind.SOFT_BOUNCE, 1000.0, "odd@example.com"),
    ]
    result = led.apply(events)
    assert [(i, why.split(":")[0]) for i, why in result.failed] == [
        (0, "unreadable ledger record"),
        (2, "unreadable ledger record"),
    ]
    assert led.state("good@example.com").suppressed
    assert redis_conn.get("sw:c:bad@example.com") == b"not json"
