"""Backfill a newly added destination from the ledger, resumably.

CRMs (state destinations) get every suppressed address marked pending: the deliver jobs then send
each one's current state, batched and rate-limited like any other change. Event streams get one
synthetic event per standing reason, with a key derived from address, reason and time, so that
running the backfill again is deduplicated by the destination. The walk over the ledger is a
``SCAN`` of the address records whose cursor is saved after every chunk: an interrupted run
resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from syncworker import codec
from syncworker.bootstrap import Runtime
from syncworker.delivery.schedule import ensure_taker
from syncworker.destinations import Mode
from syncworker.events import MANUAL, HygieneEvent, Kind
from syncworker.store.keys import EVENT, PENDING, RECONCILE


@dataclass
class Progress:
    total: int  # addresses in the ledger when the run started
    done: int  # addresses walked so far, this run and the runs it resumes
    marked: int  # contacts or events made pending
    resumed: bool


def start(rt: Runtime, destination: str, *, restart: bool = False) -> Progress:
    """Where a run begins: a saved cursor, unless ``restart``."""
    if restart:
        rt.conn.delete(RECONCILE + destination)
    saved = {_text(k): int(v) for k, v in rt.conn.hgetall(RECONCILE + destination).items()}
    return Progress(
        total=rt.ledger.contact_count(),
        done=saved.get("done", 0),
        marked=saved.get("marked", 0),
        resumed=bool(saved),
    )


def run(
    rt: Runtime,
    destination: str,
    progress: Progress,
    *,
    chunk: int = 500,
    on_chunk: Callable[[int], None] = lambda n: None,
) -> Progress:
    """Walk the ledger from the saved cursor, marking what ``destination`` must receive."""
    conn, dest = rt.conn, rt.destinations[destination]
    cursor_key = RECONCILE + destination
    cursor = int(conn.hget(cursor_key, "cursor") or 0)
    stream = dest.mode is Mode.EVENTS
    kinds = {k.value for k in dest.cls.kinds}
    while True:
        cursor, emails = rt.ledger.scan(cursor, chunk)
        now = time.time()
        marked = 0
        with conn.pipeline(transaction=True) as pipe:
            for state in rt.ledger.states(emails):
                if not state.suppressed:
                    continue
                if not stream:
                    pipe.zadd(PENDING + destination, {state.email: now}, nx=True)
                    status = {"status": "pending", "since": now, "version": state.version}
                    rt.ledger.write_sync(pipe, state.email, destination, status)
                    marked += 1
                    continue
                for name, reason in state.reasons.items():
                    kind = Kind.UNSUBSCRIBE.value if name == MANUAL else name
                    if kind not in kinds:
                        continue
                    material = f"{state.email}\x1f{name}\x1f{reason.at:.3f}".encode()
                    key = "reconcile:" + hashlib.sha256(material).hexdigest()[:32]
                    event = HygieneEvent(
                        key=key,
                        source=reason.source,
                        esp="reconcile",
                        email=state.email,
                        kind=Kind(kind),
                        occurred_at=reason.at,
                        reason=reason.detail,
                    )
                    stored = orjson.dumps(codec.dump(event))  # the one stored form
                    pipe.set(EVENT + key, stored, ex=rt.settings.dedupe_ttl_s)
                    pipe.zadd(PENDING + destination, {key: now}, nx=True)
                    marked += 1
            progress.done += len(emails)
            progress.marked += marked
            pipe.hset(
                cursor_key,
                mapping={"cursor": cursor, "done": progress.done, "marked": progress.marked},
            )
            pipe.execute()
        on_chunk(len(emails))
        if cursor == 0:
            break
    conn.delete(cursor_key)
    ensure_taker(rt, destination)
    return progress


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
