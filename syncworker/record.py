"""An address's ledger record, and the policy that applies an event to it, in the worker.

The ledger keeps one record per address (``sw:c:<addr>``, see syncworker/ledger.py for the
layout). Ingest reads the records a batch touches, applies the batch's events to them here, and
writes each record back only if it is still the one it read (compare-and-set in one Lua call per
batch); a record that changed meanwhile is read and applied again. So Redis only moves bytes, and
the work that grows with traffic runs in the worker processes, which scale out.

The Lua scripts that also read and write records (sync statuses, the old layout's conversion)
share this layout: syncworker/store/lua/_record.lua is its other implementation, and the
tests check that each reads what the other writes.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

import orjson

from syncworker.events import MANUAL, Kind

UNSUPPRESS = "manual_unsuppress"

#: one character for each kind and effect in the record; any other name is stored as it is
KIND_CODES: dict[str, str] = {
    Kind.HARD_BOUNCE.value: "h",
    Kind.SOFT_BOUNCE.value: "s",
    Kind.BLOCKED.value: "b",
    Kind.UNSUBSCRIBE.value: "u",
    Kind.SPAM_COMPLAINT.value: "c",
    Kind.RESUBSCRIBE.value: "r",
    MANUAL: "m",
    UNSUPPRESS: "M",
}
EFFECT_CODES: dict[str, str] = {
    "suppressed": "s",
    "already": "a",
    "stale": "t",
    "counted": "c",
    "ignored": "i",
    "unsuppressed": "u",
    "resubscribed": "r",
}
KIND_NAMES = {v: k for k, v in KIND_CODES.items()}
EFFECT_NAMES = {v: k for k, v in EFFECT_CODES.items()}

# Kinds that suppress at once; soft bounces and blocks suppress after N within a window, counted
# once per message (an ESP reports each retry of a greylisted message).
IMMEDIATE = frozenset(
    {Kind.HARD_BOUNCE.value, Kind.SPAM_COMPLAINT.value, Kind.UNSUBSCRIBE.value, MANUAL}
)


@dataclass
class Reason:
    at: float
    source: str
    detail: str | None = None


@dataclass
class Entry:
    """One history entry, newest first in ``Record.history``."""

    at: float
    recorded: float
    kind: str
    key: str
    effect: str
    source: str
    detail: str | None = None


@dataclass
class Record:
    version: int = 0
    suppressed: bool = False
    updated_at: float = 0.0
    reasons: dict[str, Reason] = field(default_factory=dict)
    history: list[Entry] = field(default_factory=list)
    sync: dict[str, list[Any]] = field(default_factory=dict)
    soft: list[list[Any]] = field(default_factory=list)  # [time, kind, message id?]
    cleared: dict[str, float] = field(default_factory=dict)  # '*' or kind -> time
    seen: list[list[Any]] = field(default_factory=list)  # [key hash, recorded]


def _items(value: Any) -> Any:
    """A part of a record as stored: Lua's JSON encoder writes an empty list as ``{}``."""
    return value if value else ()


def unpack(raw: bytes) -> Record:
    """A record from its stored JSON; ValueError when it is not one."""
    try:
        a = orjson.loads(raw)
        a = list(a) + [None] * (9 - len(a))
        reasons: dict[str, Reason] = {
            str(KIND_NAMES.get(c, c)): Reason(x[0], x[1] if len(x) > 1 else "", _at(x, 2))
            for c, x in dict(_items(a[3])).items()
        }
        history = []
        for e in _items(a[4]):
            kind = KIND_NAMES.get(e[2], e[2])
            effect = e[4] if len(e) > 4 else "s"
            if len(e) < 6:
                r = reasons.get(kind)
                source, detail = (r.source, r.detail) if r else ("", None)
            else:
                source, detail = e[5], _at(e, 6)
            effect = EFFECT_NAMES.get(effect, effect)
            history.append(Entry(e[0], e[1], kind, e[3], effect, source or "", detail))
        updated = a[2] or 0
        if updated == 0 and history:
            updated = history[0].recorded
        return Record(
            version=int(a[0] or 0),
            suppressed=a[1] == 1,
            updated_at=updated,
            reasons=reasons,
            history=history,
            sync=dict(_items(a[5])),
            soft=[list(s) for s in _items(a[6])],
            cleared=dict(_items(a[7])),
            seen=[list(s) for s in _items(a[8])],
        )
    except (orjson.JSONDecodeError, TypeError, IndexError, KeyError, AttributeError) as exc:
        raise ValueError(f"unreadable ledger record: {exc.__class__.__name__}") from None


def _at(values: list[Any], index: int) -> Any:
    return values[index] if len(values) > index else None


def _same(reason: Reason | None, e: Entry) -> bool:
    return (
        reason is not None
        and reason.at == e.at
        and reason.source == e.source
        and reason.detail == e.detail
    )


def pack(rec: Record) -> bytes:
    """The record's stored JSON: a history entry like the reason held for its kind keeps no
    source and detail (and, for the event that gave the reason, no effect); updated_at equal to
    the newest entry's time is 0; empty parts at the end are left out."""
    reasons: dict[str, list[Any]] = {}
    for name, x in rec.reasons.items():
        reason: list[Any] = [x.at, x.source or ""]
        if x.detail is not None:
            reason.append(x.detail)
        reasons[KIND_CODES.get(name, name)] = reason
    history = []
    for e in rec.history:
        entry: list[Any] = [e.at, e.recorded, KIND_CODES.get(e.kind, e.kind), e.key or ""]
        if not _same(rec.reasons.get(e.kind), e):
            entry += [EFFECT_CODES.get(e.effect, e.effect), e.source or ""]
            if e.detail is not None:
                entry.append(e.detail)
        elif e.effect != "suppressed":
            entry.append(EFFECT_CODES.get(e.effect, e.effect))
        history.append(entry)
    updated = rec.updated_at
    if history and updated != 0 and history[0][1] == updated:
        updated = 0
    a: list[Any] = [
        rec.version,
        1 if rec.suppressed else 0,
        updated,
        reasons,
        history,
        rec.sync,
        rec.soft,
        rec.cleared,
        rec.seen,
    ]
    while len(a) > 3 and not a[-1]:
        a.pop()
    return orjson.dumps(a)


