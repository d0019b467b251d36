"""Single-use signatures: the nonce of a verified request, claimed once in Redis.

A scheme whose signature does not cover the body (Mailgun signs a timestamp and a token, not the
event) would let a captured signature carry other data within the allowed skew. The route claims
the parser's ``replay_nonce`` with ``SET NX EX`` after verification, before anything is written,
and refuses a request whose nonce is already claimed: each signature is accepted once. A request
whose job cannot be written (503) releases its claim, so the sender's own retry is not refused;
one whose body is unreadable (400) keeps it: its body is quarantined, a replay would only store
it again.
"""

from __future__ import annotations

import hashlib
import logging

import redis

from syncworker.errors import Unavailable
from syncworker.store import keys

log = logging.getLogger(__name__)


def nonce_key(esp: str, nonce: str) -> str:
    # per ESP, not per source: two sources of one account share its signing key, so a signature
    # sent to one must not be good once more at the other; hashed: a fixed-length key
    return keys.nonce_key(esp, hashlib.sha256(nonce.encode()).hexdigest())


def claim(conn: redis.Redis, esp: str, nonce: str, ttl_s: int) -> bool:
    """True if this is the first claim of ``nonce`` within ``ttl_s``. Redis out of reach
    propagates (the app answers 503); a Redis that refuses the write (out of memory, a read-only
    replica) is Unavailable, a 503 too: the sender retries, nothing was accepted."""
    try:
        return bool(conn.set(nonce_key(esp, nonce), b"1", nx=True, ex=max(1, ttl_s)))
    except redis.ResponseError as exc:
        reason = type(exc).__name__  # OutOfMemoryError, ReadOnlyError, ...
        raise Unavailable(f"Redis refused to record the signature ({reason})") from None


def release(conn: redis.Redis, esp: str, nonce: str) -> None:
    """Forget a claim whose request was not accepted. If Redis cannot be reached either, the
    claim stays until it expires: a sender that re-signs its retries is not refused by it."""
    try:
        conn.delete(nonce_key(esp, nonce))
    except redis.RedisError as exc:
        log.warning("nonce release failed esp=%s error=%s", esp, type(exc).__name__)
