"""`syncworker forget EMAIL`: erasure that leaves only a hashed suppression behind."""

from __future__ import annotations

from collections.abc import Callable

import orjson
import redis
from click.testing import CliRunner

from syncworker.bootstrap import Runtime
from syncworker.cli import main
from syncworker.config import Settings
from syncworker.events import HygieneEvent, Kind
from syncworker.ledger import address_hash
from syncworker.ops import erasure
from syncworker.store.keys import DEAD, FORGOTTEN, PENDING, QUARANTINE
from tests.conftest import SettingsFactory
from tests.replies import data, fields, items, scored, text

JANE = "jane.doe@example.com"
BOB = "bob@example.com"


def everywhere(conn: redis.Redis, needle: str) -> list[str]:
    """Every key whose name or value mentions ``needle``."""
    found = []
    for raw_key in conn.scan_iter(count=1000):
        key = raw_key.decode()
        kind = text(conn.type(raw_key))
        values: list[bytes]
        if kind == "string":
            values = [data(conn.get(raw_key) or b"")]
        elif kind == "hash":
            values = [k + b"=" + v for k, v in fields(conn.hgetall(raw_key)).items()]
        elif kind == "list":
            values = items(conn.lrange(raw_key, 0, -1))
        elif kind == "set":
            values = items(conn.smembers(raw_key))
        else:
            values = [m for m, _ in scored(conn.zrange(raw_key, 0, -1, withscores=True))]
        if needle in key or any(needle.encode() in v for v in values):
            found.append(key)
    return found


def runtime_with_everything(
    make_settings: SettingsFactory, use_runtime: Callable[[Settings], Runtime]
) -> Runtime:
    settings = make_settings(
        destinations={
            "hubspot": {"TOKEN": "t", "BASE_URL": "http://127.0.0.1:9"},
            "segment": {"WRITE_KEY": "k", "BASE_URL": "http://127.0.0.1:9"},
        }
    )
    rt = use_runtime(settings)
    events = [
        HygieneEvent("j1", "sendgrid", "sendgrid", JANE, Kind.HARD_BOUNCE, 100.0, reason="x"),
        HygieneEvent("j2", "sendgrid", "sendgrid", JANE, Kind.UNSUBSCRIBE, 101.0),
        HygieneEvent("b1", "sendgrid", "sendgrid", BOB, Kind.UNSUBSCRIBE, 102.0),
    ]
    rt.ledger.apply(events)
    rt.conn.lpush(DEAD + "hubspot", orjson.dumps({"id": JANE, "email": JANE, "error": "400"}))
    rt.conn.lpush(QUARANTINE, orjson.dumps({"source": "postmark", "raw": {"Email": JANE}}))
    return rt


def test_forget_leaves_only_a_hashed_suppression(
    make_settings: SettingsFactory,
    use_runtime: Callable[[Settings], Runtime],
    redis_conn: redis.Redis,
) -> None:
    rt = runtime_with_everything(make_settings, use_runtime)
    assert everywhere(redis_conn, JANE)  # the address is in the ledger, queues, dead letters...
    assert erasure.forget(rt, "Jane.Doe@Example.com") is True
    assert everywhere(redis_conn, JANE) == []
    kept = orjson.loads(redis_conn.get(FORGOTTEN + address_hash(JANE)) or b"{}")
    assert set(kept) == {"hard_bounce", "unsubscribe"}
    # the other address is untouched
    assert rt.ledger.state(BOB).suppressed
    assert redis_conn.zscore(PENDING + "hubspot", BOB) is not None


def test_a_forgotten_address_reported_again_is_suppressed_again(
    make_settings: SettingsFactory,
    use_runtime: Callable[[Settings], Runtime],
    redis_conn: redis.Redis,
) -> None:
    rt = runtime_with_everything(make_settings, use_runtime)
    erasure.forget(rt, JANE)
    rt.ledger.apply([HygieneEvent("j3", "postmark", "postmark", JANE, Kind.SOFT_BOUNCE, 500.0)])
    state = rt.ledger.state(JANE)
    assert state.suppressed
    assert {"hard_bounce", "unsubscribe"} <= set(state.reasons)
    assert redis_conn.get(FORGOTTEN + address_hash(JANE)) is None  # restored into the ledger


