"""The ingest inbox under crashes, with real processes: a work-horse SIGKILLed while it applies a
batch of many requests' events loses none and applies none twice; an entry that kills every
process applying it is quarantined, and its neighbours are applied."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
import redis
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from syncworker import codec
from syncworker.config import Settings
from syncworker.emulators.hubspot import HubSpotEmulator
from syncworker.emulators.segment import SegmentEmulator
from syncworker.events import HygieneEvent, Kind
from syncworker.inbox import GROUP
from syncworker.queueing import INBOX, INGEST, QUARANTINE, STATS, Enqueuer
from syncworker.runtime import Runtime
from tests.processes import clean_env, descendants, start_worker, wait_until

N = 3_000
EMAILS = [f"inbox{i:05d}@example.com" for i in range(N)]


@pytest.fixture()
def hubspot() -> Iterator[HubSpotEmulator]:
    with HubSpotEmulator(token="hs") as emulator:
        emulator.seed(*EMAILS)
        yield emulator


@pytest.fixture()
def segment() -> Iterator[SegmentEmulator]:
    with SegmentEmulator(write_key="wk") as emulator:
        yield emulator


def worker_env(
    redis_url: str, hubspot: HubSpotEmulator, segment: SegmentEmulator, **extra: str
) -> dict[str, str]:
    return clean_env(
        {
            "REDIS_URL": redis_url,
            "SYNCWORKER_DESTINATIONS": "hubspot,segment",
            "SYNCWORKER_HUBSPOT_TOKEN": "hs",
            "SYNCWORKER_HUBSPOT_BASE_URL": hubspot.url,
            "SYNCWORKER_SEGMENT_WRITE_KEY": "wk",
            "SYNCWORKER_SEGMENT_BASE_URL": segment.url,
            **{f"SYNCWORKER_{k.upper()}": v for k, v in extra.items()},
        }
    )


def event(key: str, email: str, i: int) -> dict[str, object]:
    return codec.dump(HygieneEvent(key, "t", "t", email, Kind.UNSUBSCRIBE, 1.7e9 + i))


def post_singles(conn: redis.Redis, emails: list[str], prefix: str = "one") -> None:
    """One accepted request per event, as single-event ESPs post them."""
    enqueuer = Enqueuer(conn)
    for i, email in enumerate(emails):
        payload = {"source": "t", "esp": "t", "events": [event(f"{prefix}-{i}", email, i)]}
        enqueuer.ingest(payload, "ingest test", {})


def ingest_horse(conn: redis.Redis) -> int | None:
    """The pid of the work-horse running an ingest job, if one is running."""
    registry = StartedJobRegistry(INGEST, connection=conn, serializer=JSONSerializer)
    for job_id in registry.get_job_ids(cleanup=False):
        worker = conn.hget(f"rq:job:{job_id}", "worker_name")
        if worker is None:
            continue
        pid = int(conn.hget(f"rq:worker:{worker.decode()}", "pid") or 0)
        for child in descendants(pid):
            try:
                if os.getpgid(child) == child:  # RQ's horse leads a process group of its own
                    return child
            except ProcessLookupError:
                continue
    return None


def reading(conn: redis.Redis) -> int:
    """Entries an ingest job has read and not yet acknowledged."""
    return int(conn.xpending(INBOX, GROUP)["pending"])


def kill_when(conn: redis.Redis, ready: Callable[[], bool], timeout: float) -> bool:
    """SIGKILL the ingest work-horse as soon as ``ready()``; True if one was killed with
    entries read and not acknowledged (its batch cut short)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            pid = ingest_horse(conn)
            if pid is not None:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue
                wait_until(lambda: ingest_horse(conn) != pid, 10, "the horse to be reaped")
                return reading(conn) > 0
        time.sleep(0.002)
    return False


