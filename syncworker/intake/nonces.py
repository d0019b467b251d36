"""Single-use signatures: the nonce of a verified request, claimed once in Redis.

A scheme whose signature does not cover the body (Mailgun signs a timestamp and a token, not the
event) would let a captured signature carry other data within the allowed skew. The route claims
the parser's ``replay_nonce`` with ``SET NX EX`` after verification, before anything is written,
and refuses a request whose nonce is already claimed; a request that fails before its job is
written releases its claim, so the sender's own retry is not refused.
"""

from __future__ import annotations

import hashlib
import logging

import redis

from syncworker.errors import Unavailable

log = logging.getLogger(__name__)

NONCE = "sw:nonce:"  # sw:nonce:<source>:<sha256 of the nonce> -> "1", expires with the skew window


def nonce_key(source: str, nonce: str) -> str:
    # hashed: a fixed-length key whatever the scheme's nonce looks like
    return f"{NONCE}{source}:{hashlib.sha256(nonce.encode()).hexdigest()}"


def claim(conn: redis.Redis, source: str, nonce: str, ttl_s: int) -> bool:
    """True if this is the first claim of ``nonce`` within ``ttl_s``. Redis out of reach
    propagates (the app answers 503); a Redis that refuses the write (out of memory, a read-only
    replica) is Unavailable, a 503 too: the sender retries, nothing was accepted."""
    try:
        return bool(conn.set(nonce_key(source, nonce), b"1", nx=True, ex=max(1, ttl_s)))
    except redis.ResponseError as exc:
        reason = type(exc).__name__  # OutOfMemoryError, ReadOnlyError, ...
        raise Unavailable(f"Redis refused to record the signature ({reason})") from None


def release(conn: redis.Redis, source: str, nonce: str) -> None:
    """Forget a claim whose request was not accepted. If Redis cannot be reached either, the
    claim stays until it expires: a sender that re-signs its retries is not refused by it."""
    try:
        conn.delete(nonce_key(source, nonce))
    except redis.RedisError as exc:
        log.warning("nonce release failed source=%s error=%s", source, type(exc).__name__)
