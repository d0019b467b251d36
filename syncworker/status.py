"""A snapshot of the whole system for ``syncworker status`` and ``GET /v1/stats``."""

from __future__ import annotations

from typing import Any

import orjson

from syncworker.delivery import DEAD, DSTATS, INFLIGHT, PAUSE
from syncworker.ledger import PENDING
from syncworker.queueing import DELIVER, INGEST, QUARANTINE, STATS
from syncworker.runtime import Runtime


def overview(rt: Runtime) -> dict[str, Any]:
    conn = rt.conn
    names = list(rt.destinations)
    with conn.pipeline(transaction=False) as pipe:
        pipe.hgetall(STATS)
        pipe.llen(f"rq:queue:{INGEST}")
        pipe.llen(f"rq:queue:{DELIVER}")
        pipe.llen(QUARANTINE)
        for name in names:
            pipe.zcard(PENDING + name)
            pipe.zcard(INFLIGHT + name)
            pipe.llen(DEAD + name)
            pipe.get(PAUSE + name)
            pipe.hgetall(DSTATS + name)
        replies = pipe.execute()
    stats, ingest, deliver, quarantine = replies[:4]
    destinations: dict[str, Any] = {}
    for i, name in enumerate(names):
        pending, inflight, dead, pause, dstats = replies[4 + 5 * i : 9 + 5 * i]
        destinations[name] = {
            "pending": pending,
            "in_flight": inflight,
            "dead_letters": dead,
            "paused": orjson.loads(pause) if pause else None,
            "counters": {k.decode(): int(v) for k, v in sorted(dstats.items())},
        }
    return {
        "queues": {"ingest": ingest, "deliver": deliver},
        "quarantined": quarantine,
        "counters": {k.decode(): int(v) for k, v in sorted(stats.items())},
        "destinations": destinations,
    }
