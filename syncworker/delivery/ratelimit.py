"""Per-destination request pacing in Redis, shared by every worker process.

A GCRA with no burst: each request reserves the next slot, ``interval`` after the previous one, so
callers in any process queue up fairly and no window of ``per_seconds`` ever sees more than
``requests`` calls. Slots are spaced over ``per_seconds + slack`` rather than ``per_seconds``: a
vendor counts calls by their arrival, and ``slack`` is how much the one-way latency of the first
and the last call of a window may differ before the vendor sees one call too many (its 429 is
handled, but costs a retry). The slack is 2 % of the window, at least 40 ms: 200 ms for HubSpot's
100 calls / 10 s, so a steady drain runs at 98 % of the contract.
A wait longer than the cap is not taken: the caller gets :class:`Throttled` and pauses instead.
"""

from __future__ import annotations

import time

import redis

from syncworker.destinations import Rate
from syncworker.errors import Throttled
from syncworker.store import scripts
from syncworker.store.keys import RATE


class RateLimiter:
    #: the latency jitter a window absorbs: this share of the window, and at least MIN_SLACK_S
    SLACK_SHARE = 0.02
    MIN_SLACK_S = 0.04

    def __init__(self, conn: redis.Redis, destination: str, rate: Rate, wait_cap: float) -> None:
        self.destination = destination
        self.key = RATE + destination
        self.slack = max(self.MIN_SLACK_S, rate.per_seconds * self.SLACK_SHARE)
        self.interval = (rate.per_seconds + self.slack) / rate.requests
        self.wait_cap = wait_cap
        self._reserve = scripts.RateReserve(conn)
        self.waited = 0.0

    def acquire(self) -> None:
        """Wait for this destination's next request slot, or raise Throttled if it is far off."""
        reserved, wait_text = self._reserve(self.key, self.interval, self.wait_cap)
        wait = float(wait_text)
        if not int(reserved):
            raise Throttled(self.destination, wait, "local rate limit")
        if wait > 0:
            self.waited += wait
            time.sleep(wait)
