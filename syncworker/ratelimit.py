"""Per-destination request pacing in Redis, shared by every worker process.

A GCRA with no burst: each request reserves the next slot, ``interval`` after the previous one, so
callers in any process queue up fairly and no window of ``per_seconds`` ever sees more than
``requests`` calls (a small margin absorbs network jitter between us and the destination's clock).
A wait longer than the cap is not taken: the caller gets :class:`Throttled` and pauses instead.
"""

from __future__ import annotations

import time

import redis

from syncworker.destinations import Rate
from syncworker.errors import Throttled

RATE = "sw:rate:"

RESERVE_LUA = """
local interval, cap = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = tat - now
if wait > cap then return {0, tostring(wait)} end
local nxt = tat + interval
redis.call('SET', KEYS[1], tostring(nxt), 'PX', math.ceil((nxt - now) * 1000) + 1000)
return {1, tostring(wait)}
"""


class RateLimiter:
    #: slots are spaced 4% wider than the contract: a window then holds ``requests`` calls even
    #: when one arrives ~4% of a slot late and the next on time (loopback or network jitter)
    MARGIN = 0.04

    def __init__(self, conn: redis.Redis, destination: str, rate: Rate, wait_cap: float) -> None:
        self.destination = destination
        self.key = RATE + destination
        self.interval = rate.per_seconds * (1 + self.MARGIN) / rate.requests
        self.wait_cap = wait_cap
        self._reserve = conn.register_script(RESERVE_LUA)
        self.waited = 0.0

    def acquire(self) -> None:
        """Wait for this destination's next request slot, or raise Throttled if it is far off."""
        reserved, wait_text = self._reserve(keys=[self.key], args=[self.interval, self.wait_cap])
        wait = float(wait_text)
        if not int(reserved):
            raise Throttled(self.destination, wait, "local rate limit")
        if wait > 0:
            self.waited += wait
            time.sleep(wait)
