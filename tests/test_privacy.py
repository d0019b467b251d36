"""No address leaks: masking, and Sentry events captured with a local transport."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import sentry_sdk
from flask import Flask
from rq import Queue
from rq.serializers import JSONSerializer
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import Transport

from syncworker.observability import setup_sentry
from syncworker.privacy import mask, mask_text, scrub
from syncworker.queueing import INGEST
from syncworker.web import create_app
from syncworker.workers import QuickStopSimpleWorker
from tests.conftest import SettingsFactory

ADDRESS = re.compile(rb"[A-Za-z0-9._%+-]{2,}@example\.com")


class CapturingTransport(Transport):
    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self.envelopes: list[bytes] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        self.envelopes.append(envelope.serialize())


@pytest.fixture()
def sentry() -> Iterator[CapturingTransport]:
    transport = CapturingTransport()
    assert setup_sentry("http://public@127.0.0.1:9/1", transport=transport)
    yield transport
    sentry_sdk.get_client().close()
    sentry_sdk.init(dsn=None)


def test_mask_keeps_first_letter_and_domain() -> None:
    assert mask("jane.doe@example.com") == "j***@example.com"
    assert mask("nonsense") == "***"
    assert mask_text("550 <jane@example.com> unknown") == "550 <j***@example.com> unknown"
    assert scrub({"to": ["jane@example.com"], "n": 1}) == {"to": ["j***@example.com"], "n": 1}


def test_sentry_event_from_a_failing_request_has_no_address(
    make_settings: SettingsFactory, sentry: CapturingTransport
) -> None:
    app: Flask = create_app(make_settings())
    app.config["PROPAGATE_EXCEPTIONS"] = False

    @app.post("/boom")
    def boom() -> str:
        recipient = "jane.doe@example.com"  # a local variable Sentry must not ship
        raise RuntimeError(f"cannot handle {recipient}")

    secret = "-".join(("s3cr3t", "t0ken", "value"))  # not literal: Sentry ships source lines
    response = app.test_client().post(
        "/boom",
        json={"email": "jane.doe@example.com"},
        headers={"Authorization": f"Bearer {secret}", "X-Recipient": "jane.doe@example.com"},
    )
    assert response.status_code == 500
    sentry_sdk.flush()
    assert sentry.envelopes, "the error reached Sentry"
    blob = b"".join(sentry.envelopes)
    assert b"cannot handle j***@example.com" in blob
    assert not ADDRESS.findall(blob)
    assert b"s3cr3t-t0ken-value" not in blob


def test_sentry_event_from_a_failing_job_has_no_address(
    redis_conn: redis.Redis, sentry: CapturingTransport, use_runtime: Any, make_settings: Any
) -> None:
    use_runtime(make_settings())
    queue = Queue(INGEST, connection=redis_conn, serializer=JSONSerializer)
    # an invalid event is quarantined, not a failure: a payload that is not one fails the job
    bad = ["jane.doe@example.com"]
    queue.enqueue_call("syncworker.jobs.ingest", args=(bad,), description="ingest test")
    logging.getLogger("test").error("while handling jane.doe@example.com")
    worker = QuickStopSimpleWorker([queue], connection=redis_conn, serializer=JSONSerializer)
    worker.work(burst=True, logging_level="CRITICAL")
    assert queue.failed_job_registry.count == 1
    sentry_sdk.flush()
    blob = b"".join(sentry.envelopes)
    assert b"AttributeError" in blob
    assert not ADDRESS.findall(blob)
