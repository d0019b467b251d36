"""`syncworker reconcile DEST`: backfill from the ledger, resumable; and per-destination dry run."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import orjson
import pytest
import redis
from click.testing import CliRunner

from syncworker import codec
from syncworker.bootstrap import Runtime
from syncworker.cli import main
from syncworker.config import Settings
from syncworker.delivery.loop import Delivery
from syncworker.devkit.emulators.hubspot import HubSpotEmulator
from syncworker.devkit.emulators.segment import SegmentEmulator
from syncworker.events import HygieneEvent, Kind
from syncworker.ops import reconcile as backfill
from syncworker.store.keys import EVENT, PENDING, RECONCILE
from tests import ledger_reads
from tests.conftest import SettingsFactory
from tests.replies import data, items

ADDRESSES = [f"r{i:04d}@example.com" for i in range(1200)]
SUPPRESSED = set(ADDRESSES[::3])  # 400 of them


@pytest.fixture()
def hubspot() -> Iterator[HubSpotEmulator]:
    with HubSpotEmulator(token="hs") as emulator:
        emulator.seed(*ADDRESSES)
        yield emulator


@pytest.fixture()
def segment() -> Iterator[SegmentEmulator]:
    with SegmentEmulator(write_key="seg") as emulator:
        yield emulator


def fill_ledger(rt: Runtime) -> None:
    """Addresses known before the destinations existed: 400 suppressed, 800 merely counted."""
    events = []
    for i, email in enumerate(ADDRESSES):
        kind = Kind.UNSUBSCRIBE if email in SUPPRESSED else Kind.SOFT_BOUNCE
        events.append(HygieneEvent(f"k{i}", "sendgrid", "sendgrid", email, kind, 1000.0 + i))
    rt.ledger.apply(events)


def env_for(redis_url: str, hubspot: HubSpotEmulator, segment: SegmentEmulator) -> dict[str, str]:
    return {
        "REDIS_URL": redis_url,
        "SYNCWORKER_DESTINATIONS": "hubspot,segment",
        "SYNCWORKER_HUBSPOT_TOKEN": "hs",
        "SYNCWORKER_HUBSPOT_BASE_URL": hubspot.url,
        "SYNCWORKER_HUBSPOT_RATE": "1000/1",
        "SYNCWORKER_SEGMENT_WRITE_KEY": "seg",
        "SYNCWORKER_SEGMENT_BASE_URL": segment.url,
        "SYNCWORKER_SEGMENT_RATE": "1000/1",
    }


@pytest.fixture()
def rt(
    make_settings: SettingsFactory,
    use_runtime: Callable[[Settings], Runtime],
    hubspot: HubSpotEmulator,
    segment: SegmentEmulator,
) -> Runtime:
    # the ledger was filled while no destination was configured
    fill_ledger(use_runtime(make_settings()))
    settings = make_settings(
        destinations={
            "hubspot": {"TOKEN": "hs", "BASE_URL": hubspot.url, "RATE": "1000/1"},
            "segment": {"WRITE_KEY": "seg", "BASE_URL": segment.url, "RATE": "1000/1"},
        }
    )
    return use_runtime(settings)


def drain(rt: Runtime, name: str) -> None:
    while Delivery(rt, name).run().stopped != "drained":
        pass


def test_reconcile_backfills_a_crm_with_every_suppressed_address(
    rt: Runtime,
    redis_conn: redis.Redis,
    redis_url: str,
    hubspot: HubSpotEmulator,
    segment: SegmentEmulator,
) -> None:
    assert redis_conn.zcard(PENDING + "hubspot") == 0
    result = CliRunner().invoke(
        main, ["reconcile", "hubspot", "--chunk", "100"], env=env_for(redis_url, hubspot, segment)
    )
    assert result.exit_code == 0, result.output
    assert "reconcile hubspot" in result.output  # the progress bar's label
    assert "hubspot: 400 contacts pending" in result.output
    drain(rt, "hubspot")
    assert hubspot.opted_out == SUPPRESSED
    assert len(hubspot.requests) == 4  # batches of 100


def test_an_interrupted_reconcile_resumes_where_it_stopped(
    rt: Runtime,
    redis_conn: redis.Redis,
    redis_url: str,
    hubspot: HubSpotEmulator,
    segment: SegmentEmulator,
) -> None:
    progress = backfill.start(rt, "hubspot")
    calls = []

    def stop_after_two(n: int) -> None:
        calls.append(n)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        backfill.run(rt, "hubspot", progress, chunk=100, on_chunk=stop_after_two)
    walked = sum(calls)
    assert 0 < walked < len(ADDRESSES)
    result = CliRunner().invoke(
        main, ["reconcile", "hubspot", "--chunk", "100"], env=env_for(redis_url, hubspot, segment)
    )
    assert result.exit_code == 0, result.output
    assert f"resuming: {walked} of 1200 addresses already walked" in result.output
    assert redis_conn.zcard(PENDING + "hubspot") == 400
    assert not redis_conn.exists(RECONCILE + "hubspot")  # finished: no cursor left


@pytest.mark.slow
def test_reconcile_of_an_event_stream_is_deduplicated_on_repeat(
    rt: Runtime, redis_conn: redis.Redis, segment: SegmentEmulator
) -> None:
    backfill.run(rt, "segment", backfill.start(rt, "segment"))
    first = {m.decode() for m in items(redis_conn.zrange(PENDING + "segment", 0, -1))}
    drain(rt, "segment")
    backfill.run(rt, "segment", backfill.start(rt, "segment", restart=True))
    again = {m.decode() for m in items(redis_conn.zrange(PENDING + "segment", 0, -1))}
    drain(rt, "segment")
    assert len(first) == 400 and again == first
    assert {t["userId"] for t in segment.tracks} == SUPPRESSED
    assert len(segment.tracks) == 400 and segment.duplicates > 0  # the repeat was deduped


def test_reconcile_stores_each_event_in_the_codecs_form(
    rt: Runtime, redis_conn: redis.Redis
) -> None:
    """The events a backfill queues for an event stream are the codec's form, field for field,
    as the ledger stores them: no second, undeclared shape for delivery to read."""
    backfill.run(rt, "segment", backfill.start(rt, "segment"))
    keys = [k.decode() for k in items(redis_conn.zrange(PENDING + "segment", 0, -1))]
    assert len(keys) == 400
    for key in keys[:50]:
        stored = orjson.loads(data(redis_conn.get(EVENT + key)))
        event = codec.load(stored)
        assert stored == codec.dump(event)
        assert event.key == key and event.esp == "reconcile" and event.email in SUPPRESSED


def test_reconcile_names_enabled_destinations(redis_url: str) -> None:
    result = CliRunner().invoke(main, ["reconcile", "nope"], env={"REDIS_URL": redis_url})
    assert result.exit_code == 1 and "not enabled" in result.output


def test_dry_run_sends_nothing_and_logs_masked_requests(
    make_settings: SettingsFactory,
    use_runtime: Callable[[Settings], Runtime],
    hubspot: HubSpotEmulator,
    redis_conn: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    dry = {"TOKEN": "hs", "BASE_URL": hubspot.url, "RATE": "1000/1", "DRY_RUN": "true"}
    rt = use_runtime(make_settings(destinations={"hubspot": dry}))
    rt.ledger.apply([HygieneEvent("d1", "t", "t", "jane.doe@example.com", Kind.HARD_BOUNCE, 5.0)])
    caplog.set_level("INFO")
    report = Delivery(rt, "hubspot").run()
    assert report.outcomes == {"dry_run": 1}
    assert hubspot.requests == []
    assert "dry-run dest=hubspot request=POST" in caplog.text
    assert "/communication-preferences/v4/statuses/batch/unsubscribe-all" in caplog.text
    assert "j***@example.com" in caplog.text and "jane.doe@" not in caplog.text
    status = ledger_reads.sync(redis_conn, "jane.doe@example.com", "hubspot") or {}
    assert status["status"] == "dry_run"
    assert redis_conn.zcard(PENDING + "hubspot") == 0
