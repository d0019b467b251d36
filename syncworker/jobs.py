"""The only RQ entry points: ``ingest`` (one per accepted webhook request) and ``deliver``.

Jobs let unexpected errors propagate, so RQ's failed-job registry and Sentry see them.
"""

from __future__ import annotations

import logging
from typing import Any

from syncworker import codec, delivery, runtime
from syncworker.events import HygieneEvent
from syncworker.queueing import STATS, QuarantineLimits, store_quarantine

log = logging.getLogger(__name__)


def ingest(payload: dict[str, Any]) -> dict[str, int]:
    """Apply a request's events to the ledger, quarantine its invalid ones, schedule deliveries.

    Each event stands alone: one the codec refuses or Redis cannot apply is quarantined with the
    reason (replayable with ``syncworker quarantine replay``), and its siblings are applied.
    """
    rt = runtime.current()
    source, esp = payload.get("source", "?"), payload.get("esp")
    events: list[HygieneEvent] = []
    forms: list[Any] = []
    refused: list[dict[str, Any]] = []
    for form in payload.get("events") or []:
        try:
            events.append(codec.load(form))
            forms.append(form)
        except codec.InvalidEvent as exc:
            refused.append({"reason": f"invalid event: {exc}", "event": form})
    result = rt.ledger.apply(events, count=True)  # effects counted in the same write
    for index, why in result.failed:
        refused.append({"reason": f"not applied: {why}", "event": forms[index]})
    # the ESP is kept with each item: a replay parses it only with that ESP's module
    items = [{"esp": esp, **item} for item in [*(payload.get("quarantined") or []), *refused]]
    if items:
        store_quarantine(rt.conn, source, items, QuarantineLimits.of(rt.settings))
    with rt.conn.pipeline(transaction=False) as pipe:
        if result.failed:  # a script Redis refused counted nothing
            pipe.hincrby(STATS, "ledger:failed", len(result.failed))
        if refused:
            pipe.hincrby(STATS, "ingest:refused", len(refused))
        pipe.execute()
    delivery.flush(rt, result.marked)
    log.info(
        "ingested source=%s events=%d effects=%s quarantined=%d refused=%d",
        source,
        len(events),
        dict(result.effects),
        len(items) - len(refused),
        len(refused),
    )
    if refused:
        log.warning("ingest refused events source=%s n=%d (quarantined)", source, len(refused))
    return dict(result.effects)


def deliver(destination: str, token: str | None = None) -> dict[str, int]:
    """Sync due contacts to one destination for up to the job budget."""
    rt = runtime.current()
    if destination not in rt.destinations:
        log.warning("deliver skipped dest=%s reason=not_enabled", destination)
        return {}
    report = delivery.Delivery(rt, destination).run(token)
    return dict(report.outcomes)
