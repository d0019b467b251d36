"""Data written by the ledger before the compact record (tests/legacy_ledger.py, and delivery's
writes of that time) is converted by `syncworker migrate`, or when an event touches it, and every
query answers as it did."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import orjson
import pytest
import redis
from click.testing import CliRunner

from syncworker.bootstrap import Runtime
from syncworker.cli import main
from syncworker.config import Settings
from syncworker.events import HygieneEvent, Kind
from syncworker.ops import reconcile, transfer
from syncworker.store.keys import (
    ATTEMPTS,
    CONTACT,
    CONTACTS,
    DEAD,
    EVENT,
    FORGOTTEN,
    INFLIGHT,
    PENDING,
)
from syncworker.store.stats import overview
from tests.conftest import SettingsFactory
from tests.legacy_ledger import Ledger as OldLedger
from tests.legacy_ledger import Route as OldRoute

A, B, C, D, E, F, G = (f"{n}@example.com" for n in "abcdefg")
KEPT = [A, B, C, D, E, G]  # F is forgotten


def settings(make_settings: SettingsFactory) -> Settings:
    return make_settings(
        destinations={
            "hubspot": {"TOKEN": "t", "BASE_URL": "http://127.0.0.1:9"},
            "segment": {"WRITE_KEY": "k", "BASE_URL": "http://127.0.0.1:9"},
        }
    )


def old_ledger(rt: Runtime) -> OldLedger:
    return OldLedger(rt.conn, rt.settings, OldRoute(rt.ledger.route.state, rt.ledger.route.events))


def old_record(conn: redis.Redis, dest: str, email: str, status: dict[str, Any], ok: bool) -> None:
    """What delivery wrote for an outcome before the compact record (Delivery.record)."""
    with conn.pipeline(transaction=True) as pipe:
        pipe.zrem(INFLIGHT + dest, email)
        if ok:
            reasons = sorted(old_ledger_states(conn, email))
            pipe.hset("sw:confirmed:" + dest, email, orjson.dumps(reasons))
        pipe.hset("sw:sync:" + email, dest, orjson.dumps(status))
        pipe.execute()


def old_ledger_states(conn: redis.Redis, email: str) -> list[str]:
    raw = conn.hget("sw:c:" + email, "reasons")
    return sorted(orjson.loads(raw)) if raw else []


def ev(key: str, email: str, kind: Kind, at: float, **extra: Any) -> HygieneEvent:
    return HygieneEvent(key, "sendgrid", "sendgrid", email, kind, at, **extra)


def write_old_layout(rt: Runtime) -> OldLedger:
    old = old_ledger(rt)
    conn = rt.conn
    old.apply(
        [
            ev("a1", A, Kind.HARD_BOUNCE, 100.0, reason="user unknown", smtp_code="550"),
            ev("b1", B, Kind.SOFT_BOUNCE, 100.0, message_id="m1"),
            ev("b2", B, Kind.SOFT_BOUNCE, 101.0, message_id="m1"),  # a retry: one message
            ev("b3", B, Kind.BLOCKED, 102.0, message_id="m2"),
            ev("c1", C, Kind.UNSUBSCRIBE, 100.0),
            ev("c2", C, Kind.RESUBSCRIBE, 200.0),
            ev("e1", E, Kind.SPAM_COMPLAINT, 100.0),
            ev("e2", E, Kind.UNSUBSCRIBE, 101.0),
            ev("f1", F, Kind.HARD_BOUNCE, 100.0),
            *(ev(f"g{i}", G, Kind.UNSUBSCRIBE, 1000.0 + i) for i in range(60)),
        ],
        count=True,
    )
    old.suppress(D, "legal hold", source="cli")
    old.unsuppress(D, "released", source="cli")
    old.forget(F)
    now = time.time()
    # A and G delivered to HubSpot; C's delivery is retrying and has a dead letter
    for email in (A, G):
        conn.zrem(PENDING + "hubspot", email)
        status = {"at": now + 0.123456789, "version": 1, "status": "applied"}
        old_record(conn, "hubspot", email, status, ok=True)
    conn.zrem(PENDING + "hubspot", C)
    conn.zadd(PENDING + "hubspot", {C: now + 60})
    conn.hset(ATTEMPTS + "hubspot", C, orjson.dumps({"n": 2, "first": now}))
    retrying = {
        "at": now,
        "version": 2,
        "status": "retrying",
        "detail": "503 from the destination",
        "attempts": 2,
        "next_at": now + 60,
    }
    old_record(conn, "hubspot", C, retrying, ok=False)
    conn.lpush(DEAD + "hubspot", orjson.dumps({"id": C, "error": "400", "at": now}))
    conn.zadd(INFLIGHT + "hubspot", {E: now + 120})
    conn.zrem(PENDING + "hubspot", E)
    return old


def queries(rt: Runtime, read: Callable[[str], Any]) -> dict[str, Any]:
    return {email: read(email) for email in [*KEPT, F]}


def delivery_keys(conn: redis.Redis) -> dict[str, Any]:
    """Pending and in-flight sets, attempts, dead letters, stored events, the forgotten hash."""
    out: dict[str, Any] = {}
    for raw in conn.scan_iter(count=1000):
        key = raw.decode()
        if key.startswith((PENDING, INFLIGHT)):
            out[key] = conn.zrange(key, 0, -1, withscores=True)
        elif key.startswith((ATTEMPTS, FORGOTTEN)) or key.startswith(EVENT):
            out[key] = conn.dump(key)
        elif key.startswith(DEAD):
            out[key] = conn.lrange(key, 0, -1)
    return out


def counts(rt: Runtime) -> dict[str, Any]:
    """What status says of each destination's work (its timings aside)."""
    keep = ("pending", "in_flight", "dead_letters", "paused", "counters")
    snapshot = overview(rt)
    return {
        "destinations": {
            name: {k: v for k, v in d.items() if k in keep}
            for name, d in snapshot["destinations"].items()
        },
        "counters": snapshot["counters"],
    }


