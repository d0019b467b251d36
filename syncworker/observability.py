"""Logging set-up, Sentry (addresses scrubbed) and Prometheus exposition of Redis counters."""

from __future__ import annotations

import functools
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any

import redis
import sentry_sdk
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sentry_sdk._types import AnnotatedValue

from syncworker.intake.contract import OTHER_CODE
from syncworker.privacy import mask_text, scrub

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class MaskingFormatter(logging.Formatter):
    """Masks every address in the finished line, tracebacks included: our own lines mask what
    they log, but a library's (RQ logs a failed job's exception message and traceback) do not.
    ``inner``: mask what another formatter (e.g. gunicorn's) makes of the record."""

    def __init__(
        self, fmt: str | None = None, datefmt: str | None = None, *, inner: Any = None
    ) -> None:
        super().__init__(fmt, datefmt)
        self.inner: logging.Formatter | None = inner

    def format(self, record: logging.LogRecord) -> str:
        text = self.inner.format(record) if self.inner is not None else super().format(record)
        return mask_text(text)


def setup_logging(level: str = "INFO") -> None:
    """Add a stderr handler to the root logger, only if it has none."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(MaskingFormatter(LOG_FORMAT))
        root.addHandler(handler)
    root.setLevel(level)


def before_send(event: Any, hint: Any) -> Any:
    """Drop request bodies, cookies and local variables; mask every address left anywhere.

    ``scrub`` walks the whole event, keys included: exception values, the message and log entry
    (its params too), breadcrumbs, ``extra`` (RQ's job arguments), ``contexts``, tags, the
    transaction name, request URLs and span descriptions (Redis keys hold addresses)."""
    request = event.get("request")
    if isinstance(request, dict):
        for key in ("data", "cookies", "query_string"):
            request.pop(key, None)
        headers = request.get("headers")
        if isinstance(headers, dict):
            for name in list(headers):
                if name.lower() in ("authorization", "cookie", "x-api-key"):
                    headers[name] = "[Filtered]"
    for exc in (event.get("exception") or {}).get("values") or []:
        for frame in (exc.get("stacktrace") or {}).get("frames") or []:
            frame.pop("vars", None)
    return scrub(event, _scrub_other)


def _scrub_other(value: Any) -> Any:
    """Sentry's own placeholders (``AnnotatedValue``: "removed", "[Filtered]") stay what they are;
    any other object is sent as its masked ``repr``."""
    if isinstance(value, AnnotatedValue):
        return AnnotatedValue(scrub(value.value, _scrub_other), value.metadata)
    return mask_text(repr(value))


def setup_sentry(dsn: str, *, transport: Any = None, release: str | None = None) -> bool:
    """Start sentry-sdk with Flask and RQ integrations and no PII, if a DSN is configured."""
    if not dsn:
        return False
    from sentry_sdk.integrations.flask import FlaskIntegration
    from sentry_sdk.integrations.rq import RqIntegration

    options: dict[str, Any] = {}
    if transport is not None:
        options["transport"] = transport
    sentry_sdk.init(
        dsn=dsn,
        integrations=[FlaskIntegration(), RqIntegration()],
        # the structured successor of send_default_pii=False: no user info, bodies, cookies,
        # query strings or frame variables (they would carry addresses)
        data_collection={
            "user_info": False,
            "http_bodies": [],
            "cookies": {"mode": "off"},
            "url_query_params": {"mode": "off"},
            "stack_frame_variables": False,
            "queues": False,
        },
        include_local_variables=False,
        max_request_body_size="never",
        before_send=before_send,
        before_send_transaction=before_send,
        release=release,
        **options,
    )
    return True


@functools.cache
def _intake_labels() -> frozenset[str]:
    """Every value the ``event`` label of ``syncworker_intake_events`` may take: the hygiene
    kinds, ``quarantined``, ``other`` and the native codes some ESP module knows."""
    from syncworker.events import Kind
    from syncworker.intake.registry import ESP_PARSERS

    known = {code for parser in ESP_PARSERS.values() for code in parser.known_codes}
    return frozenset({*known, *(kind.value for kind in Kind), "quarantined", OTHER_CODE})


class RedisStatsCollector(Collector):
    """Exposes the counters kept in Redis (shared by every web and worker process)."""

    def __init__(self, conn: redis.Redis, destinations: list[str]) -> None:
        self.conn = conn
        self.destinations = destinations

    def collect(self) -> Iterator[Metric]:
        from syncworker.queue.workers import FAILED
        from syncworker.store.keys import DEAD, DSTATS, INBOX, INFLIGHT, PENDING, STATS
        from syncworker.store.stats import failed_job_keys

        failed_keys = failed_job_keys()
        with self.conn.pipeline(transaction=False) as pipe:
            pipe.hgetall(STATS)
            pipe.xlen(INBOX)
            for key in failed_keys.values():
                pipe.zcount(key, time.time(), "+inf")
            for name in self.destinations:
                pipe.hgetall(DSTATS + name)
                pipe.zcard(PENDING + name)
                pipe.zcard(INFLIGHT + name)
                pipe.llen(DEAD + name)
            replies = pipe.execute()
        stats, ingest_backlog = replies[0], replies[1]
        failed_now = dict(zip(failed_keys, replies[2 : 2 + len(failed_keys)], strict=True))
        replies = replies[2 + len(failed_keys) :]
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
        for raw_key, raw_value in stats.items():
            key, value = raw_key.decode(), float(raw_value)
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
        for name, count in failed_now.items():
            failed.add_metric([name], count)
        yield failed
        yield GaugeMetricFamily(
            "syncworker_ingest_backlog",
            "Accepted requests waiting in the ingest inbox (read or not)",
            ingest_backlog,
        )
        outcomes = CounterMetricFamily(
            "syncworker_destination", "Delivery counters", labels=["destination", "what"]
        )
        pending = GaugeMetricFamily("syncworker_pending", "Pending ids", labels=["destination"])
        inflight = GaugeMetricFamily("syncworker_inflight", "In-flight ids", labels=["destination"])
        dead = GaugeMetricFamily("syncworker_dead_letters", "Dead letters", labels=["destination"])
        for i, name in enumerate(self.destinations):
            dstats, p, f, d = replies[4 * i : 4 + 4 * i]
            for k, v in dstats.items():
                outcomes.add_metric([name, k.decode()], float(v))
            pending.add_metric([name], p)
            inflight.add_metric([name], f)
            dead.add_metric([name], d)
        yield outcomes
        yield pending
        yield inflight
        yield dead
        yield from self.health()

    def health(self) -> Iterator[Metric]:
        """Per destination: breaker state and since when, failures in a row, pause (reason and
        until when), the longest wait of a due contact, last answered and last failed call."""
        from syncworker.delivery.breaker import CLOSED, HALF_OPEN, OPEN
        from syncworker.store.stats import health

        names = self.destinations
        by_name = health(self.conn, names)
        state = GaugeMetricFamily(
            "syncworker_breaker_state",
            "1 for the breaker's current state (closed, open, half_open)",
            labels=["destination", "state"],
        )
        since = GaugeMetricFamily(
            "syncworker_breaker_since_seconds",
            "Unix time the breaker's state began (0: never changed)",
            labels=["destination"],
        )
        failures = GaugeMetricFamily(
            "syncworker_breaker_failures",
            "Calls in a row with no answer (5xx, timeout)",
            labels=["destination"],
        )
        paused = GaugeMetricFamily(
            "syncworker_paused_until_seconds",
            "Unix time a paused destination resumes, by reason (absent: not paused)",
            labels=["destination", "reason"],
        )
        oldest = GaugeMetricFamily(
            "syncworker_oldest_pending_age_seconds",
            "How long the longest-waiting due contact has waited (0: none due)",
            labels=["destination"],
        )
        success = GaugeMetricFamily(
            "syncworker_last_success_seconds",
            "Unix time of the last call the destination answered (0: none yet)",
            labels=["destination"],
        )
        error = GaugeMetricFamily(
            "syncworker_last_error_seconds",
            "Unix time of the last call with no answer (0: none yet)",
            labels=["destination"],
        )
        for name in names:
            seen = by_name[name]
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
