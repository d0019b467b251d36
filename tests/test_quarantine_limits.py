"""The quarantine is bounded in bytes: a large body keeps a prefix, its length and SHA-256; the
whole list is bounded in records and in bytes; a truncated record is listed, and reported (not
parsed) by the replay."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import orjson
import pytest
import redis
from click.testing import CliRunner

from syncworker.bootstrap import Runtime
from syncworker.cli import main
from syncworker.ops import replay as quarantine
from syncworker.store.keys import QUARANTINE, QUARANTINE_BYTES, STATS
from syncworker.store.quarantine import QuarantineLimits, store_quarantine
from syncworker.web.app import create_app
from tests.conftest import SettingsFactory

AUTH = {"Authorization": "Basic " + base64.b64encode(b"pm:pw").decode()}
POSTMARK = {"postmark": ("postmark", {"USERNAME": "pm", "PASSWORD": "pw"})}
MiB = 1024 * 1024


def records(conn: redis.Redis) -> list[dict[str, Any]]:
    return [orjson.loads(raw) for raw in conn.lrange(QUARANTINE, 0, -1)]


def stored_bytes(conn: redis.Redis) -> int:
    return sum(len(raw) for raw in conn.lrange(QUARANTINE, 0, -1))


def used_memory(conn: redis.Redis) -> int:
    return int(conn.info("memory")["used_memory"])


@pytest.mark.slow
def test_many_large_bodies_keep_prefixes_and_memory_stays_bounded(
    make_settings: SettingsFactory, redis_conn: redis.Redis
) -> None:
    """Thirty verified 2 MiB bodies that do not parse: Redis grows by far less than 60 MB."""
    settings = make_settings(
        sources=POSTMARK,
        max_body_bytes=4 * MiB,
        quarantine_record_bytes=64 * 1024,
        quarantine_max_bytes=MiB,
    )
    client = create_app(settings).test_client()
    before = used_memory(redis_conn)
    bodies = [
        b'{"RecordType": "Bounce", "Details": "' + bytes([65 + n % 26]) * (2 * MiB)
        for n in range(30)
    ]
    for body in bodies:
        answer = client.post("/webhooks/postmark", data=body, headers=AUTH)
        assert answer.status_code == 400, answer.json  # verified but not JSON: kept, refused
    grown = used_memory(redis_conn) - before
    assert grown < 4 * MiB, f"Redis grew by {grown} bytes"

    kept = records(redis_conn)
    assert 0 < len(kept) < 30 and stored_bytes(redis_conn) <= MiB
    assert int(redis_conn.get(QUARANTINE_BYTES) or 0) == stored_bytes(redis_conn)
    assert all(len(raw) <= 64 * 1024 for raw in redis_conn.lrange(QUARANTINE, 0, -1))
    newest = kept[0]
    assert "body" not in newest
    assert newest["truncated"] == {
        "key": "body",
        "length": len(bodies[-1]),
        "sha256": hashlib.sha256(bodies[-1]).hexdigest(),
    }
    assert bodies[-1].decode().startswith(newest["prefix"]) and len(newest["prefix"]) > 60_000
    assert newest["source"] == "postmark" and newest["reason"].startswith("body is not valid JSON")
    assert int(redis_conn.hget(STATS, "quarantine_dropped") or 0) == 30 - len(kept)
    status = orjson.loads(
        CliRunner().invoke(main, ["status"], env={"REDIS_URL": settings.redis_url}).output
    )
    assert status["quarantined"] == len(kept)
    assert status["quarantined_bytes"] == stored_bytes(redis_conn)
    assert status["counters"]["quarantine_dropped"] == 30 - len(kept)


def test_the_quarantine_is_bounded_in_bytes_as_well_as_in_records(
    redis_conn: redis.Redis,
) -> None:
    # a list an older release wrote has no byte total yet: it is counted on the first push
    redis_conn.lpush(QUARANTINE, orjson.dumps({"source": "old", "reason": "x", "raw": "y" * 500}))
    item = {"esp": "postmark", "reason": "invalid", "raw": {"Email": "z" * 10_000}}
    limits = QuarantineLimits(records=1000, record_bytes=64 * 1024, total_bytes=100_000)
    for _ in range(30):
        store_quarantine(redis_conn, "postmark", [item], limits)
    total = stored_bytes(redis_conn)
    assert 90_000 < total <= 100_000
    assert int(redis_conn.get(QUARANTINE_BYTES) or 0) == total
    assert all(r["source"] == "postmark" and "raw" in r for r in records(redis_conn))
    assert len(records(redis_conn)) == 9

    store_quarantine(redis_conn, "postmark", [item] * 3, QuarantineLimits(records=2))
    assert len(records(redis_conn)) == 2
    assert int(redis_conn.get(QUARANTINE_BYTES) or 0) == stored_bytes(redis_conn)


def test_a_large_event_keeps_a_prefix_of_its_json(redis_conn: redis.Redis) -> None:
    raw = {"Email": "jane@example.com", "Details": "d" * 5000}
    store_quarantine(
        redis_conn,
        "postmark",
        [{"esp": "postmark", "reason": "r" * 10_000, "raw": raw}],
        QuarantineLimits(record_bytes=2048),
    )
    (value,) = redis_conn.lrange(QUARANTINE, 0, -1)
    assert len(value) <= 2048
    record = orjson.loads(value)
    original = orjson.dumps(raw)
    assert record["truncated"] == {
        "key": "raw",
        "length": len(original),
        "sha256": hashlib.sha256(original).hexdigest(),
    }
    assert original.decode().startswith(record["prefix"]) and record["prefix"]
    assert len(record["reason"]) == 2048 // 4 + 1


def test_a_truncated_record_is_listed_and_reported_by_the_replay(
    redis_url: str, redis_conn: redis.Redis, make_settings: SettingsFactory
) -> None:
    bounce = {"RecordType": "Bounce", "ID": 7, "Type": "HardBounce", "Email": "big@example.com",
              "BouncedAt": "2026-11-20T10:00:00Z", "Details": "x" * 100_000}  # fmt: skip
    store_quarantine(
        redis_conn, "postmark", [{"esp": "postmark", "reason": "held", "raw": bounce}], 100
    )
    small = {**bounce, "ID": 8, "Email": "small@example.com", "Details": ""}
    store_quarantine(
        redis_conn, "postmark", [{"esp": "postmark", "reason": "held", "raw": small}], 100
    )
    env = {
        "REDIS_URL": redis_url,
        "SYNCWORKER_SOURCES": "postmark",
        "SYNCWORKER_POSTMARK_USERNAME": "pm",
        "SYNCWORKER_POSTMARK_PASSWORD": "pw",
    }
    runner = CliRunner()
    listed = runner.invoke(main, ["quarantine"], env=env)
    assert listed.exit_code == 0, listed.output
    assert '"truncated"' in listed.output and '"length"' in listed.output

    done = runner.invoke(main, ["quarantine", "replay"], env=env)
    assert done.exit_code == 0, done.output
    assert "2 record(s) read; 1 replayed: 1 event(s) recovered" in done.output
    assert f"1 × {quarantine.TRUNCATED}" in done.output
    (left,) = records(redis_conn)
    assert left["truncated"]["key"] == "raw"  # kept as it was
    assert int(redis_conn.get(QUARANTINE_BYTES) or 0) == stored_bytes(redis_conn)


def test_replay_keeps_the_byte_total_right(
    redis_conn: redis.Redis, make_settings: SettingsFactory
) -> None:
    """Records replayed away and records rewritten with today's reason move the byte total."""
    settings = make_settings(sources=POSTMARK)
    rt = Runtime.build(settings, redis_conn)
    good = {"RecordType": "Bounce", "ID": 1, "Type": "HardBounce", "Email": "ok@example.com",
            "BouncedAt": "2026-11-20T10:00:00Z"}  # fmt: skip
    bad = {**good, "ID": 2, "Email": "not an address"}
    for raw in (good, bad):
        store_quarantine(
            redis_conn, "postmark", [{"esp": "postmark", "reason": "held", "raw": raw}], 100
        )
    report = quarantine.replay(rt)
    assert (report.replayed, report.still_invalid) == (1, 1)
    (left,) = records(redis_conn)
    assert left["reason"] != "held"  # rewritten with today's reason
    assert int(redis_conn.get(QUARANTINE_BYTES) or 0) == stored_bytes(redis_conn)
