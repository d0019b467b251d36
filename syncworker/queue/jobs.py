"""The only RQ entry points: ``drain_inbox`` (accepted requests' events, in batches),
``ingest`` (one request: jobs queued by older releases) and ``deliver``.

Jobs let unexpected errors propagate, so RQ's failed-job registry and Sentry see them.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

from syncworker import bootstrap as runtime
from syncworker import codec
from syncworker.delivery import loop as delivery
from syncworker.delivery import schedule
from syncworker.events import HygieneEvent
from syncworker.queue import inbox
from syncworker.queue.enqueue import ensure_drain
from syncworker.queue.workers import heartbeat_stale_s
from syncworker.store.keys import INBOX, STATS
from syncworker.store.quarantine import QuarantineLimits, store_quarantine

log = logging.getLogger(__name__)


def ingest(payload: dict[str, Any]) -> dict[str, int]:
    """Apply one request's events (an ingest job queued by an older release, one per request)."""
    return dict(apply_payloads(runtime.current(), [payload]))


def drain_inbox() -> dict[str, int]:
    """Apply the events of accepted requests waiting in the inbox, many requests per batch, for
    up to the job budget (see syncworker/queue/inbox.py); then, if entries still wait, queue the
    next ingest job."""
    rt = runtime.current()
    conn = rt.conn
    reader = inbox.Reader(conn, inbox.current_name())
    reader.started()
    stale_s = heartbeat_stale_s(rt.settings)
    claimed = reader.claim_from_dead(lambda name: inbox.drain_alive(conn, name, stale_s))
    totals: Counter[str] = Counter()
    if claimed.entries:
        log.warning(
            "ingest took over entries of ingest jobs that died entries=%d jobs=%d",
            len(claimed.entries),
            len(claimed.consumers),
        )
        _apply_claimed(rt, reader, claimed, totals)
    started = time.monotonic()
    helped = False
    entries = reader.read(inbox.READ_COUNT, inbox.LINGER_MS)
    while entries:
        if len(entries) == inbox.READ_COUNT and not helped:
            # a backlog: queue another job now, for an idle ingest process to read beside this
            ensure_drain(conn)
            helped = True
        applied = _apply_entries(rt, reader, entries, totals, ack=False)
        more = time.monotonic() - started < rt.settings.job_budget_s
        # acknowledged, and the next entries read, in one round trip
        entries = reader.done(applied, inbox.READ_COUNT if more else 0)
        if not entries and more:
            entries = reader.read(inbox.READ_COUNT, inbox.LINGER_MS)
    reader.leave()
    if conn.xlen(INBOX):
        ensure_drain(conn)
    return dict(totals)


def _apply_claimed(
    rt: runtime.Runtime, reader: inbox.Reader, claimed: inbox.Claimed, totals: Counter[str]
) -> None:
    """Entries of dead jobs: applied together, but those claimed before (suspected of killing
    the process applying them) one at a time, and one that the process died on alone too often
    quarantined."""
    plain: list[inbox.Entry] = []
    suspects: list[inbox.Entry] = []
    for entry_id, times, fields in claimed.entries:
        (suspects if times >= inbox.SUSPECT_AFTER else plain).append((entry_id, fields))
    for start in range(0, len(plain), inbox.READ_COUNT):
        _apply_entries(rt, reader, plain[start : start + inbox.READ_COUNT], totals)
    for entry_id, fields in suspects:
        tries = reader.try_alone(entry_id)
        if tries > inbox.MAX_ALONE:
            why = f"not applied: the ingest process died {tries - 1} times applying it alone"
            _give_up(rt, fields, _read(fields)[0], why)
            reader.done([entry_id])
        else:
            _apply_entries(rt, reader, [(entry_id, fields)], totals)


def _apply_entries(
    rt: runtime.Runtime,
    reader: inbox.Reader,
    entries: list[inbox.Entry],
    totals: Counter[str],
    *,
    ack: bool = True,
) -> list[str]:
    """Apply entries' events (quarantining what cannot be applied); acknowledge the entries
    then, or with ``ack=False`` leave that to the caller. Returns the entries' ids."""
    payloads: list[dict[str, Any]] = []
    for _entry_id, fields in entries:
        payload, why = _read(fields)
        if payload is None:
            _give_up(rt, fields, None, f"unreadable inbox entry: {why}")
        else:
            payloads.append(payload)
    totals.update(apply_payloads(rt, payloads))
    ids = [entry_id for entry_id, _ in entries]
    if ack:
        reader.done(ids)
    return ids


