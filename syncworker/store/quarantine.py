"""The quarantine: verified requests' data that failed validation or could not be applied, kept
with the reason (``sw:quarantine``), bounded in records and bytes, inspectable with ``syncworker
quarantine`` and replayable once the cause is mended (syncworker/ops/replay.py).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis
import redis.connection

from syncworker.store import scripts
from syncworker.store.encoding import to_json
from syncworker.store.keys import (
    QUARANTINE,
    QUARANTINE_BYTES,
    STATS,
)

if TYPE_CHECKING:
    from syncworker.config import Settings


@dataclass(frozen=True)
class QuarantineLimits:
    """How much the quarantine keeps: records, bytes per record, bytes in all (oldest dropped)."""

    records: int = 10000
    record_bytes: int = 64 * 1024
    total_bytes: int = 64 * 1024 * 1024

    @classmethod
    def of(cls, settings: Settings) -> QuarantineLimits:
        return cls(
            settings.quarantine_limit,
            settings.quarantine_record_bytes,
            settings.quarantine_max_bytes,
        )


REASON_CHARS = 2000  # most of a truncated record's reason (marshmallow lists every bad field)


def store_quarantine(
    conn: redis.Redis,
    source: str,
    items: list[dict[str, Any]],
    limits: QuarantineLimits | int,
) -> None:
    """Keep what a verified request carried but could not be used, newest first, bounded in
    records and bytes (an int: the most records, with the default byte bounds).

    An item's ``body`` (bytes or text) or ``raw`` that would make its record larger than
    ``record_bytes`` is not kept whole: the record holds a ``prefix`` of it and ``truncated``,
    its key, original length and SHA-256, so that an operator can match it to the ESP's logs.
    """
    if isinstance(limits, int):
        limits = QuarantineLimits(records=limits)
    now = time.time()
    records = [_fit({"source": source, "at": now, **item}, limits.record_bytes) for item in items]
    scripts.QuarantinePush(conn)(
        QUARANTINE,
        QUARANTINE_BYTES,
        STATS,
        max(0, limits.records),
        max(0, limits.total_bytes),
        records,
    )


def _fit(record: dict[str, Any], cap: int) -> bytes:
    """The record encoded, its body or raw cut to a prefix if it would exceed ``cap`` bytes."""
    body = record.get("body")
    if isinstance(body, bytes):
        record["body"] = body.decode("utf-8", "replace")
    encoded = to_json(record)
    if len(encoded) <= cap:
        return encoded
    key = "body" if "body" in record else "raw" if "raw" in record else None
    whole = record.pop(key) if key is not None else None
    original = body if isinstance(body, bytes) and key == "body" else _original(whole)
    reason = record.get("reason")
    most = min(REASON_CHARS, cap // 4)  # leave room for the prefix
    if isinstance(reason, str) and len(reason) > most:
        record["reason"] = reason[:most] + "…"
    record["truncated"] = {
        "key": key,
        "length": len(original),
        "sha256": hashlib.sha256(original).hexdigest(),
    }
    record["prefix"] = ""
    room = cap - len(to_json(record))
    while room > 0:  # JSON escapes may make the prefix longer than its bytes: shrink until it fits
        record["prefix"] = original[:room].decode("utf-8", "ignore")
        encoded = to_json(record)
        if len(encoded) <= cap:
            return encoded
        room -= len(encoded) - cap
    record["prefix"] = ""
    return to_json(record)


def _original(value: Any) -> bytes:
    if value is None:
        return b""
    if isinstance(value, str):
        return value.encode("utf-8", "replace")
    return to_json(value)
