"""The ledger's rules, applied in the worker (syncworker/record.py), against the Lua script the
previous release applied them with (tests/lua_ledger.py): for any sequence of events, forgets
included, every event has the same effect and every record the same state, reasons, history,
soft-bounce counts, clearings and pending marks."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncworker import codec, record
from syncworker.config import Settings
from syncworker.events import MANUAL, HygieneEvent, Kind
from syncworker.ledger import Ledger, Route
from syncworker.record import UNSUPPRESS
from syncworker.store.keys import CONTACT, EVENT, PENDING
from tests import lua_ledger
from tests.replies import optional

pytestmark = pytest.mark.slow  # a long property search against the reference script

KINDS = [k.value for k in Kind] + [MANUAL, UNSUPPRESS]
ADDRESSES = ["a@example.com", "b@example.com"]
SETTINGS = Settings().replace(
    history_limit=3, soft_bounce_threshold=2, soft_bounce_window_s=4.0, dedupe_ttl_s=10**6
)
ROUTE = Route.build({"crm": (False, frozenset(KINDS)), "stream": (True, frozenset(KINDS))})

step = st.one_of(
    st.tuples(
        st.just("event"),
        st.sampled_from(ADDRESSES),
        # soft bounces and blocks twice as often: their counting has the most cases
        st.sampled_from(KINDS + [Kind.SOFT_BOUNCE.value, Kind.BLOCKED.value] * 2),
        st.integers(0, 8),  # occurred_at: ties and older events are common
        st.integers(0, 7),  # the key: repeats are duplicates
        st.sampled_from([None, "m1", "m2"]),
        st.sampled_from([None, "550 5.1.1 no such user"]),
    ),
    st.tuples(st.just("forget"), st.sampled_from(ADDRESSES)),
)


def event(address: str, kind: str, at: int, key: int, mid: str | None, why: str | None) -> Any:
    stream_kind = {MANUAL: Kind.UNSUBSCRIBE, UNSUPPRESS: Kind.RESUBSCRIBE}.get(kind, kind)
    return HygieneEvent(
        f"{address}:{key}",
        "esp",
        "esp",
        address,
        Kind(stream_kind),
        1000.0 + at,
        reason=why,
        message_id=mid,
    )


def comparable(raw: bytes | None) -> Any:
    """A record without the times it was written at (each ledger writes at its own ``now``)."""
    if raw is None:
        return None
    rec = record.unpack(raw)
    return {
        "version": rec.version,
        "suppressed": rec.suppressed,
        "reasons": {k: (r.at, r.source, r.detail) for k, r in rec.reasons.items()},
        "history": [(e.at, e.kind, e.key, e.effect, e.source, e.detail) for e in rec.history],
        "soft": sorted(tuple(s) for s in rec.soft),
        "cleared": rec.cleared,
        "seen": [x[0] for x in rec.seen],
        "sync": {d: (e[0], e[2], e[3]) for d, e in rec.sync.items()},
    }


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=st.lists(step, min_size=1, max_size=30), batched=st.booleans())
def test_the_worker_applies_every_event_as_the_reference_script_did(
    redis_conn: redis.Redis, steps: list[Any], batched: bool
) -> None:
    ours = redis_conn
    ours.flushall()
    kw = redis_conn.connection_pool.connection_kwargs
    reference = redis.Redis(host=kw["host"], port=kw["port"], db=1)
    ledger = Ledger(ours, SETTINGS, ROUTE)
    old = Ledger(reference, SETTINGS, ROUTE)  # its forget and reads; applying is the script's
    expected: list[str] = []
    got: list[str] = []
    pending: list[tuple[HygieneEvent, str]] = []

    def flush() -> None:
        if pending:
            result = ledger._apply_events(list(pending))
            assert not result.failed
            got.extend(e for e in result.effects.elements())
            pending.clear()

    for s in steps:
        if s[0] == "forget":
            flush()
            ledger.forget(s[1])
            old.forget(s[1])
            continue
        _, address, kind, at, key, mid, why = s
        ev = event(address, kind, at, key, mid, why)
        detail = why
        expected.append(
            lua_ledger.apply(
                reference,
                SETTINGS,
                ev,
                kind,
                detail,
                ROUTE.state.get(kind, ()),
                ROUTE.events.get(kind, ()),
                codec_form(ev),
            )
        )
        pending.append((ev, kind))
        if not batched:
            flush()
    flush()
    assert sorted(got) == sorted(expected)
    if not batched:
        assert got == expected
    for address in ADDRESSES:
        assert comparable(optional(ours.get(CONTACT + address))) == comparable(
            optional(reference.get(CONTACT + address))
        ), address
    for dest in ("crm", "stream"):
        assert set(ours.zrange(PENDING + dest, 0, -1)) == set(
            reference.zrange(PENDING + dest, 0, -1)
        )
    assert sorted(ours.keys(EVENT + "*")) == sorted(reference.keys(EVENT + "*"))
    assert ours.get("sw:contacts:n") == reference.get("sw:contacts:n")
    reference.flushdb()
    reference.close()


def codec_form(ev: HygieneEvent) -> bytes:
    return orjson.dumps(codec.dump(ev))