def test_forgetting_an_active_address_keeps_nothing(
    make_settings: SettingsFactory,
    use_runtime: Callable[[Settings], Runtime],
    redis_conn: redis.Redis,
) -> None:
    rt = use_runtime(make_settings())
    rt.ledger.apply([HygieneEvent("s1", "t", "t", JANE, Kind.SOFT_BOUNCE, 1.0)])
    assert erasure.forget(rt, JANE) is False
    assert everywhere(redis_conn, JANE) == []
    assert redis_conn.get(FORGOTTEN + address_hash(JANE)) is None


def test_forget_command(
    redis_url: str, make_settings: SettingsFactory, use_runtime: Callable[[Settings], Runtime]
) -> None:
    rt = use_runtime(make_settings())
    rt.ledger.apply([HygieneEvent("u", "t", "t", JANE, Kind.UNSUBSCRIBE, 1.0)])
    runner = CliRunner()
    env = {"REDIS_URL": redis_url}
    refused = runner.invoke(main, ["forget", JANE], env=env, input="n\n")
    assert refused.exit_code == 1 and rt.ledger.state(JANE).suppressed
    done = runner.invoke(main, ["forget", JANE, "--yes"], env=env)
    assert done.exit_code == 0, done.output
    assert "forgotten; its suppression is kept as a hash" in done.output
    lookup = runner.invoke(main, ["lookup", JANE], env=env)
    assert lookup.exit_code == 1 and "hashed suppression is kept" in lookup.output


def test_forget_erases_the_exact_address_only(
    make_settings: SettingsFactory,
    use_runtime: Callable[[Settings], Runtime],
    redis_conn: redis.Redis,
) -> None:
    """``ann@example.com`` is a substring of ``joann@example.com`` and ``ann@example.com.au``:
    forgetting ann leaves their dead letters, quarantine records and stream events alone, and
    still finds ann however her record spells or escapes her."""
    rt = runtime_with_everything(make_settings, use_runtime)
    ann, others = "ann@example.com", ["joann@example.com", "ann@example.com.au", "xann@example.com"]
    rt.ledger.apply(
        [HygieneEvent(f"k-{e}", "t", "t", e, Kind.UNSUBSCRIBE, 1.0) for e in [ann, *others]]
    )
    for email in [ann, *others]:
        entry = {"id": email, "email": email, "error": "400"}
        rt.conn.lpush(DEAD + "hubspot", orjson.dumps(entry))
        body = orjson.dumps({"Email": email.upper(), "Name": "x"}).decode()
        rt.conn.lpush(QUARANTINE, orjson.dumps({"source": "postmark", "body": body}))
    # the same address, escaped as the stdlib's JSON writes it
    rt.conn.lpush(QUARANTINE, b'{"source": "postmark", "raw": {"Email": "\\u0061nn@example.com"}}')
    erasure.forget(rt, ann)
    dead = [orjson.loads(r)["email"] for r in redis_conn.lrange(DEAD + "hubspot", 0, -1)]
    assert sorted(dead) == sorted([*others, JANE])
    quarantine = b"".join(items(redis_conn.lrange(QUARANTINE, 0, -1))).decode().lower()
    assert all(e in quarantine for e in others)
    assert len(redis_conn.lrange(QUARANTINE, 0, -1)) == len(others) + 1  # + jane's
    streamed = {
        orjson.loads(redis_conn.get(f"sw:ev:{k.decode()}") or b"{}").get("email")
        for k in items(redis_conn.zrange(PENDING + "segment", 0, -1))
    }
    assert set(others) <= streamed and ann not in streamed
    assert all(rt.ledger.state(e).suppressed for e in others)
