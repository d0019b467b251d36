"""Redis connections, the two RQ queues, and the one-round-trip enqueue of an ingest job.

Jobs carry JSON only (RQ's JSON serializer) and descriptions without addresses, because RQ logs
job descriptions at INFO.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from rq import Queue
from rq import Retry as JobRetry
from rq.job import Job
from rq.serializers import JSONSerializer

INGEST = "syncworker-ingest"
DELIVER = "syncworker-deliver"
QUEUES = (INGEST, DELIVER)
STATS = "sw:stats"


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


def queue(conn: redis.Redis, name: str) -> Queue:
    return Queue(name, connection=conn, serializer=JSONSerializer)


class Enqueuer:
    """Enqueues an ingest job and bumps intake counters in one pipelined round trip."""

    def __init__(self, conn: redis.Redis) -> None:
        self.conn = conn
        self.queue = queue(conn, INGEST)

    def ingest(
        self,
        payload: dict[str, Any] | None,
        description: str,
        counters: Mapping[str, int],
    ) -> str | None:
        with self.conn.pipeline() as pipe:
            job: Job | None = None
            if payload is not None:
                job = self.queue.enqueue_call(
                    "syncworker.jobs.ingest",
                    args=(payload,),
                    description=description,
                    result_ttl=0,  # nobody reads the result; a kept one costs ~6.5 KB
                    failure_ttl=30 * 86400,  # a failed ingest stays inspectable and requeueable
                    retry=JobRetry(max=3, interval=[5, 30, 120]),
                    pipeline=pipe,
                )
            for field, amount in counters.items():
                pipe.hincrby(STATS, field, amount)
            pipe.execute()
        return job.id if job is not None else None
