"""The ingest inbox: accepted requests wait in one Redis stream, and ingest jobs apply them in
batches, however many requests carried them.

The web appends each accepted request's payload (its events and invalid items) to the stream
``sw:inbox`` in the same atomic call that bumps its counters, and queues an ingest job only when
none is waiting to start (``sw:inbox:queued`` names it). An ingest job reads the stream through
the consumer group ``ingest`` under its own job id: many requests' events go to the ledger in one
pipelined batch, then their entries are acknowledged and deleted. So a burst of single-event
requests costs one forked job, not one per request, and two ingest processes share the stream.

Crashes: an entry read but not acknowledged stays in the group's pending list under the job that
read it. When that job is no longer queued, scheduled or running on a live worker (a killed
work-horse, a dead host), the next ingest job claims its entries and applies them again; the
ledger dedupes by event key, so nothing is applied twice. An entry that has been claimed
``SUSPECT_AFTER`` times is applied alone, so that an entry which kills the process applying it
takes none of its neighbours down; one whose process died ``MAX_ALONE`` times while applying it
alone is quarantined instead (replayable once the cause is mended).
The supervisor's tick (``tick``) queues an ingest job whenever entries wait and none is queued,
so a crash with no traffic after it still recovers within seconds.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis
from rq import get_current_job

from syncworker.queue.enqueue import ensure_drain
from syncworker.queue.workers import job_alive
from syncworker.store import scripts
from syncworker.store.keys import INBOX, INBOX_GROUP, INBOX_QUEUED, INBOX_TRIES

GROUP = INBOX_GROUP
QUEUED = INBOX_QUEUED

log = logging.getLogger(__name__)

READ_COUNT = 200  # entries read at once (an entry is one request: one event or a whole batch)
LINGER_MS = 50  # an idle job waits this long for new entries before it ends
PAGE = 500  # pending entries claimed per call
SUSPECT_AFTER = 2  # claimed this often (read in batches that died): applied alone
MAX_ALONE = 2  # the process died this often applying an entry alone: quarantined instead

Entry = tuple[str, dict[bytes, bytes]]


def decode(data: bytes) -> Any:
    """An entry's payload back; ValueError when it is neither JSON nor zlib'd JSON."""
    if data[:1] == b"x":
        try:
            data = zlib.decompress(data)
        except zlib.error as exc:
            raise ValueError(f"payload is not zlib: {exc}") from None
    return orjson.loads(data)


def ensure_group(conn: redis.Redis) -> None:
    """Create the consumer group (and the stream) if missing."""
    try:
        conn.xgroup_create(INBOX, GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def drain_alive(conn: redis.Redis, job_id: str, stale_s: float | None) -> bool:
    """Whether the ingest job ``job_id`` may still read: queued, or running on a live worker.
    One waiting for its retry is not: its entries are taken over at once rather than after the
    retry's delay (the retry then finds nothing of its own)."""
    return job_alive(conn, job_id, stale_s)


def tick(conn: redis.Redis, stale_s: float | None) -> bool:
    """Queue an ingest job if entries wait and none is queued; first free the queued flag of a
    job that is gone (deleted, failed). True if a job was queued."""
    holder = conn.get(QUEUED)
    if holder is not None:
        job_id = holder.decode() if isinstance(holder, bytes) else str(holder)
        if drain_alive(conn, job_id, stale_s):
            return False
        scripts.InboxClear(conn)(QUEUED, job_id)
        log.warning("queued ingest job is gone; its flag freed job=%s", job_id)
    if not conn.xlen(INBOX):
        return False
    return ensure_drain(conn)


@dataclass
class Claimed:
    """Entries taken over from ingest jobs that died with them unacknowledged."""

    entries: list[tuple[str, int, dict[bytes, bytes]]] = field(default_factory=list)
    # (id, times delivered, fields) of each entry
    consumers: list[str] = field(default_factory=list)


