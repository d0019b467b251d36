"""Redis memory per suppressed contact: the compact ledger record vs the layout before it.

    python -m bench.memory [--sizes 100000,1000000] [--old-sizes 100000] [--rounds 3]

Each run starts its own redis-server, ingests ``size`` contacts through the real ledger (batched
``Ledger.apply``, one SendGrid-like hard bounce each: a 31-character event key, a 22-character
SMTP detail), marks every one synced for one destination the way delivery records an applied
outcome (pending entry removed, sync status and confirmed reasons written), and reads
``used_memory``. Then a second report for the first ``--extra`` contacts (a later bounce from the
same ESP: one more history entry), and an applied sync status for a second destination for the
same contacts. Old and new layouts alternate, each on a fresh server; medians with ranges.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import orjson
import redis

from syncworker.config import Settings
from syncworker.devkit.redis_server import RedisServer
from syncworker.events import HygieneEvent, Kind
from syncworker.ledger import Ledger, Route
from syncworker.store.keys import INFLIGHT, PENDING
from tests.legacy_ledger import SYNC as OLD_SYNC
from tests.legacy_ledger import Ledger as OldLedger
from tests.legacy_ledger import Route as OldRoute

DEST, SECOND = "hubspot", "salesforce"
BATCH = 1000
OLD_CONFIRMED = "sw:confirmed:"  # the old layout's confirmed reasons, as delivery wrote them
DETAIL = "550 5.1.1 user unknown"


def email(i: int) -> str:
    return f"user{i:07d}@example.com"


def bounce(i: int, again: bool = False) -> HygieneEvent:
    key = f"sendgrid:{'B' if again else 'A'}{i:021d}"  # sg_event_id: 22 characters
    at = 1_764_000_000 + i + (86_400 if again else 0)
    return HygieneEvent(
        key, "sendgrid", "sendgrid", email(i), Kind.HARD_BOUNCE, at, reason="5.1.1 user unknown",
        smtp_code="550",
    )  # fmt: skip


def mark_synced_new(conn: redis.Redis, ledger: Ledger, dest: str, emails: list[str]) -> None:
    """What ``Delivery.record`` does for an applied outcome, with this ledger."""
    now = time.time()
    states = ledger.states(emails)
    with conn.pipeline(transaction=True) as pipe:
        for state in states:
            pipe.zrem(PENDING + dest, state.email)
            pipe.zrem(INFLIGHT + dest, state.email)
            status = {"at": now, "version": state.version, "status": "applied"}
            ledger.write_sync(pipe, state.email, dest, status, state.reasons)
        pipe.execute()


def mark_synced_old(conn: redis.Redis, ledger: OldLedger, dest: str, emails: list[str]) -> None:
    """What ``Delivery.record`` did for an applied outcome, with the old layout."""
    now = time.time()
    states = ledger.states(emails)
    with conn.pipeline(transaction=True) as pipe:
        for state in states:
            pipe.zrem(PENDING + dest, state.email)
            pipe.zrem(INFLIGHT + dest, state.email)
            status = {"at": now, "version": state.version, "status": "applied"}
            pipe.hset(OLD_CONFIRMED + dest, state.email, orjson.dumps(sorted(state.reasons)))
            pipe.hset(OLD_SYNC + state.email, dest, orjson.dumps(status))
        pipe.execute()


def used(conn: redis.Redis) -> int:
    return int(conn.info("memory")["used_memory"])


def measure(layout: str, size: int, extra: int) -> dict[str, float]:
    routes = {DEST: (False, frozenset({"hard_bounce"})), SECOND: (False, frozenset())}
    with RedisServer() as server:
        conn = redis.Redis.from_url(server.url)
        settings = Settings()
        led: Ledger | OldLedger
        mark: Callable[[str, list[str]], None]
        if layout == "new":
            led = Ledger(conn, settings, Route.build(routes))
            new_led = led
            mark = lambda dest, emails: mark_synced_new(conn, new_led, dest, emails)  # noqa: E731
        else:
            led = OldLedger(conn, settings, OldRoute.build(routes))
            old_led = led
            mark = lambda dest, emails: mark_synced_old(conn, old_led, dest, emails)  # noqa: E731
        led.apply([bounce(size + 1)])  # scripts loaded, the structures every run has exist
        conn.delete(*conn.keys("sw:*"))
        base = used(conn)
        started = time.monotonic()
        for start in range(0, size, BATCH):
            stop = min(start + BATCH, size)
            result = led.apply([bounce(i) for i in range(start, stop)])
            assert result.effects == {"suppressed": stop - start}, result.effects
            mark(DEST, [email(i) for i in range(start, stop)])
        took = time.monotonic() - started
        assert conn.zcard(PENDING + DEST) == 0
        contacts = used(conn)
        for start in range(0, extra, BATCH):
            stop = min(start + BATCH, extra)
            result = led.apply([bounce(i, again=True) for i in range(start, stop)])
            assert result.effects == {"already": stop - start}, result.effects
        history = used(conn)
        for start in range(0, extra, BATCH):
            mark(SECOND, [email(i) for i in range(start, min(start + BATCH, extra))])
        second = used(conn)
        sample = email(0)
        keys = conn.keys(f"*{sample}*")
        conn.close()
    return {
        "bytes_per_contact": (contacts - base) / size,
        "bytes_per_extra_history_entry": (history - contacts) / extra,
        "bytes_per_extra_destination": (second - history) / extra,
        "ingest_and_sync_contacts_per_s": size / took,
        "keys_per_contact": len(keys),
    }


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 1),
        "min": round(min(values), 1),
        "max": round(max(values), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000", help="contacts, new layout")
    parser.add_argument("--old-sizes", default="100000", help="contacts, old layout")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--extra", type=int, default=10_000, help="contacts given extras")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    old_sizes = {int(s) for s in args.old_sizes.split(",") if s}
    runs: dict[tuple[str, int], list[dict[str, float]]] = {}
    for size in sizes:
        layouts = ["old", "new"] if size in old_sizes else ["new"]
        for r in range(args.rounds):
            for layout in layouts if r % 2 == 0 else reversed(layouts):  # alternate the order
                runs.setdefault((layout, size), []).append(
                    measure(layout, size, min(args.extra, size))
                )
    out: dict[str, Any] = {"redis": redis_version(), "rounds": args.rounds, "results": []}
    for (layout, size), results in sorted(runs.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        row: dict[str, Any] = {"layout": layout, "contacts": size}
        for name in results[0]:
            row[name] = summary([r[name] for r in results])
        out["results"].append(row)
    print(json.dumps(out, indent=2))


def redis_version() -> str:
    with RedisServer() as server:
        conn = redis.Redis.from_url(server.url)
        info = conn.info()
        conn.close()
    return f"{info['redis_version']} ({info.get('mem_allocator', '?')})"


if __name__ == "__main__":
    main()