def key_hash(key: str) -> str:
    """How a key that left the history is remembered (as the Lua scripts do)."""
    return hashlib.sha1(key.encode()).hexdigest()[:12]  # noqa: S324 - a short fingerprint


@dataclass(frozen=True)
class Policy:
    now: float
    dedupe_ttl_s: float
    history_limit: int
    soft_bounce_threshold: int
    soft_bounce_window_s: float
    max_seen: int


@dataclass(frozen=True)
class Event:
    """The fields of an event the ledger keeps; ``kind`` is a Kind's value or a manual change."""

    key: str
    kind: str
    occurred_at: float
    source: str
    message_id: str | None
    detail: str | None


def is_duplicate(rec: Record | None, key: str, since: float) -> bool:
    if rec is None:
        return False
    if any(e.key == key and e.recorded > since for e in rec.history):
        return True
    fingerprint = None
    for x in rec.seen:
        if x[1] > since:
            fingerprint = fingerprint or key_hash(key)
            if x[0] == fingerprint:
                return True
    return False


def apply(rec: Record, ev: Event, policy: Policy, state_dests: tuple[str, ...]) -> tuple[str, bool]:
    """Apply one event (not a duplicate) to ``rec`` in place: (effect, whether the state
    changed). State destinations get a pending sync entry when it changed."""
    p = policy
    since = p.now - p.dedupe_ttl_s
    reasons, cleared = rec.reasons, rec.cleared
    was = rec.suppressed
    t, kind = float(ev.occurred_at), ev.kind
    before = sorted(reasons)

    def note() -> None:
        r = reasons.get(kind)
        if r is None or r.at < t:
            reasons[kind] = Reason(t, ev.source, ev.detail)

    cleared_all = float(cleared.get("*", 0))
    if kind == UNSUPPRESS:
        if t > cleared_all:
            cleared["*"] = t
        for name in [n for n, r in reasons.items() if r.at <= t]:
            del reasons[name]
        rec.soft = [s for s in rec.soft if s[0] > t]
        effect = "unsuppressed"
    elif t <= cleared_all:
        effect = "stale"
    elif kind == Kind.RESUBSCRIBE.value:
        if t > float(cleared.get(Kind.UNSUBSCRIBE.value, 0)):
            cleared[Kind.UNSUBSCRIBE.value] = t
        u = reasons.get(Kind.UNSUBSCRIBE.value)
        if u is not None and u.at >= t:
            effect = "stale"
        else:
            reasons.pop(Kind.UNSUBSCRIBE.value, None)
            effect = "resubscribed"
    elif kind == Kind.UNSUBSCRIBE.value and t <= float(cleared.get(kind, 0)):
        effect = "stale"
    elif kind in IMMEDIATE:
        note()
        effect = "suppressed"
    elif kind in (Kind.SOFT_BOUNCE.value, Kind.BLOCKED.value):
        # ESPs report a temporary failure on each retry of one message: count messages
        repeated = False
        if ev.message_id:
            for s in rec.soft:
                if len(s) > 2 and s[2] == ev.message_id:
                    repeated = True
                    s[0] = max(s[0], t)
        if not repeated:
            rec.soft.append([t, kind, ev.message_id] if ev.message_id else [t, kind])
        newest = max([0.0, *(float(s[0]) for s in rec.soft)])
        window = p.soft_bounce_window_s
        keep = sorted((s for s in rec.soft if s[0] > newest - window), key=lambda s: s[0])
        del keep[: max(0, len(keep) - (p.soft_bounce_threshold * 2 + 10))]
        rec.soft = keep
        if len(keep) >= p.soft_bounce_threshold and t > newest - window:
            note()
            effect = "suppressed"
        else:
            effect = "counted"
    else:
        effect = "ignored"
    suppressed = bool(reasons)
    changed = sorted(reasons) != before or suppressed != was
    if effect == "suppressed" and not changed:
        effect = "already"
    if changed:
        rec.version += 1
        for dest in state_dests:
            old = rec.sync.get(dest)
            rec.sync[dest] = ["pending", p.now, rec.version, old[3] if old and len(old) > 3 else ""]
    rec.suppressed, rec.updated_at = suppressed, p.now
    # the history, capped; keys leaving it are remembered (hashed) while within the dedupe TTL
    rec.history.insert(0, Entry(t, p.now, kind, ev.key, effect, ev.source or "", ev.detail))
    seen = [x for x in rec.seen if x[1] > since]
    while len(rec.history) > p.history_limit:
        old_entry = rec.history.pop()
        if old_entry.recorded > since:
            seen.append([key_hash(old_entry.key), math.floor(old_entry.recorded)])
    del seen[: max(0, len(seen) - p.max_seen)]
    rec.seen = seen
    return effect, changed


def restored(kept: bytes) -> dict[str, Reason]:
    """The reasons an erased address kept (``sw:forgotten:<hash>``), restored when it comes
    back."""
    return {
        name: Reason(x["at"], x.get("source") or "", x.get("detail"))
        for name, x in orjson.loads(kept).items()
    }
