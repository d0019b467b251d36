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
from syncworker.bootstrap import Runtime
from syncworker.config import Settings
from syncworker.devkit.emulators.hubspot import HubSpotEmulator
from syncworker.devkit.emulators.segment import SegmentEmulator
from syncworker.devkit.supervisor import descendants
from syncworker.events import HygieneEvent, Kind
from syncworker.queue.enqueue import Enqueuer
from syncworker.queue.inbox import GROUP, MAX_ALONE
from syncworker.store.keys import INBOX, INGEST, QUARANTINE, STATS
from syncworker.store.keys import INBOX_TRIES as TRIES
from tests.processes import clean_env, start_worker, wait_until
from tests.replies import fields, optional, stream_entries, text

N = 20_000
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


def ingest_horse(conn: redis.Redis) -> tuple[str, int] | None:
    """The id of a running ingest job and the pid of the work-horse running it."""
    registry = StartedJobRegistry(INGEST, connection=conn, serializer=JSONSerializer)
    for job_id in registry.get_job_ids(cleanup=False):
        worker = optional(conn.hget(f"rq:job:{job_id}", "worker_name"))
        if worker is None:
            continue
        pid = int(conn.hget(f"rq:worker:{worker.decode()}", "pid") or 0)
        current = optional(conn.hget(f"rq:worker:{worker.decode()}", "current_job"))
        if current is None or current.decode() != job_id:
            continue  # the registry still lists a job its worker has left: its horse is another
        for child in descendants(pid):
            try:
                if os.getpgid(child) == child:  # RQ's horse leads a process group of its own
                    return job_id, child
            except ProcessLookupError:
                continue
    return None


def holding(conn: redis.Redis, job_id: str) -> set[str]:
    """Ids of the entries the ingest job ``job_id`` has read and not acknowledged."""
    rows = conn.xpending_range(INBOX, GROUP, min="-", max="+", count=10_000, consumername=job_id)
    return {text(row["message_id"]) for row in rows}


def reading(conn: redis.Redis) -> int:
    """Entries ingest jobs have read and not yet acknowledged."""
    return int(conn.xpending(INBOX, GROUP)["pending"])


def kill_when(conn: redis.Redis, ready: Callable[[str], bool], timeout: float) -> bool:
    """SIGKILL the work-horse of a running ingest job once ``ready(job id)`` (which sees it
    holding entries it has read and not acknowledged); True if one was killed."""
    found: list[tuple[str, int]] = []

    def running_and_ready() -> bool:
        running = ingest_horse(conn)
        found[:] = [running] if running is not None and ready(running[0]) else []
        return bool(found)

    try:
        wait_until(running_and_ready, timeout, "an ingest job to kill", interval=0.002)
    except AssertionError:
        return False
    pid = found[0][1]
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False  # it ended meanwhile
    wait_until(lambda: _gone(pid), 10, "the horse to die")
    return True


def _gone(pid: int) -> bool:
    """Whether the process has ended (a zombie not yet reaped has)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def ledger_calls(conn: redis.Redis) -> int:
    """Events the ledger's script has run on, duplicates included."""
    return sum(int(v) for k, v in fields(conn.hgetall(STATS)).items() if k.startswith(b"ledger:"))


def applied(conn: redis.Redis) -> int:
    """Events the ledger has applied, from the counters its script keeps."""
    counts = fields(conn.hgetall(STATS))
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
    post_singles(redis_conn, EMAILS)  # what single-event ESPs post: one event a request
    worker = start_worker(worker_env(redis_url, hubspot, segment), tmp_path / "worker.log")
    try:
        cut_short = 0
        for threshold in (N // 10, N // 3, 2 * N // 3):

            def past(job: str, t: int = threshold) -> bool:
                return applied(redis_conn) >= t and bool(holding(redis_conn, job))

            if kill_when(redis_conn, past, 60):
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
        wait_until(lambda: len(segment.tracks) >= N, 60, "Segment's events", interval=0.1)
    finally:
        worker.stop()
    assert reading(redis_conn) == 0
    # each event was applied once: one history entry per address, one Segment event each
    ledger = use_runtime(make_settings()).ledger
    views = [ledger.view(email) for email in EMAILS]
    assert all(v is not None and len(v.history) == 1 for v in views)
    assert len(segment.message_ids) == len(segment.received)  # nothing sent twice
    assert len(segment.tracks) == N
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
    big = [event(f"big-{i}", EMAILS[i % 100], i) for i in range(20_000)]
    Enqueuer(redis_conn).ingest({"source": "t", "esp": "t", "events": big}, "ingest big", {})
    (big_id,) = [i.decode() for i, _ in stream_entries(redis_conn, INBOX)]
    neighbours = EMAILS[200:210]
    post_singles(redis_conn, neighbours, prefix="small")

    # the first time, the big entry is read in a batch: the job is applying once the ledger's
    # counters (which move only while an ingest job applies) have moved by 100; after that it
    # is tried alone, which the inbox counts before it applies it
    since = ledger_calls(redis_conn)
    seen = [0, 0]  # tries alone seen when the last kill was decided, and now

    def applying_big(job_id: str) -> bool:
        if big_id not in holding(redis_conn, job_id):
            return False
        alone = seen[1] = int(redis_conn.hget(TRIES, big_id) or 0)
        if alone:  # a try alone begun since the last kill; past MAX_ALONE it is being given up
            return seen[0] < alone <= MAX_ALONE
        # read in a batch: only the first time. A job that has claimed the entry after that kill
        # holds it for a moment before it counts its try alone; it is not killed then
        return kills == 0 and ledger_calls(redis_conn) - since >= 100

    kills = 0
    env = worker_env(redis_url, hubspot, segment, quarantine_limit="30000")
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        deadline = time.monotonic() + 180
        while not redis_conn.llen(QUARANTINE):
            assert kills < 8 and time.monotonic() < deadline, "the entry was never given up"
            assert worker.alive(), worker.output()
            if kill_when(redis_conn, applying_big, 10):
                kills += 1
                seen[0] = seen[1]
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
    assert sorted(r["event"]["key"] for r in records) == sorted(str(e["key"]) for e in big)
    assert reading(redis_conn) == 0
