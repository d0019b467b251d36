"""Redis replies as the tests' clients get them: bytes.

redis-py types a reply as ``bytes | str`` (a client may be made to decode them); the clients the
tests open never decode, so these helpers check that a reply is bytes and hand it on typed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import redis


def data(reply: object) -> bytes:
    """One reply that must be bytes."""
    assert isinstance(reply, bytes), f"expected bytes from Redis, got {reply!r}"
    return reply


def text(reply: object) -> str:
    """One bytes reply, decoded as UTF-8."""
    return data(reply).decode()


def optional(reply: object) -> bytes | None:
    """A reply that is bytes or None (a missing key or field)."""
    return None if reply is None else data(reply)


def items(replies: Iterable[object]) -> list[bytes]:
    """A list reply (LRANGE, ZRANGE, HKEYS, KEYS, ...) whose every item is bytes."""
    return [data(reply) for reply in replies]


def fields(reply: Mapping[bytes | str, bytes | str]) -> dict[bytes, bytes]:
    """An HGETALL reply."""
    return {data(k): data(v) for k, v in reply.items()}


def scored(replies: Iterable[object]) -> list[tuple[bytes, float]]:
    """A ZRANGE ... WITHSCORES reply: (member, score) pairs."""
    pairs: list[tuple[bytes, float]] = []
    for reply in replies:
        assert isinstance(reply, tuple | list) and len(reply) == 2, reply
        member, score = reply
        assert isinstance(score, float), score
        pairs.append((data(member), score))
    return pairs


def stream_entries(conn: redis.Redis, stream: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """A stream's entries, first to last (XRANGE): (id, fields) pairs."""
    reply = conn.xrange(stream)
    assert reply is not None
    out: list[tuple[bytes, dict[bytes, bytes]]] = []
    for entry_id, entry in reply:
        assert entry is not None, entry_id
        out.append((data(entry_id), fields(entry)))
    return out
