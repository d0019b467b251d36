"""Reading the ledger in tests the way the code does (its records are one compact value each)."""

from __future__ import annotations

from typing import Any

import redis

from syncworker.config import Settings
from syncworker.ledger import COUNTERS, ContactView, Ledger, Route
from syncworker.store.keys import STATS


def reader(conn: redis.Redis) -> Ledger:
    return Ledger(conn, Settings(), Route())


def view(conn: redis.Redis, email: str) -> ContactView | None:
    return reader(conn).view(email)


def reasons(conn: redis.Redis, email: str) -> set[str]:
    return set(reader(conn).state(email).reasons)


def history(conn: redis.Redis, email: str) -> list[dict[str, Any]]:
    seen = view(conn, email)
    return seen.history if seen is not None else []


def sync(conn: redis.Redis, email: str, destination: str) -> dict[str, Any] | None:
    return reader(conn).sync_status([email])[0].get(destination)


def applied(conn: redis.Redis) -> int:
    """Events the ledger has applied (each is counted by the script that applies it; a duplicate
    is not applied)."""
    counts = {_text(k): int(v) for k, v in conn.hgetall(STATS).items()}
    return sum(
        n
        for name, n in counts.items()
        if name.startswith(COUNTERS) and name[len(COUNTERS) :] not in ("duplicate", "failed")
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
