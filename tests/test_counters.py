"""Ledger effect counters are written with the ledger change they count."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis

from syncworker import codec
from syncworker.bootstrap import Runtime
from syncworker.config import Settings
from syncworker.events import HygieneEvent, Kind
from syncworker.queue import jobs
from syncworker.store.keys import QUARANTINE, STATS
from tests.conftest import SettingsFactory


def test_an_ingest_job_failing_after_the_ledger_write_leaves_its_effects_counted(
    make_settings: SettingsFactory,
    use_runtime: Callable[[Settings], Runtime],
    redis_conn: redis.Redis,
) -> None:
    """The job dies between the ledger write and the rest (here the quarantine write fails):
    its retry sees the events as duplicates, so a count made later would be lost for good."""
    use_runtime(make_settings())
    redis_conn.set(QUARANTINE, "not a list")  # the quarantine write after the ledger's fails
    event = HygieneEvent("k1", "t", "t", "a@example.com", Kind.UNSUBSCRIBE, 1000.0)
    payload = {"source": "t", "events": [codec.dump(event), {"email": "broken"}]}
    with pytest.raises(redis.ResponseError):
        jobs.ingest(payload)
    assert redis_conn.hget(STATS, "ledger:suppressed") == b"1"
    redis_conn.delete(QUARANTINE)
    jobs.ingest(payload)  # the retry
    assert redis_conn.hget(STATS, "ledger:suppressed") == b"1"
    assert redis_conn.hget(STATS, "ledger:duplicate") == b"1"