def close(a: Any, b: Any) -> bool:
    """Equal, floats within 1 ms: the old layout kept an address's update time and its sync
    statuses' times with 17 significant digits, the record keeps 14 (0.1 ms for today's times)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float | int) and isinstance(b, float | int):
        return abs(a - b) < 1e-3
    return bool(a == b)


def old_export(old: OldLedger) -> list[list[str]]:
    rows = []
    for state in old.states(sorted(KEPT)):
        if state.suppressed:
            rows.append(
                [state.email, "yes", ";".join(sorted(state.reasons)), iso(state.updated_at)]
            )
    return rows


def iso(at: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")


def test_migrate_converts_the_old_layout_and_every_query_answers_the_same(
    redis_url: str,
    redis_conn: redis.Redis,
    make_settings: SettingsFactory,
    use_runtime: Callable[[Settings], Runtime],
) -> None:
    rt = use_runtime(settings(make_settings))
    old = write_old_layout(rt)
    before = queries(rt, lambda e: v.as_json() if (v := old.view(e)) else None)
    states_before = {s.email: s for s in old.states(KEPT)}
    export_before = old_export(old)
    keys_before = delivery_keys(redis_conn)
    status_before = counts(rt)
    assert redis_conn.scard(CONTACTS) == len(KEPT)

    # interrupted part-way, then run to the end by the command, then run again
    class Stop(Exception):
        pass

    def stop(converted: int) -> None:
        raise Stop

    with pytest.raises(Stop):
        rt.ledger.migrate(batch=1, on_batch=stop)
    left = sum(1 for _ in redis_conn.scan_iter(CONTACT + "*", _type="hash"))
    assert 0 < left < len(KEPT)
    env = {"REDIS_URL": redis_url}
    result = CliRunner().invoke(main, ["migrate", "--batch", "2"], env=env)
    assert result.exit_code == 0, result.output
    assert f"{left} converted" in result.output
    assert f"{len(KEPT)} records in the ledger" in result.output
    again = CliRunner().invoke(main, ["migrate"], env=env)
    assert again.exit_code == 0 and "0 converted" in again.output, again.output

    # the old keys are gone; everything delivery holds is as it was
    assert not redis_conn.exists(CONTACTS)
    for pattern in ("sw:h:*", "sw:sync:*", "sw:confirmed:*"):
        assert list(redis_conn.scan_iter(pattern)) == [], pattern
    assert all(redis_conn.type(CONTACT + e) == b"string" for e in KEPT)
    assert delivery_keys(redis_conn) == keys_before
    assert counts(rt) == status_before

    # lookup / the API's view, state, export, counts
    after = queries(rt, lambda e: v.as_json() if (v := rt.ledger.view(e)) else None)
    assert after[F] is None
    for email in KEPT:
        assert close(after[email], before[email]), (email, after[email], before[email])
    for state in rt.ledger.states(KEPT):
        assert close(asdict(state), asdict(states_before[state.email])), state.email
    assert sorted(list(transfer.export_rows(rt))[1:]) == export_before
    assert rt.ledger.contact_count() == len(KEPT)
    assert rt.ledger.confirmed("hubspot", [A, C, G]) == [
        frozenset({"hard_bounce"}), frozenset(), frozenset({"unsubscribe"}),
    ]  # fmt: skip

    # the policy carries on from the converted state
    result_ = rt.ledger.apply(
        [
            ev("a1", A, Kind.HARD_BOUNCE, 100.0),  # in the converted history: a duplicate
            ev("g0", G, Kind.UNSUBSCRIBE, 1000.0),  # left the history; its old marker lives on
            ev("b4", B, Kind.SOFT_BOUNCE, 103.0, message_id="m3"),  # the third message
            ev("c0", C, Kind.UNSUBSCRIBE, 150.0),  # older than the resubscribe
            ev("d0", D, Kind.HARD_BOUNCE, 1.0),  # older than the manual unsuppress
            ev("f2", F, Kind.SOFT_BOUNCE, 500.0, message_id="m9"),  # forgotten, seen again
        ]
    )
    assert result_.effects == {"duplicate": 2, "suppressed": 1, "stale": 2, "counted": 1}
    assert rt.ledger.state(B).suppressed
    assert not rt.ledger.state(C).suppressed and not rt.ledger.state(D).suppressed
    assert set(rt.ledger.state(F).reasons) == {"hard_bounce"}

    # reconcile: every suppressed contact pending for the destination
    rt.conn.delete(PENDING + "hubspot")
    progress = reconcile.start(rt, "hubspot", restart=True)
    assert progress.total == len(KEPT) + 1  # F is back
    reconcile.run(rt, "hubspot", progress, chunk=2)
    assert rt.conn.zcard(PENDING + "hubspot") == 5
    assert all(rt.conn.zscore(PENDING + "hubspot", e) is not None for e in (A, B, E, F, G))


def test_an_event_for_an_address_in_the_old_layout_converts_it_first(
    redis_conn: redis.Redis,
    make_settings: SettingsFactory,
    use_runtime: Callable[[Settings], Runtime],
) -> None:
    rt = use_runtime(settings(make_settings))
    old = write_old_layout(rt)
    before = old.view(E)
    assert before is not None
    result = rt.ledger.apply([ev("e3", E, Kind.HARD_BOUNCE, 300.0)])
    assert result.effects == {"suppressed": 1} and result.marked == {"hubspot", "segment"}
    assert redis_conn.type(CONTACT + E) == b"string"
    assert not redis_conn.sismember(CONTACTS, E) and not redis_conn.exists("sw:h:" + E)
    view = rt.ledger.view(E)
    assert view is not None
    assert set(view.state.reasons) == {"spam_complaint", "unsubscribe", "hard_bounce"}
    assert view.state.version == before.state.version + 1
    assert view.history[1:] == before.history
    assert view.sync["hubspot"]["status"] == "pending"
    # one in the old layout is converted as it is read, too; a delivery status write as well
    assert rt.ledger.state(A).reasons["hard_bounce"].detail == "550 user unknown"
    assert redis_conn.type(CONTACT + A) == b"string"
    with redis_conn.pipeline(transaction=True) as pipe:
        rt.ledger.write_sync(pipe, C, "hubspot", {"status": "applied", "at": 5.0, "version": 2})
        pipe.execute()
    assert rt.ledger.sync_status([C])[0]["hubspot"] == {
        "status": "applied", "at": 5.0, "version": 2,
    }  # fmt: skip
    assert rt.ledger.contact_count() == len(KEPT)
