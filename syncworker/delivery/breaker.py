"""A destination's circuit breaker, in Redis so that every worker process shares it.

closed -> ``BREAKER_FAILURES`` calls in a row fail (5xx, timeouts, connections refused) -> open:
the destination is paused and no contact spends an attempt. Every ``BREAKER_PROBE`` seconds one
deliver job takes the probe (half-open) and sends ``BREAKER_PROBE_BATCH`` contacts: an answer
closes the breaker, a failure opens it again. A 429, bad credentials, a limit on one contact and a
refusal of one contact are answers, not failures: they never open it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
import redis

from syncworker.store.keys import BREAKER

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
PROBE = "probe"  # what ``admit`` answers the one job that is to send the probe
PAUSE_REASON = "breaker open"

FAILED_LUA = """
-- KEYS[1] the destination's breaker hash
-- KEYS[2] the destination's pause key
-- ARGV[1] now (unix seconds)
-- ARGV[2] failures in a row that open the breaker
-- ARGV[3] seconds from now to the next probe
-- ARGV[4] the failure, masked (kept as last_error)
local now, wait = tonumber(ARGV[1]), tonumber(ARGV[3])
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
local n = redis.call('HINCRBY', KEYS[1], 'failures', 1)
redis.call('HSET', KEYS[1], 'last_error', ARGV[4], 'last_error_at', ARGV[1])
if state == 'closed' and n < tonumber(ARGV[2]) then return state end
if state == 'closed' then redis.call('HSET', KEYS[1], 'since', ARGV[1]) end
redis.call('HSET', KEYS[1], 'state', 'open', 'probe_at', tostring(now + wait))
local ms = math.max(1, math.floor(wait * 1000))
if redis.call('PTTL', KEYS[2]) < ms then
  local pause = cjson.encode({reason = 'breaker open', ['until'] = now + wait})
  redis.call('SET', KEYS[2], pause, 'PX', ms)
end
return 'open'
"""

SUCCEEDED_LUA = """
-- KEYS[1] the destination's breaker hash
-- KEYS[2] the destination's pause key
-- ARGV[1] now (unix seconds)
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
redis.call('HSET', KEYS[1], 'failures', 0, 'last_success_at', ARGV[1])
if state ~= 'closed' then
  redis.call('HSET', KEYS[1], 'state', 'closed', 'since', ARGV[1])
  redis.call('HDEL', KEYS[1], 'probe_at')
  local pause = redis.call('GET', KEYS[2])
  if pause and string.find(pause, 'breaker open', 1, true) then redis.call('DEL', KEYS[2]) end
end
return state
"""

ADMIT_LUA = """
-- KEYS[1] the destination's breaker hash
-- ARGV[1] now (unix seconds)
-- ARGV[2] seconds the probe may take before another job may probe (its holder died)
local now = tonumber(ARGV[1])
local state = redis.call('HGET', KEYS[1], 'state')
if not state or state == 'closed' then return {'closed', '0'} end
local at = tonumber(redis.call('HGET', KEYS[1], 'probe_at') or '0')
if now < at then return {state, tostring(at)} end
local held = tostring(now + tonumber(ARGV[2]))
redis.call('HSET', KEYS[1], 'state', 'half_open', 'probe_at', held)
return {'probe', held}
"""

RELEASE_LUA = """
-- KEYS[1] the destination's breaker hash
-- ARGV[1] now (unix seconds)
if redis.call('HGET', KEYS[1], 'state') == 'half_open' then
  redis.call('HSET', KEYS[1], 'state', 'open', 'probe_at', ARGV[1])
  return 1
end
return 0
"""


@dataclass
class Breaker:
    """The breaker of one destination: ``admit`` before taking a batch, then ``failed`` or
    ``succeeded`` after each call that got (or did not get) an answer."""

    conn: redis.Redis
    destination: str
    pause_key: str
    failures_to_open: int
    probe_s: float
    probe_hold_s: float

    def __post_init__(self) -> None:
        self.key = BREAKER + self.destination
        self._failed = self.conn.register_script(FAILED_LUA)
        self._succeeded = self.conn.register_script(SUCCEEDED_LUA)
        self._admit = self.conn.register_script(ADMIT_LUA)
        self._release = self.conn.register_script(RELEASE_LUA)

    def admit(self) -> tuple[str, float]:
        """``(CLOSED, 0)``: send as usual; ``(PROBE, t)``: this job sends the probe; ``(OPEN or
        HALF_OPEN, t)``: wait until ``t`` (the next probe, or the end of another job's)."""
        state, at = self._admit(keys=[self.key], args=[time.time(), self.probe_hold_s])
        return _text(state), float(_text(at))

    def failed(self, error: str) -> str:
        """Count a call that got no answer (5xx, timeout); return the state it leaves."""
        args: list[float | int | str] = [
            time.time(),
            max(1, self.failures_to_open),
            self.probe_s,
            error[:300],
        ]
        return _text(self._failed(keys=[self.key, self.pause_key], args=args))

    def succeeded(self) -> str:
        """Count a call the destination answered; return the state it was in."""
        return _text(self._succeeded(keys=[self.key, self.pause_key], args=[time.time()]))

    def release(self) -> None:
        """A probe that got no verdict (throttled, nothing to send): the next job may probe."""
        self._release(keys=[self.key], args=[time.time()])


def read(conn: redis.Redis, destination: str) -> dict[str, Any]:
    """The breaker as ``syncworker status`` shows it."""
    return describe(conn.hgetall(BREAKER + destination))


def describe(raw: dict[Any, Any]) -> dict[str, Any]:
    fields = {_text(k): _text(v) for k, v in raw.items()}

    def number(name: str) -> float | None:
        return float(fields[name]) if fields.get(name) else None

    state = fields.get("state", CLOSED)
    return {
        "state": state,
        "since": number("since"),
        "failures": int(fields.get("failures") or 0),
        "next_probe_at": number("probe_at") if state != CLOSED else None,
        "last_success_at": number("last_success_at"),
        "last_error_at": number("last_error_at"),
        "last_error": fields.get("last_error") or None,
    }


def pause_payload(until: float) -> bytes:
    """The pause a job sets while it waits for the next probe (only if none is set)."""
    return orjson.dumps({"reason": PAUSE_REASON, "until": until})


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