def applied(conn: redis.Redis) -> int:
    """Events the ledger has applied, from the counters its script keeps."""
    counts = conn.hgetall(STATS)
    return sum(
        int(v) for k, v in counts.items() if k.startswith(b"ledger:") and k != b"ledger:duplicate"
    )


def test_sigkill_mid_batch_loses_nothing_and_applies_nothing_twice(
    redis_url: str,
    redis_conn: redis.Redis,
    hubspot: HubSpotEmulator,
    segment: SegmentEmulator,
    tmp_path: Path,
    use_runtime: Callable[[Settings], Runtime],
    make_settings: Callable[..., Settings],
) -> None:
    post_singles(redis_conn, EMAILS)
    worker = start_worker(worker_env(redis_url, hubspot, segment), tmp_path / "worker.log")
    try:
        cut_short = 0
        for threshold in (N // 5, N // 2, 4 * N // 5):
            if kill_when(
                redis_conn,
                lambda t=threshold: applied(redis_conn) >= t and reading(redis_conn) > 0,
                60,
            ):
                cut_short += 1
        assert cut_short >= 1, "no kill landed while a batch was being applied"
        killed = time.monotonic()
        wait_until(
            lambda: redis_conn.xlen(INBOX) == 0 and hubspot.opted_out == set(EMAILS),
            90,
            "every event applied and delivered",
            interval=0.1,
        )
        print(f"{cut_short} batches cut short; done {time.monotonic() - killed:.1f}s after")
        wait_until(lambda: len(segment.message_ids) >= N, 60, "Segment's events", interval=0.1)
    finally:
        worker.stop()
    assert reading(redis_conn) == 0
    # each event was applied once: one history entry per address, one Segment event each
    ledger = use_runtime(make_settings()).ledger
    views = [ledger.view(email) for email in EMAILS]
    assert all(v is not None and len(v.history) == 1 for v in views)
    assert len(segment.message_ids) == len(segment.received) == N
    assert applied(redis_conn) == N
    assert redis_conn.llen(QUARANTINE) == 0


def test_an_entry_that_kills_its_process_is_quarantined_and_spares_its_neighbours(
    redis_url: str,
    redis_conn: redis.Redis,
    hubspot: HubSpotEmulator,
    segment: SegmentEmulator,
    tmp_path: Path,
) -> None:
    """Every process that applies the big entry dies (as one killed for memory would): it is
    read with its neighbours, then tried alone, then quarantined; the neighbours are applied."""
    big = [event(f"big-{i}", EMAILS[i % 100], i) for i in range(8_000)]
    Enqueuer(redis_conn).ingest({"source": "t", "esp": "t", "events": big}, "ingest big", {})
    (big_id,) = [i.decode() for i, _ in redis_conn.xrange(INBOX)]
    neighbours = EMAILS[200:210]
    post_singles(redis_conn, neighbours, prefix="small")

    def big_in_flight() -> bool:
        rows = redis_conn.xpending_range(INBOX, GROUP, min=big_id, max=big_id, count=1)
        return bool(rows)

    env = worker_env(redis_url, hubspot, segment, quarantine_limit="20000")
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        kills = 0
        while not redis_conn.llen(QUARANTINE):
            assert kills < 8, "the entry was never given up"
            assert worker.alive(), worker.output()
            if kill_when(redis_conn, big_in_flight, 60):
                kills += 1
        wait_until(
            lambda: redis_conn.xlen(INBOX) == 0 and hubspot.opted_out >= set(neighbours),
            60,
            "the neighbours applied and delivered",
            interval=0.1,
        )
    finally:
        worker.stop()
    assert kills == 3  # in a batch, then alone twice
    records = [orjson.loads(r) for r in redis_conn.lrange(QUARANTINE, 0, -1)]
    assert len(records) == len(big)
    assert {r["reason"] for r in records} == {
        "not applied: the ingest process died 2 times applying it alone"
    }
    assert sorted(r["event"]["key"] for r in records) == sorted(e["key"] for e in big)  # type: ignore[misc]
    assert reading(redis_conn) == 0
