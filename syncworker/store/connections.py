"""Redis clients: the web's, which fails fast (intake answers 503 within about its timeout rather
than hold an ESP's request), and the workers', which RQ's blocking pops may hold for long."""

from __future__ import annotations

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry


def connect(url: str, timeout: float = 1.0) -> redis.Redis:
    """A client that fails fast: no retry loop, so intake can answer 503 within ~``timeout``."""
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=timeout,
        socket_timeout=max(timeout, 0.1),
        retry=Retry(NoBackoff(), 0),
        retry_on_timeout=False,
        health_check_interval=30,
    )


def connect_worker(url: str) -> redis.Redis:
    """A client for workers: RQ blocks on BLMOVE, so no short read timeout here."""
    return redis.Redis.from_url(url, socket_connect_timeout=5, health_check_interval=30)
