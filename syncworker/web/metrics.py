"""``/metrics``: the counters and backlogs kept in Redis (shared by every web and worker process)
in Prometheus's exposition, from the one snapshot syncworker/store/stats.py reads."""

from __future__ import annotations

import functools
from collections.abc import Iterator

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from syncworker.delivery.breaker import CLOSED, HALF_OPEN, OPEN
from syncworker.intake.contract import OTHER_CODE
from syncworker.queue.workers import FAILED
from syncworker.store import stats


@functools.cache
def _intake_labels() -> frozenset[str]:
    """Every value the ``event`` label of ``syncworker_intake_events`` may take: the hygiene
    kinds, ``quarantined``, ``other`` and the native codes some ESP module knows."""
    from syncworker.events import Kind
    from syncworker.intake.registry import ESP_PARSERS

    known = {code for parser in ESP_PARSERS.values() for code in parser.known_codes}
    return frozenset({*known, *(kind.value for kind in Kind), "quarantined", OTHER_CODE})


# the per-destination health gauges: name (after ``syncworker_``), help, labels beside
# ``destination``; in the order :meth:`RedisStatsCollector.health` fills them
HEALTH_GAUGES: tuple[tuple[str, str, list[str]], ...] = (
    ("breaker_state", "1 for the breaker's current state (closed, open, half_open)", ["state"]),
    ("breaker_since_seconds", "Unix time the breaker's state began (0: never changed)", []),
    ("breaker_failures", "Calls in a row with no answer (5xx, timeout)", []),
    (
        "paused_until_seconds",
        "Unix time a paused destination resumes, by reason (absent: not paused)",
        ["reason"],
    ),
    (
        "oldest_pending_age_seconds",
        "How long the longest-waiting due contact has waited (0: none due)",
        [],
    ),
    (
        "last_success_seconds",
        "Unix time of the last call the destination answered (0: none yet)",
        [],
    ),
    ("last_error_seconds", "Unix time of the last call with no answer (0: none yet)", []),
)


class RedisStatsCollector(Collector):
    """Exposes the counters kept in Redis (shared by every web and worker process)."""

    def __init__(self, conn: redis.Redis, destinations: list[str]) -> None:
        self.conn = conn
        self.destinations = destinations

    def collect(self) -> Iterator[Metric]:
        snapshot = stats.read(self.conn, self.destinations)
        failed_keys = stats.failed_job_keys()
        intake = CounterMetricFamily(
            "syncworker_intake_events", "Events received", labels=["source", "event"]
        )
        ledger = CounterMetricFamily(
            "syncworker_ledger_events", "Ledger effects", labels=["effect"]
        )
        other = CounterMetricFamily("syncworker_intake", "Intake counters", labels=["what"])
        failures = CounterMetricFamily(
            "syncworker_job_failures", "Failed job runs, retried or not", labels=["queue"]
        )
        failures_seen = set()
        intake_values: dict[tuple[str, str], float] = {}
        for key, number in snapshot.counters.items():
            value = float(number)
            parts = key.split(":")
            if parts[0] == "in" and len(parts) >= 3:
                # written by the intake route with known codes only; a counter kept from an
                # older release may hold any text: those are summed under one label
                code = key.split(":", 2)[2]
                label = code if code in _intake_labels() else OTHER_CODE
                intake_values[(parts[1], label)] = intake_values.get((parts[1], label), 0) + value
            elif parts[0] == "ledger" and len(parts) == 2:
                ledger.add_metric([parts[1]], value)
            elif key.startswith(FAILED) and key[len(FAILED) :] in failed_keys:
                failures.add_metric([key[len(FAILED) :]], value)
                failures_seen.add(key[len(FAILED) :])
            else:
                other.add_metric([key], value)
        for name in failed_keys.keys() - failures_seen:
            failures.add_metric([name], 0.0)  # a counter that exists before its first failure
        for labels, total in intake_values.items():
            intake.add_metric(list(labels), total)
        yield intake
        yield ledger
        yield other
        yield failures
        failed = GaugeMetricFamily(
            "syncworker_failed_jobs", "Jobs in RQ's failed-job registry", labels=["queue"]
        )
        for name, count in snapshot.failed_jobs.items():
            failed.add_metric([name], count)
        yield failed
        yield GaugeMetricFamily(
            "syncworker_ingest_backlog",
            "Accepted requests waiting in the ingest inbox (read or not)",
            snapshot.inbox,
        )
        outcomes = CounterMetricFamily(
            "syncworker_destination", "Delivery counters", labels=["destination", "what"]
        )
        pending = GaugeMetricFamily("syncworker_pending", "Pending ids", labels=["destination"])
        inflight = GaugeMetricFamily("syncworker_inflight", "In-flight ids", labels=["destination"])
        dead = GaugeMetricFamily("syncworker_dead_letters", "Dead letters", labels=["destination"])
        for name in self.destinations:
            dest = snapshot.destinations[name]
            for k, v in dest.counters.items():
                outcomes.add_metric([name, k], float(v))
            pending.add_metric([name], dest.pending)
            inflight.add_metric([name], dest.in_flight)
            dead.add_metric([name], dest.dead_letters)
        yield outcomes
        yield pending
        yield inflight
        yield dead
        yield from self.health(snapshot)

    def health(self, snapshot: stats.Snapshot) -> Iterator[Metric]:
        """Per destination: breaker state and since when, failures in a row, pause (reason and
        until when), the longest wait of a due contact, last answered and last failed call."""
        state, since, failures, paused, oldest, success, error = (
            GaugeMetricFamily(f"syncworker_{name}", text, labels=["destination", *more])
            for name, text, more in HEALTH_GAUGES
        )
        for name in self.destinations:
            seen = stats.health(snapshot, name)
            for value in (CLOSED, OPEN, HALF_OPEN):
                current = seen["breaker"]["state"] == value
                state.add_metric([name, value], 1.0 if current else 0.0)
            since.add_metric([name], seen["breaker"]["since"] or 0.0)
            failures.add_metric([name], seen["breaker"]["failures"])
            pause = seen["paused"]
            if isinstance(pause, dict):
                reason = str(pause.get("reason", "")).split(" (")[0]  # bounded label values
                paused.add_metric([name, reason], float(pause.get("until") or 0.0))
            oldest.add_metric([name], seen["oldest_pending_s"] or 0.0)
            success.add_metric([name], seen["last_success_at"] or 0.0)
            error.add_metric([name], seen["last_error_at"] or 0.0)
        yield from (state, since, failures, paused, oldest, success, error)
