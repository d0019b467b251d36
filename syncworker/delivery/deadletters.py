"""A destination's dead letters: contacts whose sync failed for good (a refusal, or attempts or age
spent) wait in ``sw:dead:<destination>`` for ``syncworker replay <destination>``.
"""

from __future__ import annotations

import time

import orjson

from syncworker.bootstrap import Runtime
from syncworker.delivery.schedule import ensure_taker
from syncworker.store.keys import (
    ATTEMPTS,
    DEAD,
    EVENT,
    PENDING,
)


def replay_dead(runtime: Runtime, destination: str) -> int:
    """Move every dead letter of ``destination`` back to pending; return how many."""
    conn, name = runtime.conn, destination
    with conn.pipeline(transaction=True) as pipe:
        pipe.lrange(DEAD + name, 0, -1)
        pipe.delete(DEAD + name)
        entries, _ = pipe.execute()
    if not entries:
        return 0
    now = time.time()
    with conn.pipeline(transaction=True) as pipe:
        for raw in entries:
            entry = orjson.loads(raw)
            if "event" in entry:
                pipe.set(
                    EVENT + entry["id"],
                    orjson.dumps(entry["event"]),
                    ex=runtime.settings.dedupe_ttl_s,
                )
            pipe.zadd(PENDING + name, {entry["id"]: now})
            pipe.hdel(ATTEMPTS + name, entry["id"])
        pipe.execute()
    ensure_taker(runtime, name)
    return len(entries)
