"""A deliver job: one destination's batches, from its pending set to its outcomes.

A job takes a batch under a lease (the ids move from the pending set to the in-flight set and its
taker's batch), reads the changes from the ledger, asks the breaker and the shared rate limiter,
calls the mapping, and records each contact's outcome: synced, retried with backoff, paused (429,
401/403, breaker) or dead-lettered. Each destination has its own pending set, in-flight set,
attempt counts, pause, takers and dead letters, so one destination's trouble never delays
another. A job runs for at most ``job_budget`` seconds, then re-queues itself behind the other
destinations' jobs; when they run is syncworker/delivery/schedule.py's business.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
import sentry_sdk

from syncworker import codec
from syncworker.bootstrap import DestinationRuntime, Runtime
from syncworker.delivery.breaker import CLOSED, OPEN, PROBE, Breaker, pause_payload
from syncworker.delivery.schedule import ensure_taker, has_due, paused_for
from syncworker.destinations import ContactChange, Destination, Mode, Outcome, OutcomeStatus
from syncworker.errors import BadCredentials, PermanentError, RetryableError, Throttled
from syncworker.events import HygieneEvent
from syncworker.ledger import SyncWrite
from syncworker.privacy import mask, mask_text
from syncworker.store import scripts
from syncworker.store.keys import (
    ATTEMPTS,
    DEAD,
    DSTATS,
    EVENT,
    INFLIGHT,
    PAUSE,
    PENDING,
    TAKERS,
    taken_key,
)

log = logging.getLogger(__name__)

FILL_POLL_S = 0.02  # how often a deliver job waiting for a full batch looks at the pending set


@dataclass
class Report:
    batches: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    stopped: str = ""


class Delivery:
    """One run of the deliver loop for one destination."""

    def __init__(self, runtime: Runtime, destination: str) -> None:
        self.rt = runtime
        self.conn = runtime.conn
        self.s = runtime.settings
        self.dest: DestinationRuntime = runtime.destinations[destination]
        self.name = destination
        self.token = uuid.uuid4().hex  # names this run's batch when it holds no slot
        self._take = scripts.Take(self.conn)
        self._release = scripts.Release(self.conn)
        self._raw_events: dict[str, dict[str, Any]] = {}  # ledger form, kept for dead letters
        self._read: dict[str, bytes] = {}  # the batch's records as read (state destinations)
        self.breaker = Breaker(
            self.conn,
            destination,
            PAUSE + destination,
            failures_to_open=self.s.breaker_failures,
            probe_s=self.s.breaker_probe_s,
            probe_hold_s=self.s.lease_s,
        )

    def run(self, token: str | None = None) -> Report:
        report = Report()
        if token is not None:
            self.token = token
        instance, limiter = self.dest.instantiate(self.conn, self.s)
        started = time.monotonic()
        try:
            while time.monotonic() - started < self.s.job_budget_s:
                if paused_for(self.conn, self.name):
                    report.stopped = "paused"
                    break
                gate, until = self.breaker.admit()
                if gate not in (CLOSED, PROBE):
                    # open, or another job's probe is out: wait (tick leaves a paused one alone)
                    ms = max(1, int((until - time.time()) * 1000))
                    self.conn.set(PAUSE + self.name, pause_payload(until), px=ms, nx=True)
                    report.stopped = "breaker_open"
                    break
                if gate != PROBE:
                    self.fill_wait()
                ids = self.take(self.s.breaker_probe_batch if gate == PROBE else None)
                if not ids:
                    if gate == PROBE:
                        self.breaker.release()
                    report.stopped = "drained"
                    break
                if gate == PROBE:
                    self.count("probes")
                elif len(ids) == self.dest.batch_size and self.dest.concurrency > 1:
                    ensure_taker(self.rt, self.name)  # a backlog: another taker, if allowed
                report.batches += 1
                going = self.process(instance, ids, report)
                if gate == PROBE:
                    self.breaker.release()  # no verdict (throttled, deferred): probe again
                if not going:
                    break
            else:
                report.stopped = "budget"
        finally:
            self._release(TAKERS + self.name, taken_key(self.name, self.token), self.token)
            if paused_for(self.conn, self.name) == 0 and has_due(self.conn, self.name):
                ensure_taker(self.rt, self.name)
        log.info(
            "deliver dest=%s batches=%d outcomes=%s stopped=%s rate_wait_s=%.2f",
            self.name,
            report.batches,
            dict(report.outcomes),
            report.stopped,
            limiter.waited,
        )
        return report

    def fill_wait(self) -> float:
        """Wait, briefly, for a full batch: until ``batch_size`` contacts are due, or until the
        oldest due one has waited ``batch_wait_s`` since it came due (so a contact is never
        held longer than that), or nothing is due. A batch API then gets full batches from a
        trickle. Returns the seconds waited; polls the pending set every ``FILL_POLL_S``."""
        bound = self.dest.batch_wait_s
        if bound <= 0:
            return 0.0
        pending, started = PENDING + self.name, time.monotonic()
        while True:
            now = time.time()
            with self.conn.pipeline(transaction=False) as pipe:
                pipe.zcount(pending, "-inf", now)
                pipe.zrangebyscore(pending, "-inf", now, start=0, num=1, withscores=True)
                count, oldest = pipe.execute()
            if not count or count >= self.dest.batch_size:
                break
            left = min(oldest[0][1] + bound - now, started + bound - time.monotonic())
            if left <= 0:
                break
            time.sleep(min(FILL_POLL_S, left))
        return time.monotonic() - started

    def take(self, limit: int | None = None) -> list[str]:
        size = self.dest.batch_size if limit is None else max(1, min(limit, self.dest.batch_size))
        ids = self._take(
            PENDING + self.name,
            INFLIGHT + self.name,
            taken_key(self.name, self.token),
            time.time(),
            size,
            self.s.lease_s,
        )
        return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]

    # -- one batch ---------------------------------------------------------------------------

    def process(self, instance: Destination, ids: list[str], report: Report) -> bool:
        """Sync one batch and record its outcomes; False when the destination must pause.

        A request refused as a whole (one bad contact fails a batch) is split in halves and each
        half sent again, down to single contacts, so that only the contacts at fault are
        dead-lettered: for k such contacts in a batch of n, at most about 2·k·log2(n) more
        requests, each waiting at the rate limiter like any other.

        Each call tells the breaker whether the destination answered. Once it is open, contacts
        whose call got no answer go back to pending without spending an attempt, and the batch
        stops there (what is left of it goes back too).
        """
        changes, gone = self.read_changes(ids)
        if gone:
            self.conn.zrem(INFLIGHT + self.name, *gone)
            report.outcomes["expired"] += len(gone)
        if not changes:
            return True
        outcomes: list[Outcome | None] = [None] * len(changes)
        groups = [list(range(len(changes)))]
        held: list[int] = []  # no answer while the breaker is open: back without an attempt
        try:
            while groups:
                group = groups.pop()
                answers = self.call(instance, [changes[i] for i in group])
                if self.judge(answers) == OPEN:
                    for i, outcome in zip(group, answers, strict=True):
                        if _unanswered(outcome):
                            held.append(i)
                        else:
                            outcomes[i] = outcome
                    held += [i for rest in groups for i in rest]
                    break
                waits = [o.retry_after or 0.0 for o in answers if o.pause]
                if waits:
                    # throttled part way through (see destinations.throttled_rest): what was
                    # answered is kept, the throttled contacts wait unspent (``record``), and
                    # the rest of the batch goes back as on any throttle
                    for i, outcome in zip(group, answers, strict=True):
                        outcomes[i] = outcome
                    raise Throttled(self.name, max(waits), status=429)
                suspects = []
                for i, outcome in zip(group, answers, strict=True):
                    outcomes[i] = outcome
                    if outcome.whole_request and len(group) > 1:
                        suspects.append(i)
                if suspects:
                    for i in suspects:
                        outcomes[i] = None
                    half = (len(suspects) + 1) // 2
                    groups += [suspects[half:], suspects[:half]]  # the first half goes first
                    self.count("splits")
        except (Throttled, BadCredentials) as exc:
            self.settle(changes, outcomes, report)
            waiting = [c.key for c, o in zip(changes, outcomes, strict=True) if o is None]
            self.stop(exc, waiting, report)
            return False
        self.settle(changes, outcomes, report)
        if held:
            self.hold([changes[i] for i in held], report)
            return False
        return True

    def hold(self, changes: list[ContactChange], report: Report) -> None:
        """Put back, without an attempt, contacts the destination did not answer while its
        breaker is open; they are due at once and wait for the probe to succeed."""
        self.requeue([c.key for c in changes], 0)
        now = time.time()
        with self.conn.pipeline(transaction=False) as pipe:
            for change in changes:
                status: dict[str, Any] = {"at": now, "version": change.state.version}
                if change.event is not None:
                    status["event"] = change.key
                status.update(status="held", detail="destination not answering: breaker open")
                self.rt.ledger.write_sync(pipe, change.email, self.name, status)
            pipe.hincrby(DSTATS + self.name, "breaker_held", len(changes))
            pipe.execute()
        report.outcomes["held"] += len(changes)
        report.stopped = "breaker_open"

    def judge(self, outcomes: list[Outcome]) -> str:
        """Tell the breaker how a call went; return its state after a call with no answer.

        Answered: anything applied, already, not found, or refused. No answer: nothing of that,
        and at least one contact to retry (a 5xx, a timeout). A per-contact wait (``deferred``)
        is neither; a 429 and bad credentials never reach here."""
        if any(o.ok or o.status is OutcomeStatus.FAILED for o in outcomes):
            self.breaker.succeeded()
            return CLOSED
        unanswered = [o for o in outcomes if _unanswered(o)]
        if not unanswered:
            return CLOSED
        return self.breaker.failed(mask_text(unanswered[0].detail))  # may echo an address

    def call(self, instance: Destination, changes: list[ContactChange]) -> list[Outcome]:
        """One ``sync`` of (part of) a batch: an outcome per change; Throttled and BadCredentials
        propagate (they stop the destination)."""
        try:
            outcomes = instance.sync(changes)
            if len(outcomes) != len(changes):
                raise TypeError(
                    f"{self.name}.sync returned {len(outcomes)} outcomes for {len(changes)}"
                )
        except RetryableError as exc:
            outcomes = [Outcome.retry(mask_text(str(exc)))] * len(changes)
        except PermanentError as exc:
            detail = mask_text(f"{exc} {exc.body}".strip())
            outcomes = [Outcome.request_refused(detail)] * len(changes)
        return outcomes

    def settle(
        self, changes: list[ContactChange], outcomes: list[Outcome | None], report: Report
    ) -> None:
        """Record the changes that have an outcome (the others are still being worked on)."""
        done = [(c, o) for c, o in zip(changes, outcomes, strict=True) if o is not None]
        if not done:
            return
        if self.dest.dry_run:
            self.record_dry_run([c for c, _ in done], report)
        else:
            self.record([c for c, _ in done], [o for _, o in done], report)

    def stop(self, exc: Throttled | BadCredentials, keys: list[str], report: Report) -> None:
        """Pause the destination and put ``keys`` back without spending an attempt."""
        if isinstance(exc, Throttled):
            local = exc.status is None
            self.pause(exc.retry_after, "rate limit" if local else f"throttled ({exc.status})")
            self.requeue(keys, exc.retry_after)
            self.count("rate_waits" if local else "throttled")
            report.outcomes["throttled"] += len(keys)
            report.stopped = "rate_limit" if local else "throttled"
            return
        self.pause(self.s.auth_pause_s, f"bad credentials ({exc.status})")
        self.requeue(keys, self.s.auth_pause_s)
        self.count("auth_failures")
        body = mask_text(exc.body)[:300]  # e.g. HubSpot's MISSING_SCOPES names the fix
        log.error(
            "destination paused dest=%s reason=bad_credentials status=%s body=%s",
            self.name,
            exc.status,
            body,
        )
        sentry_sdk.capture_message(
            f"syncworker: {self.name} rejected its credentials (HTTP {exc.status}); "
            f"paused. Response: {body}",
            level="error",
        )
        report.outcomes["paused"] += len(keys)
        report.stopped = "bad_credentials"

    def record_dry_run(self, changes: list[ContactChange], report: Report) -> None:
        """A dry run consumes the batch and says so in each contact's sync status."""
        now = time.time()
        with self.conn.pipeline(transaction=True) as pipe:
            for change in changes:
                pipe.zrem(INFLIGHT + self.name, change.key)
                status = {"status": "dry_run", "at": now, "version": change.state.version}
                self.rt.ledger.write_sync(pipe, change.email, self.name, status)
            pipe.hincrby(DSTATS + self.name, "dry_run", len(changes))
            pipe.execute()
        report.outcomes["dry_run"] += len(changes)

    def read_changes(self, ids: list[str]) -> tuple[list[ContactChange], list[str]]:
        """ContactChanges for ids taken from the pending set, with the ledger's state *now*."""
        ledger = self.rt.ledger
        self._read = {}
        if self.dest.mode is Mode.STATE:
            raws = ledger.raw_records(ids)
            # kept for recording the outcomes: a record not changed since is written as is
            self._read = {email: raw for email, raw in zip(ids, raws, strict=True) if raw}
            changes = [
                ContactChange(key=state.email, email=state.email, state=state, synced_reasons=last)
                for state, last in ledger.states_confirmed(self.name, ids, raws)
            ]
            return changes, []
        with self.conn.pipeline(transaction=False) as pipe:
            for key in ids:
                pipe.get(EVENT + key)
            raws = pipe.execute()
        events: list[tuple[str, HygieneEvent]] = []
        gone: list[str] = []
        self._raw_events = {}
        for key, raw in zip(ids, raws, strict=True):
            if raw is None:
                gone.append(key)  # older than the dedupe TTL: nothing left to send
                continue
            form = orjson.loads(raw)
            self._raw_events[key] = form
            try:
                events.append((key, codec.load(form)))
            except codec.InvalidEvent as exc:
                self.unreadable(key, form, str(exc))
                gone.append(key)
        emails = sorted({e.email for _, e in events})
        by_email = {s.email: s for s in ledger.states(emails)}
        changes = [
            ContactChange(key=key, email=e.email, state=by_email[e.email], event=e)
            for key, e in events
        ]
        return changes, gone

    def unreadable(self, key: str, form: Any, why: str) -> None:
        """A stored event the codec refuses (written by a release with other rules) cannot be
        sent: it is dead-lettered with the reason, never dropped in silence."""
        entry = {"id": key, "error": f"stored event unreadable: {why}", "at": time.time()}
        with self.conn.pipeline(transaction=True) as pipe:
            pipe.lpush(DEAD + self.name, orjson.dumps({**entry, "event": form}))
            pipe.hincrby(DSTATS + self.name, "dead", 1)
            pipe.execute()
        log.error("deliver dest=%s event unreadable: %s (dead-lettered)", self.name, why)

    def record(self, changes: list[ContactChange], outcomes: list[Outcome], report: Report) -> None:
        if not changes:
            return
        # a mapping's detail may quote the destination's answer, which often echoes addresses:
        # masked before it is stored in sync status and dead letters, or logged
        outcomes = [replace(o, detail=mask_text(o.detail)) if o.detail else o for o in outcomes]
        now = time.time()
        attempts_key = ATTEMPTS + self.name
        retrying = [
            c
            for c, o in zip(changes, outcomes, strict=True)
            if o.status is OutcomeStatus.RETRY and o.counts
        ]
        previous: dict[str, dict[str, Any]] = {}
        if retrying:
            raws = self.conn.hmget(attempts_key, [c.key for c in retrying])
            previous = {c.key: orjson.loads(r) for c, r in zip(retrying, raws, strict=True) if r}
        syncs: list[SyncWrite] = []
        counted: Counter[str] = Counter()
        applied: list[str] = []
        with self.conn.pipeline(transaction=True) as pipe:
            pipe.zrem(INFLIGHT + self.name, *(c.key for c in changes))
            for change, outcome in zip(changes, outcomes, strict=True):
                status: dict[str, Any] = {"at": now, "version": change.state.version}
                if change.event is not None:
                    status["event"] = change.key
                confirmed = None
                if outcome.ok:
                    applied.append(change.key)
                    status["status"] = outcome.status.value
                    if self.dest.mode is Mode.STATE:
                        confirmed = change.state.reasons
                elif outcome.status is OutcomeStatus.RETRY and not outcome.counts:
                    delay = outcome.retry_after or self.backoff(1)
                    pipe.zadd(PENDING + self.name, {change.key: now + delay})
                    label = "throttled" if outcome.pause else "deferred"
                    status.update(status=label, detail=outcome.detail, next_at=now + delay)
                elif outcome.status is OutcomeStatus.RETRY:
                    prior = previous.get(change.key, {"n": 0, "first": now})
                    n, first = int(prior["n"]) + 1, float(prior["first"])
                    if n >= self.s.max_attempts or now - first >= self.s.max_age_s:
                        self.dead_letter(pipe, change, outcome.detail, n, now)
                        status.update(status="dead", detail=outcome.detail, attempts=n)
                        report.outcomes["dead"] += 1
                    else:
                        delay = outcome.retry_after or self.backoff(n)
                        pipe.hset(attempts_key, change.key, orjson.dumps({"n": n, "first": first}))
                        pipe.zadd(PENDING + self.name, {change.key: now + delay})
                        status.update(status="retrying", detail=outcome.detail, attempts=n)
                        status["next_at"] = now + delay
                else:
                    self.dead_letter(pipe, change, outcome.detail, 1, now)
                    status.update(status="dead", detail=outcome.detail)
                    report.outcomes["dead"] += 1
                syncs.append(SyncWrite(change.email, self.name, status, confirmed))
                counted[outcome.status.value] += 1
            if applied:
                pipe.hdel(attempts_key, *applied)
            self.rt.ledger.write_syncs(pipe, syncs, self._read)
            for label, n in counted.items():
                pipe.hincrby(DSTATS + self.name, label, n)
            pipe.hincrby(DSTATS + self.name, "batches", 1)
            pipe.execute()
        report.outcomes.update(counted)
        for change, outcome in zip(changes, outcomes, strict=True):
            if not outcome.ok:
                log.warning(
                    "sync dest=%s addr=%s outcome=%s detail=%s",
                    self.name,
                    mask(change.email),
                    outcome.status.value,
                    mask_text(outcome.detail)[:200],
                )

    def backoff(self, attempt: int) -> float:
        """Exponential backoff with equal jitter, capped."""
        delay = min(self.s.backoff_cap_s, self.s.backoff_base_s * 2.0 ** (attempt - 1))
        return float(delay / 2 + random.uniform(0, delay / 2))

    def dead_letter(self, pipe: Any, change: ContactChange, error: str, n: int, now: float) -> None:
        entry: dict[str, Any] = {
            "id": change.key,
            "email": change.email,
            "error": error[:500],
            "attempts": n,
            "at": now,
        }
        if change.key in self._raw_events:
            entry["event"] = self._raw_events[change.key]
        pipe.lpush(DEAD + self.name, orjson.dumps(entry))
        pipe.hdel(ATTEMPTS + self.name, change.key)
        pipe.hincrby(DSTATS + self.name, "dead", 1)

    def requeue(self, ids: list[str], delay: float) -> None:
        """Put a batch back without spending an attempt (throttling and pauses are not failure)."""
        if not ids:
            return
        due = time.time() + delay
        with self.conn.pipeline(transaction=True) as pipe:
            pipe.zrem(INFLIGHT + self.name, *ids)
            pipe.zadd(PENDING + self.name, dict.fromkeys(ids, due))
            pipe.execute()

    def pause(self, seconds: float, reason: str) -> None:
        ms = max(1, int(seconds * 1000))
        self.conn.set(
            PAUSE + self.name,
            orjson.dumps({"reason": reason, "until": time.time() + seconds}),
            px=ms,
        )
        log.warning("destination paused dest=%s for_s=%.1f reason=%s", self.name, seconds, reason)

    def count(self, field_name: str) -> None:
        self.conn.hincrby(DSTATS + self.name, field_name, 1)


def _unanswered(outcome: Outcome) -> bool:
    return outcome.status is OutcomeStatus.RETRY and outcome.counts