def _read(fields: dict[bytes, bytes]) -> tuple[dict[str, Any] | None, str]:
    """An entry's payload, or None and why it cannot be read."""
    try:
        payload = inbox.decode(fields.get(b"p", b""))
    except ValueError as exc:
        return None, str(exc)
    if not isinstance(payload, dict):
        return None, "payload is not an object"
    return payload, ""


def _carried(payload: dict[str, Any], esp: Any) -> list[dict[str, Any]]:
    """The invalid items a request carried, as quarantine records (with their ESP)."""
    return [{"esp": esp, **q} for q in payload.get("quarantined") or [] if isinstance(q, dict)]


def _give_up(
    rt: runtime.Runtime, fields: dict[bytes, bytes], payload: dict[str, Any] | None, reason: str
) -> None:
    """Quarantine an entry's events (or, unreadable, its bytes) with ``reason``."""
    if payload is not None:
        source, esp = str(payload.get("source", "?")), payload.get("esp")
        items = [
            {"esp": esp, "reason": reason, "event": form} for form in payload.get("events") or []
        ]
        items += _carried(payload, esp)
    else:
        source, items = "?", [{"reason": reason, "body": fields.get(b"p", b"")}]
    if items:
        store_quarantine(rt.conn, source, items, QuarantineLimits.of(rt.settings))
    rt.conn.hincrby(STATS, "ingest:refused", len(items))
    log.error("inbox entry quarantined source=%s items=%d reason=%s", source, len(items), reason)


def apply_payloads(rt: runtime.Runtime, payloads: list[dict[str, Any]]) -> Counter[str]:
    """Apply the events of accepted requests to the ledger in one batch, quarantine their
    invalid ones, schedule deliveries; the ledger's effects, counted.

    Each event stands alone: one the codec refuses or Redis cannot apply is quarantined with the
    reason (replayable with ``syncworker quarantine replay``), and its siblings are applied.
    """
    events: list[HygieneEvent] = []
    forms: list[Any] = []
    origins: list[int] = []
    # per source: the ESP is kept with each item (a replay parses it only with that ESP's module)
    items: dict[str, list[dict[str, Any]]] = {}
    refused = 0
    for n, payload in enumerate(payloads):
        source, esp = str(payload.get("source", "?")), payload.get("esp")
        kept = items.setdefault(source, [])
        kept += _carried(payload, esp)
        for form in payload.get("events") or []:
            try:
                events.append(codec.load(form))
                forms.append(form)
                origins.append(n)
            except codec.InvalidEvent as exc:
                kept.append({"esp": esp, "reason": f"invalid event: {exc}", "event": form})
                refused += 1
    result = rt.ledger.apply(events, count=True)  # effects counted in the same write
    for index, why in result.failed:
        payload = payloads[origins[index]]
        items[str(payload.get("source", "?"))].append(
            {"esp": payload.get("esp"), "reason": f"not applied: {why}", "event": forms[index]}
        )
        refused += 1
    limits = QuarantineLimits.of(rt.settings)
    for source, kept in items.items():
        if kept:
            store_quarantine(rt.conn, source, kept, limits)
    with rt.conn.pipeline(transaction=False) as pipe:
        if result.failed:  # a script Redis refused counted nothing
            pipe.hincrby(STATS, "ledger:failed", len(result.failed))
        if refused:
            pipe.hincrby(STATS, "ingest:refused", refused)
        pipe.execute()
    schedule.wake(rt, result.marked)
    quarantined = sum(len(kept) for kept in items.values())
    log.info(
        "ingested requests=%d events=%d effects=%s quarantined=%d refused=%d",
        len(payloads),
        len(events),
        dict(result.effects),
        quarantined - refused,
        refused,
    )
    if refused:
        log.warning("ingest refused events n=%d (quarantined)", refused)
    return Counter(result.effects)


def deliver(destination: str, token: str | None = None) -> dict[str, int]:
    """Sync due contacts to one destination for up to the job budget."""
    rt = runtime.current()
    if destination not in rt.destinations:
        log.warning("deliver skipped dest=%s reason=not_enabled", destination)
        return {}
    report = delivery.Delivery(rt, destination).run(token)
    return dict(report.outcomes)
