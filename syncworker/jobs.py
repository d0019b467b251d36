"""The only RQ entry points: ``ingest`` (one per accepted webhook request) and ``deliver``.

Jobs let unexpected errors propagate, so RQ's failed-job registry and Sentry see them.
"""

from __future__ import annotations

import logging
from typing import Any

from syncworker import delivery, runtime
from syncworker.queueing import STATS, store_quarantine
from syncworker.schemas import EVENTS_SCHEMA

log = logging.getLogger(__name__)


def ingest(payload: dict[str, Any]) -> dict[str, int]:
    """Apply a request's events to the ledger, quarantine its invalid ones, schedule deliveries."""
    rt = runtime.current()
    events = EVENTS_SCHEMA.load(payload.get("events", []))
    result = rt.ledger.apply(events)
    quarantined = payload.get("quarantined", [])
    if quarantined:
        # the ESP is kept with each item: a replay parses it only with that ESP's module
        items = [{"esp": payload.get("esp"), **item} for item in quarantined]
        store_quarantine(rt.conn, payload.get("source", "?"), items, rt.settings.quarantine_limit)
    with rt.conn.pipeline(transaction=False) as pipe:
        for effect, n in result.effects.items():
            pipe.hincrby(STATS, f"ledger:{effect}", n)
        pipe.execute()
    delivery.flush(rt, result.marked)
    log.info(
        "ingested source=%s events=%d effects=%s quarantined=%d",
        payload.get("source"),
        len(events),
        dict(result.effects),
        len(quarantined),
    )
    return dict(result.effects)


def deliver(destination: str, token: str | None = None) -> dict[str, int]:
    """Sync due contacts to one destination for up to the job budget."""
    rt = runtime.current()
    if destination not in rt.destinations:
        log.warning("deliver skipped dest=%s reason=not_enabled", destination)
        return {}
    report = delivery.Delivery(rt, destination).run(token)
    return dict(report.outcomes)
