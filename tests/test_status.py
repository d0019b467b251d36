"""A failed job is visible: `syncworker status`, /v1/stats and /metrics count it per queue, and
Sentry (a loopback receiver standing in for sentry.io) gets its exception, scrubbed."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import orjson
import pytest
import redis
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families
from rq import Queue
from rq.serializers import JSONSerializer

from syncworker.cli import main
from syncworker.devkit.emulators.base import Emulator, Request, Response
from syncworker.store.keys import DELIVER, INGEST
from syncworker.web.app import create_app
from tests.conftest import SettingsFactory
from tests.processes import clean_env, start_worker, wait_until

ADDRESS = re.compile(rb"[A-Za-z0-9._%+-]{2,}@example\.com")


class SentryReceiver(Emulator):
    """Takes what sentry-sdk sends to ``POST /api/<project>/envelope/``, ungzipped."""

    def handle(self, request: Request) -> Response:
        if request.method == "POST" and request.path.endswith("/envelope/"):
            return Response(200, {})
        return super().handle(request)

    def envelopes(self) -> list[bytes]:
        out = []
        for request in self.calls(method="POST"):
            gzipped = request.headers.get("content-encoding") == "gzip"
            out.append(gzip.decompress(request.body) if gzipped else request.body)
        return out


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus exposition by (name, labels); the parser rejects bad text."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.mark.slow
def test_failed_jobs_show_in_status_stats_metrics_and_sentry(
    redis_url: str, redis_conn: redis.Redis, make_settings: SettingsFactory, tmp_path: Path
) -> None:
    # an invalid event no longer fails its job (it is quarantined): a payload that is not one does
    bad = [{"email": "jane.doe@example.com", "kind": "nonsense"}]
    ingest = Queue(INGEST, connection=redis_conn, serializer=JSONSerializer)
    deliver = Queue(DELIVER, connection=redis_conn, serializer=JSONSerializer)
    # no retry: each goes to its failed-job registry at once
    ingest.enqueue_call("syncworker.jobs.ingest", args=(bad,), description="ingest test")
    deliver.enqueue_call("syncworker.jobs.deliver", args=("a", "b", "c"), description="deliver")
    with SentryReceiver() as sentry:
        dsn = sentry.url.replace("http://", "http://public@") + "/1"
        worker = start_worker(
            clean_env({"REDIS_URL": redis_url, "SENTRY_DSN": dsn}), tmp_path / "worker.log"
        )
        try:
            wait_until(
                lambda: (
                    ingest.failed_job_registry.count == 1 and deliver.failed_job_registry.count == 1
                ),
                30,
                "both jobs to fail",
            )
            sentry.wait_for(lambda: b"AttributeError" in b"".join(sentry.envelopes()), 20)
        finally:
            worker.stop()
    blob = b"".join(sentry.envelopes())
    assert b"TypeError" in blob  # the deliver job's
    assert not ADDRESS.findall(blob), "an address reached Sentry"

    status = CliRunner().invoke(main, ["status"], env={"REDIS_URL": redis_url})
    assert status.exit_code == 0, status.output
    shown = orjson.loads(status.output)
    assert shown["failed_jobs"] == {"ingest": 1, "deliver": 1}
    assert shown["counters"]["jobs_failed:ingest"] == 1
    assert shown["counters"]["jobs_failed:deliver"] == 1

    client = create_app(make_settings(api_token="t")).test_client()
    stats = client.get("/v1/stats", headers={"Authorization": "Bearer t"}).json
    assert stats is not None and stats["failed_jobs"] == {"ingest": 1, "deliver": 1}
    samples = metric_samples(client.get("/metrics").get_data(as_text=True))
    for queue in ("ingest", "deliver"):
        assert samples[("syncworker_failed_jobs", (("queue", queue),))] == 1
        assert samples[("syncworker_job_failures_total", (("queue", queue),))] == 1


def test_metrics_show_no_failures_before_the_first(make_settings: SettingsFactory) -> None:
    client = create_app(make_settings()).test_client()
    samples = metric_samples(client.get("/metrics").get_data(as_text=True))
    assert samples[("syncworker_failed_jobs", (("queue", "ingest"),))] == 0
    assert samples[("syncworker_job_failures_total", (("queue", "deliver"),))] == 0