class Reader:
    """One ingest job's access to the inbox, as consumer ``name``."""

    def __init__(self, conn: redis.Redis, name: str) -> None:
        self.conn = conn
        self.name = name

    def started(self) -> None:
        """This job runs: the next accepted request queues another (which a second ingest
        process can run alongside this one)."""
        scripts.InboxClear(self.conn)(QUEUED, self.name)
        ensure_group(self.conn)

    def claim_from_dead(self, alive: Callable[[str], bool]) -> Claimed:
        """Take over the unacknowledged entries of consumers whose job is gone (and this job's
        own, when its retry runs it again), and drop consumers that are gone and hold nothing.
        Claiming counts a delivery of each entry, which is how an entry that keeps killing the
        process applying it is found."""
        claimed = Claimed()
        for info in self.conn.xinfo_consumers(INBOX, GROUP):
            consumer = _text(info["name"])
            mine = consumer == self.name  # this job, run again by its retry: its own entries
            if not mine and alive(consumer):
                continue
            if int(info["pending"]) == 0 and not mine:
                self.forget(consumer)
                continue
            start = "-"
            while True:
                rows = self.conn.xpending_range(
                    INBOX, GROUP, min=start, max="+", count=PAGE, consumername=consumer
                )
                if not rows:
                    break
                ids: list[Any] = [_text(row["message_id"]) for row in rows]
                counts = {_text(row["message_id"]): int(row["times_delivered"]) for row in rows}
                # XCLAIM (without JUSTID) counts a delivery of each entry it returns
                taken: Any = self.conn.xclaim(INBOX, GROUP, self.name, 0, ids)
                found = set()
                for entry_id, fields in taken:
                    if fields is None:
                        continue
                    found.add(_text(entry_id))
                    times = counts.get(_text(entry_id), 0) + 1
                    claimed.entries.append((_text(entry_id), times, fields))
                gone = set(ids) - found
                if gone:  # deleted entries still pending: acknowledge them away
                    self.conn.xack(INBOX, GROUP, *gone)
                if len(rows) < PAGE:
                    break
                start = "(" + ids[-1]
            if not mine:
                claimed.consumers.append(consumer)
                self.forget(consumer)
        return claimed

    def read(self, count: int, block_ms: int | None) -> list[Entry]:
        """New entries for this consumer, waiting up to ``block_ms`` for one if there are none."""
        reply: Any = self.conn.xreadgroup(
            GROUP, self.name, {INBOX: ">"}, count=count, block=block_ms if block_ms else None
        )
        return _entries(reply)

    def done(self, ids: list[str], then_read: int = 0) -> list[Entry]:
        """Acknowledge and delete entries whose events are applied or quarantined; with
        ``then_read``, read up to that many new entries in the same round trip (without
        waiting: none when none are there)."""
        if not ids and not then_read:
            return []
        with self.conn.pipeline(transaction=True) as pipe:
            if ids:
                pipe.xack(INBOX, GROUP, *ids)
                pipe.xdel(INBOX, *ids)
                pipe.hdel(INBOX_TRIES, *ids)
            if then_read:  # inside MULTI a read never blocks
                pipe.xreadgroup(GROUP, self.name, {INBOX: ">"}, count=then_read)
            replies = pipe.execute()
        return _entries(replies[-1]) if then_read else []

    def try_alone(self, entry_id: str) -> int:
        """Count a start of applying ``entry_id`` alone; how many starts there have been."""
        return int(self.conn.hincrby(INBOX_TRIES, entry_id, 1))

    def leave(self) -> None:
        """Remove this consumer from the group if it holds nothing."""
        self.forget(self.name)

    def forget(self, consumer: str) -> None:
        scripts.InboxForgetConsumer(self.conn)(INBOX, GROUP, consumer)


def current_name() -> str:
    job = get_current_job()
    return job.id if job is not None else f"inbox-local-{time.time_ns():x}"


def _entries(reply: Any) -> list[Entry]:
    if not reply:
        return []
    _stream, rows = reply[0]
    return [(_text(entry_id), fields) for entry_id, fields in rows if fields is not None]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
