"""``syncworker forget``: erase an address from the ledger and from all delivery state, keeping only
a hashed suppression when it was suppressed (see ``Ledger.forget``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import orjson
import redis

from syncworker.bootstrap import Runtime
from syncworker.destinations import Mode
from syncworker.events import normalize_email
from syncworker.store import scripts
from syncworker.store.keys import (
    ATTEMPTS,
    CONFIRMED,
    DEAD,
    EVENT,
    INFLIGHT,
    PENDING,
    QUARANTINE,
    QUARANTINE_BYTES,
)


def forget(runtime: Runtime, email: str) -> bool:
    """Erase an address from the ledger and from all delivery state: pending and in-flight
    entries, attempts, confirmations, dead letters, queued stream events, quarantined payloads.
    A suppressed address keeps only a hashed suppression (see ``Ledger.forget``)."""
    conn, email = runtime.conn, normalize_email(email)
    for name, dest in runtime.destinations.items():
        ids = [email]
        if dest.mode is Mode.EVENTS:
            queued = [
                k.decode() if isinstance(k, bytes) else str(k)
                for zset in (PENDING + name, INFLIGHT + name)
                for k in conn.zrange(zset, 0, -1)
            ]
            with conn.pipeline(transaction=False) as pipe:
                for key in queued:
                    pipe.get(EVENT + key)
                raws = pipe.execute()
            ids = [k for k, raw in zip(queued, raws, strict=True) if raw and mentions(raw, email)]
        with conn.pipeline(transaction=True) as pipe:
            if ids:
                pipe.zrem(PENDING + name, *ids)
                pipe.zrem(INFLIGHT + name, *ids)
                pipe.hdel(ATTEMPTS + name, *ids)
                if dest.mode is Mode.EVENTS:
                    pipe.delete(*(EVENT + k for k in ids))
            pipe.hdel(CONFIRMED + name, email)
            pipe.execute()
        _drop_from_list(conn, DEAD + name, email)
    _drop_from_list(conn, QUARANTINE, email)
    return runtime.ledger.forget(email)


def mentions(raw: bytes | str, email: str) -> bool:
    """Whether a stored JSON entry names exactly ``email`` (normalized) in any string or key.

    Exact: ``joann@example.com`` and ``ann@example.com.au`` do not name ``ann@example.com``. JSON
    is read first so escaped text (``\\u00e9``, an escaped body) is compared as it reads.
    """
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    if email not in text.lower() and "\\" not in text:
        return False  # the common case, without parsing
    pattern = _exact(email)
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError:
        return bool(pattern.search(text.lower()))
    return any(pattern.search(value.lower()) for value in _strings(doc))


def _exact(email: str) -> re.Pattern[str]:
    # not preceded by a character of a local part, not followed by one of a domain
    return re.compile(rf"(?<![\w.!#$%&'*+/=?^`{{|}}~-]){re.escape(email)}(?![\w-]|\.[\w-])")


def _strings(value: Any) -> Iterator[str]:
    """Every string in a JSON document, keys included, depth-first without recursion."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _drop_from_list(conn: redis.Redis, key: str, email: str) -> int:
    """Remove every entry of a JSON list that names the address exactly; entries pushed
    meanwhile are kept (each is removed by its value)."""
    matched = {raw for raw in conn.lrange(key, 0, -1) if mentions(raw, email)}
    if matched:
        remove = scripts.QuarantineRemove(conn)  # keeps the quarantine's byte total
        with conn.pipeline(transaction=True) as pipe:
            for raw in matched:
                if key == QUARANTINE:
                    remove(key, QUARANTINE_BYTES, raw, 0, client=pipe)
                else:
                    pipe.lrem(key, 0, raw)  # type: ignore[arg-type]  # bytes work
            pipe.execute()
    return len(matched)
