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

from syncworker.store import scripts
from syncworker.store.keys import BREAKER

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
PROBE = "probe"  # what ``admit`` answers the one job that is to send the probe
PAUSE_REASON = "breaker open"


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
        self._failed = scripts.BreakerFailed(self.conn)
        self._succeeded = scripts.BreakerSucceeded(self.conn)
        self._admit = scripts.BreakerAdmit(self.conn)
        self._release = scripts.BreakerRelease(self.conn)

    def admit(self) -> tuple[str, float]:
        """``(CLOSED, 0)``: send as usual; ``(PROBE, t)``: this job sends the probe; ``(OPEN or
        HALF_OPEN, t)``: wait until ``t`` (the next probe, or the end of another job's)."""
        state, at = self._admit(self.key, time.time(), self.probe_hold_s)
        return _text(state), float(_text(at))

    def failed(self, error: str) -> str:
        """Count a call that got no answer (5xx, timeout); return the state it leaves."""
        state = self._failed(
            self.key,
            self.pause_key,
            time.time(),
            max(1, self.failures_to_open),
            self.probe_s,
            error[:300],
        )
        return _text(state)

    def succeeded(self) -> str:
        """Count a call the destination answered; return the state it was in."""
        return _text(self._succeeded(self.key, self.pause_key, time.time()))

    def release(self) -> None:
        """A probe that got no verdict (throttled, nothing to send): the next job may probe."""
        self._release(self.key, time.time())


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
