"""The suppression ledger: each address's hygiene state, reasons, history and per-destination sync.

Events are applied in the worker (the rules are in syncworker/record.py): a batch reads the
records it touches (one round trip), applies its events to them in order (dedupe by event key,
an older event never overrides a newer state, the capped history), and writes each record back
only if it is still the one read, with its pending marks (the address, or for event streams the
event, for each destination that cares) and the counters, in one Lua call per 200 addresses
(compare-and-set: a record changed meanwhile, by another worker or a sync status, is read and
applied again). Redis only compares and stores bytes, about 12 µs of its CPU per event, so ingest
scales with worker processes and hosts.

Keys: ``sw:c:<addr>`` the address's record, one compact JSON string (below); ``sw:ev:<event key>``
an event awaiting event-stream destinations; ``sw:pending:<dest>`` due time of each pending id;
``sw:contacts:n`` how many records there are; ``sw:forgotten:<sha256>`` the suppression an erased
address keeps.

The record is a JSON array ``[version, suppressed, updated_at, reasons, history, sync, soft,
cleared, seen]`` (empty trailing parts left out): about 180 bytes of JSON, 289 bytes of Redis
memory with its key, for an address with one reason, one event and one destination, where the
layout before took ~1,770 bytes (``python -m bench.memory``):

- ``reasons``: kind code -> ``[at, source, detail]`` (codes: :data:`KIND_CODES`);
- ``history``: newest first, capped at ``history_limit``: ``[at, recorded, kind code, event key,
  effect code, source, detail]``; an entry whose kind, time, source and detail are those of the
  reason the record holds for its kind is stored without source and detail (``[at, recorded,
  kind, key, effect]``) and read back from the reason;
- ``sync``: destination -> ``[status, at (since, for pending), version, confirmed reasons (kind
  codes), {other fields}]``; the confirmed reasons are what a state destination last confirmed;
- ``soft``: the counted soft bounces and blocks ``[at, kind, message id]``; ``cleared``: the times
  of the last unsuppress (``*``) and resubscribe (``unsubscribe``);
- ``seen``: ``[sha1(event key)[:12], recorded]`` of events that left the capped history within
  ``dedupe_ttl_s``.

Dedupe is per address: an event is a duplicate when its key is in the address's history or
``seen`` and was recorded within ``dedupe_ttl_s`` (at most :data:`MAX_SEEN` keys beyond the
history). The dedupe mark is the record itself, written with the event's effects in one atomic
call: an event whose write fails leaves no record of it, so the quarantined event applies when it
is replayed. Record times (``recorded``, ``updated_at``, sync times) are kept to the millisecond.

The layout before this one (``sw:c:<addr>`` hash, ``sw:h:<addr>`` history list, ``sw:sync:<addr>``
hash, ``sw:confirmed:<dest>`` hash, ``sw:k:<event key>`` dedupe markers, ``sw:contacts`` set) is
read everywhere: a record still in it is converted the first time it is read or written, and
``syncworker migrate`` (:meth:`Ledger.migrate`) converts them all. Old dedupe markers are honoured
until they expire.
"""

from __future__ import annotations

import hashlib
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis

from syncworker import codec, record
from syncworker.config import Settings
from syncworker.events import (
    MANUAL,
    ContactState,
    HygieneEvent,
    Kind,
    ReasonEntry,
    normalize_email,
)
from syncworker.record import (
    EFFECT_CODES,
    EFFECT_NAMES,
    KIND_CODES,
    KIND_NAMES,
    UNSUPPRESS,
)
from syncworker.store import scripts
from syncworker.store.keys import (
    CONTACT,
    CONTACT_COUNT,
    CONTACTS,
    DEDUPE,
    EVENT,
    FORGOTTEN,
    HISTORY,
    PENDING,
    STATS,
    SYNC,
)

COUNTERS = "ledger:"  # + effect: a counter in the STATS hash

#: event keys remembered for dedupe beyond the history, per address (within ``dedupe_ttl_s``)
MAX_SEEN = 1000
#: addresses (events) per ledger script call
APPLY_CHUNK = 200
#: events read, applied and written per round: a longer batch is applied in slices
SLICE_EVENTS = 2000
#: times an address whose record changed between its read and its write is applied again (with
#: a growing random pause from the third): then its events fail (quarantined, replayable)
CAS_TRIES = 40

# What a manual change is to an event stream: the README promises them an unsubscribe for a
# manual suppress and a resubscribe for an unsuppress
STREAM_KINDS: dict[str, Kind] = {MANUAL: Kind.UNSUBSCRIBE, UNSUPPRESS: Kind.RESUBSCRIBE}


@dataclass(frozen=True)
class Route:
    """Which destinations an event of each kind reaches."""

    state: dict[str, tuple[str, ...]] = field(default_factory=dict)  # kind -> state destinations
    events: dict[str, tuple[str, ...]] = field(default_factory=dict)  # kind -> event destinations

    @classmethod
    def build(cls, destinations: Mapping[str, tuple[bool, frozenset[str]]]) -> Route:
        """``destinations``: name -> (is an event stream, kinds it cares about)."""
        state: dict[str, list[str]] = {}
        events: dict[str, list[str]] = {}
        kinds = [*(k.value for k in Kind), MANUAL, UNSUPPRESS]
        for name, (stream, cares) in destinations.items():
            for kind in kinds:
                manual = kind in (MANUAL, UNSUPPRESS)
                if stream and STREAM_KINDS.get(kind, kind) in cares:
                    events.setdefault(kind, []).append(name)
                if not stream and (manual or kind in cares):
                    state.setdefault(kind, []).append(name)
        return cls(
            {k: tuple(v) for k, v in state.items()}, {k: tuple(v) for k, v in events.items()}
        )


@dataclass
class _Read:
    """An address's record as read (bytes; None: none; an error: the old layout's hash, to
    convert), what sw:forgotten held, and which of its events the old layout marked seen."""

    raw: Any
    kept: bytes | None
    marked: list[bool]


class _Batch:
    """A batch being applied: its events with their ledger kinds, each address's events (their
    indexes, in order), the hash of each address, and the prefix its effects are counted under."""

    def __init__(self, items: list[tuple[HygieneEvent, str]], counters: str) -> None:
        self.items = items
        self.counters = counters
        self.by_address: dict[str, list[int]] = {}
        for i, (event, _kind) in enumerate(items):
            self.by_address.setdefault(event.email, []).append(i)
        self.hashes = {email: address_hash(email) for email in self.by_address}


@dataclass
class _Plan:
    """What applying an address's events changes, to be written if its record is still
    ``expected``; ``failed``: why it cannot be applied."""

    email: str
    indexes: list[int]
    expected: bytes = b""
    kept: bytes = b""
    new: bytes = b""
    created: bool = False
    drop_kept: bool = False
    failed: str | None = None
    #: (index in the batch, effect, whether the state changed, ledger kind)
    outcomes: list[tuple[int, str, bool, str]] = field(default_factory=list)
    mark: set[str] = field(default_factory=set)  # state destinations to mark pending
    streams: list[tuple[str, bytes, tuple[str, ...]]] = field(default_factory=list)


@dataclass
class ApplyResult:
    effects: Counter[str] = field(default_factory=Counter)
    marked: set[str] = field(default_factory=set)  # destinations that got new pending work
    #: events Redis refused to apply (index in the batch, Redis's reason); the others applied
    failed: list[tuple[int, str]] = field(default_factory=list)


@dataclass(frozen=True)
class SyncWrite:
    """One destination's sync status for one address, to be written (``Ledger.write_syncs``)."""

    email: str
    destination: str
    status: Mapping[str, Any]
    confirmed: Iterable[str] | None = None


@dataclass(frozen=True)
class ContactView:
    """Everything the ledger knows about one address, for lookup and the API."""

    state: ContactState
    history: list[dict[str, Any]]
    sync: dict[str, dict[str, Any]]

    def as_json(self) -> dict[str, Any]:
        return {
            "email": self.state.email,
            "suppressed": self.state.suppressed,
            "version": self.state.version,
            "updated_at": self.state.updated_at,
            "reasons": {
                name: {"at": r.at, "source": r.source, "detail": r.detail}
                for name, r in sorted(self.state.reasons.items())
            },
            "history": self.history,
            "destinations": self.sync,
        }


class Ledger:
    def __init__(self, conn: redis.Redis, settings: Settings, route: Route) -> None:
        self.conn = conn
        self.settings = settings
        self.route = route
        self._write = scripts.LedgerWrite(conn)
        self._sync = scripts.LedgerSync(conn)
        self._load = scripts.LedgerLoad(conn)
        self._forget = scripts.LedgerForget(conn)

    # -- writing ------------------------------------------------------------------------------

    def apply(self, events: Sequence[HygieneEvent], count: bool = False) -> ApplyResult:
        """Apply events in order, each atomically; one round trip for the whole batch. An event
        Redis refuses (``ApplyResult.failed``) does not stop the others. With ``count``, each
        applied event's effect is counted (``ledger:<effect>`` in STATS) in the same write."""
        return self._apply_events([(e, e.kind.value) for e in events], COUNTERS if count else "")

    def suppress(self, email: str, reason: str, *, source: str = MANUAL) -> ApplyResult:
        """Record a manual suppression; :class:`~syncworker.codec.InvalidEvent` for a string that
        is not an address."""
        return self._manual(email, MANUAL, reason, source)

    def unsuppress(self, email: str, reason: str, *, source: str = MANUAL) -> ApplyResult:
        return self._manual(email, UNSUPPRESS, reason, source)

    def _manual(self, email: str, kind: str, reason: str, source: str) -> ApplyResult:
        event = HygieneEvent(
            key=f"{MANUAL}:{uuid.uuid4().hex}",
            source=source,
            esp=MANUAL,
            email=normalize_email(email),
            kind=STREAM_KINDS[kind],  # what event streams get; the ledger applies ``kind``
            occurred_at=time.time(),
            reason=reason or None,
        )
        why = codec.problem(event)
        if why is not None:
            raise codec.InvalidEvent(why)
        return self._apply_events([(event, kind)])

    def _apply_events(
        self, items: list[tuple[HygieneEvent, str]], counters: str = ""
    ) -> ApplyResult:
        """Apply each event as ledger kind ``kind`` (a Kind, or a manual change); ``counters``
        is the prefix its effect is counted under in STATS ('' = not counted).

        The records the events touch are read, the events applied to them here, in order, and
        each record written back only if it has not changed since it was read; the addresses
        whose record changed meanwhile are read and applied again."""
        result = ApplyResult()
        if not items:
            return result
        batch = _Batch(items, counters)
        by_address = batch.by_address
        # slices of about SLICE_EVENTS events (an address's events all in one): bounded round
        # trips, and a long batch applied (and counted) as it goes
        slices: list[list[str]] = [[]]
        size = 0
        for email, indexes in by_address.items():
            if size and size + len(indexes) > SLICE_EVENTS:
                slices.append([])
                size = 0
            slices[-1].append(email)
            size += len(indexes)
        for emails in slices:
            left = self._apply_slice(emails, batch, result)
            for email in left:
                for i in by_address[email]:
                    result.failed.append((i, "the record kept changing while it was applied"))
        result.failed.sort()
        result.effects["failed"] += len(result.failed)
        if not result.effects["failed"]:
            del result.effects["failed"]
        return result

    def _apply_slice(self, todo: list[str], batch: _Batch, result: ApplyResult) -> list[str]:
        """Read, apply and compare-and-set the records of ``todo``, again for those changed
        meanwhile; the addresses still changing after CAS_TRIES."""
        s = self.settings
        for attempt in range(CAS_TRIES):
            if not todo:
                break
            if attempt > 1:  # other writers keep changing these records: let them pass
                time.sleep(random.uniform(0, min(0.05, 0.001 * 2**attempt)))
            policy = record.Policy(
                now=round(time.time(), 3),  # to the millisecond: shorter records
                dedupe_ttl_s=s.dedupe_ttl_s,
                history_limit=s.history_limit,
                soft_bounce_threshold=s.soft_bounce_threshold,
                soft_bounce_window_s=s.soft_bounce_window_s,
                max_seen=MAX_SEEN,
            )
            # the first read is cheap (MGET cannot tell a missing record from one in the old
            # layout, which the write then finds); any read again is one GET per record
            reads = self._read_for_apply(todo, batch, careful=attempt > 0)
            plans: list[_Plan] = []
            for email in todo:
                read = reads[email]
                if isinstance(read, str):
                    plans.append(_Plan(email, batch.by_address[email], failed=read))
                else:
                    plans.append(
                        self._plan(email, batch.by_address[email], batch.items, read, policy)
                    )
            todo = self._write_plans(plans, policy.now, batch.counters, batch.hashes, result)
        return todo

    def _read_for_apply(
        self, emails: list[str], batch: _Batch, careful: bool = True
    ) -> dict[str, _Read | str]:
        """Each address's record as stored, what sw:forgotten holds for it, and which of its
        events the old layout marked as seen; or why its record cannot be read. ``careful``:
        a record in the old layout is converted and read (one GET per record); otherwise the
        records are one MGET, which reads one in the old layout as none (the write then finds
        it changed, and the next read is careful)."""
        markers = [DEDUPE + batch.items[i][0].key for e in emails for i in batch.by_address[e]]
        with self.conn.pipeline(transaction=False) as pipe:
            if not careful:
                pipe.mget([CONTACT + e for e in emails])
            pipe.mget([FORGOTTEN + batch.hashes[e] for e in emails])
            pipe.exists(*markers)  # the old layout's dedupe markers: almost always none
            replies = pipe.execute()
        raws: list[Any] = replies[0] if not careful else self._raw_records(emails)
        kept, n_marked = replies[-2:]
        marked = [False] * len(markers)
        if n_marked:
            with self.conn.pipeline(transaction=False) as pipe:
                for key in markers:
                    pipe.exists(key)
                marked = [bool(m) for m in pipe.execute()]
        out: dict[str, _Read | str] = {}
        n = 0
        for email, raw, kept_raw in zip(emails, raws, kept, strict=True):
            count = len(batch.by_address[email])
            if isinstance(raw, Exception):
                out[email] = str(raw)[:300]
            else:
                out[email] = _Read(raw, kept_raw, marked[n : n + count])
            n += count
        return out

    def _plan(
        self,
        email: str,
        indexes: list[int],
        items: list[tuple[HygieneEvent, str]],
        read: _Read,
        policy: record.Policy,
    ) -> _Plan:
        """Apply an address's events, in order, to its record as read: what to write."""
        plan = _Plan(email, indexes, expected=read.raw or b"", kept=read.kept or b"")
        try:
            rec = record.unpack(read.raw) if read.raw else None
        except ValueError as exc:
            plan.failed = str(exc)
            return plan
        since = policy.now - policy.dedupe_ttl_s
        for i, marked in zip(indexes, read.marked, strict=True):
            event, kind = items[i]
            if marked or record.is_duplicate(rec, event.key, since):
                plan.outcomes.append((i, "duplicate", False, kind))
                continue
            if rec is None:
                rec = record.Record(updated_at=policy.now)
                plan.created = True
                if read.kept:
                    rec.reasons = record.restored(read.kept)
                    plan.drop_kept = True
            state_dests = self.route.state.get(kind, ())
            fields = record.Event(
                key=event.key,
                kind=kind,
                occurred_at=event.occurred_at,
                source=event.source,
                message_id=event.message_id,
                detail=_detail(event.reason, event.smtp_code),
            )
            try:
                effect, changed = record.apply(rec, fields, policy, state_dests)
            except (TypeError, ValueError, IndexError, KeyError) as exc:  # a record gone wrong
                plan.failed = f"unreadable ledger record: {exc.__class__.__name__}"
                return plan
            plan.outcomes.append((i, effect, changed, kind))
            if changed:
                plan.mark.update(state_dests)
            event_dests = self.route.events.get(kind, ())
            if event_dests:
                # the event as event streams get it: the codec's form, every field kept
                plan.streams.append((event.key, orjson.dumps(codec.dump(event)), event_dests))
        if rec is not None and any(o[1] != "duplicate" for o in plan.outcomes):
            plan.new = record.pack(rec)
        return plan

    def _write_plans(
        self,
        plans: list[_Plan],
        now: float,
        counters: str,
        hashes: dict[str, str],
        result: ApplyResult,
    ) -> list[str]:
        """Write the plans (compare-and-set, one script call per APPLY_CHUNK addresses) and
        record what was applied in ``result``; the addresses whose record changed meanwhile."""
        ready = [p for p in plans if p.failed is None]
        for p in plans:
            if p.failed is not None:
                result.failed += [(i, p.failed) for i in p.indexes]
        replies: list[Any] = []
        with self.conn.pipeline(transaction=False) as pipe:
            for start in range(0, len(ready), APPLY_CHUNK):
                chunk = ready[start : start + APPLY_CHUNK]
                addresses: list[scripts.Group] = []
                for p in chunk:
                    mark = sorted(p.mark)
                    keys = [CONTACT + p.email, FORGOTTEN + hashes[p.email]]
                    keys += [PENDING + d for d in mark]
                    args: list[scripts.Arg] = [
                        p.expected,
                        p.kept,
                        p.new,
                        "1" if p.created else "0",
                        "1" if p.drop_kept else "0",
                        p.email,
                        len(mark),
                        len(p.streams),
                        ",".join(o[1] for o in p.outcomes),
                    ]
                    for key, form, dests in p.streams:
                        keys += [EVENT + key, *(PENDING + d for d in dests)]
                        args += [form, len(dests), key]
                    addresses.append((keys, args))
                self._write(
                    STATS,
                    CONTACT_COUNT,
                    now,
                    self.settings.dedupe_ttl_s,
                    counters,
                    addresses,
                    client=pipe,
                )
            for reply in pipe.execute(raise_on_error=False):
                if isinstance(reply, Exception):  # refused whole (out of memory...)
                    replies += [reply] * min(APPLY_CHUNK, len(ready) - len(replies))
                else:
                    replies += reply
        conflicts: list[str] = []
        for p, reply in zip(ready, replies, strict=True):
            if isinstance(reply, Exception) or isinstance(reply, list):
                why = str(reply) if isinstance(reply, Exception) else _text(reply[1])
                result.failed += [(i, why[:300]) for i in p.indexes]
            elif int(reply) == 0:
                conflicts.append(p.email)
            else:
                for _i, effect, changed, kind in p.outcomes:
                    result.effects[effect] += 1
                    if effect == "duplicate":
                        continue
                    if changed:
                        result.marked.update(self.route.state.get(kind, ()))
                    result.marked.update(self.route.events.get(kind, ()))
        return conflicts

    # -- reading ------------------------------------------------------------------------------

    def records(self, emails: Sequence[str]) -> list[list[Any] | None]:
        """The decoded records of ``emails`` (None: the ledger has none); a record still in the
        old layout is converted as it is read."""
        return [orjson.loads(row) if row is not None else None for row in self.raw_records(emails)]

    def raw_records(self, emails: Sequence[str]) -> list[bytes | None]:
        """The records of ``emails`` as stored (converted first if in the old layout)."""
        rows = self._raw_records(emails)
        for row in rows:
            if isinstance(row, Exception):
                raise row
        return rows  # type: ignore[return-value]  # no exception left

    def _raw_records(self, emails: Sequence[str]) -> list[bytes | None | Exception]:
        """As :meth:`raw_records`, with Redis's error in place of a record it cannot read."""
        if not emails:
            return []
        with self.conn.pipeline(transaction=False) as pipe:
            for email in emails:
                pipe.get(CONTACT + email)
            rows: list[Any] = pipe.execute(raise_on_error=False)
        old = [i for i, row in enumerate(rows) if isinstance(row, redis.ResponseError)]
        if old:  # the old layout's hash (or a key of another type): converted, then read
            with self.conn.pipeline(transaction=False) as pipe:
                for i in old:
                    self._load(CONTACT + emails[i], client=pipe)
                for i, row in zip(old, pipe.execute(raise_on_error=False), strict=True):
                    rows[i] = row
        return rows

    def states(self, emails: list[str]) -> list[ContactState]:
        return [_state(e, r) for e, r in zip(emails, self.records(emails), strict=True)]

    def state(self, email: str) -> ContactState:
        return self.states([normalize_email(email)])[0]

    def view(self, email: str) -> ContactView | None:
        email = normalize_email(email)
        record = self.records([email])[0]
        if record is None:
            return None
        return ContactView(
            state=_state(email, record), history=_history(record), sync=_sync(record)
        )

    def sync_status(self, emails: list[str]) -> list[dict[str, dict[str, Any]]]:
        """Each address's sync status per destination (empty for an address with no record)."""
        return [_sync(r) if r else {} for r in self.records(emails)]

    def confirmed(self, destination: str, emails: list[str]) -> list[frozenset[str]]:
        """The reasons ``destination`` last confirmed for each address."""
        return [_confirmed(r, destination) for r in self.records(emails)]

    def states_confirmed(
        self, destination: str, emails: list[str], raws: Sequence[bytes | None] | None = None
    ) -> list[tuple[ContactState, frozenset[str]]]:
        """Each address's state and the reasons ``destination`` last confirmed, in one read (or
        from ``raws``, the records as :meth:`raw_records` read them)."""
        rows = self.raw_records(emails) if raws is None else raws
        records = [orjson.loads(row) if row is not None else None for row in rows]
        return [
            (_state(e, r), _confirmed(r, destination)) for e, r in zip(emails, records, strict=True)
        ]

    # -- sync status --------------------------------------------------------------------------

    def write_sync(
        self,
        pipe: redis.client.Pipeline,
        email: str,
        destination: str,
        status: Mapping[str, Any],
        confirmed: Iterable[str] | None = None,
    ) -> None:
        """Queue on ``pipe`` the write of ``destination``'s sync status for ``email`` (and, for a
        state destination that confirmed a change, the reasons it now has); an address erased
        meanwhile is left erased."""
        self.write_syncs(pipe, [SyncWrite(email, destination, status, confirmed)])

    def write_syncs(
        self,
        pipe: redis.client.Pipeline,
        writes: Sequence[SyncWrite],
        read: Mapping[str, bytes] | None = None,
    ) -> None:
        """Queue on ``pipe`` many sync status writes, as :meth:`write_sync`, in one script call
        per ``APPLY_CHUNK`` records. ``read``: records as the caller read them (address -> bytes):
        each is written with the status set here, in the worker, if it is still the one read,
        and otherwise changed by the script."""
        for start in range(0, len(writes), APPLY_CHUNK):
            records: list[scripts.Group] = []
            for w in writes[start : start + APPLY_CHUNK]:
                rest = dict(w.status)
                label = str(rest.pop("status", ""))
                at = rest.pop("since" if label == "pending" else "at", 0)
                version = rest.pop("version", 0)
                codes = None if w.confirmed is None else _codes(w.confirmed)
                raw = read.get(w.email) if read is not None else None
                args: list[scripts.Arg] = [
                    w.destination,
                    label,
                    at,
                    version,
                    orjson.dumps(rest) if rest else "",
                    "0" if codes is None else "1",
                    codes or "",
                ]
                new = _with_sync(raw, w.destination, label, at, version, rest, codes)
                args += [raw, new] if raw and new else ["", ""]
                records.append(([CONTACT + w.email], args))
            self._sync(records, client=pipe)

    # -- the whole ledger ---------------------------------------------------------------------

    def scan(self, cursor: int, count: int) -> tuple[int, list[str]]:
        """One step of a walk over every address (``SCAN``; resumable from the cursor)."""
        cursor, keys = self.conn.scan(cursor, match=CONTACT + "*", count=count)
        return int(cursor), [_text(k)[len(CONTACT) :] for k in keys]

    def contact_count(self) -> int:
        """How many addresses the ledger holds (records, and any still in the old layout)."""
        with self.conn.pipeline(transaction=False) as pipe:
            pipe.get(CONTACT_COUNT)
            pipe.scard(CONTACTS)
            count, old = pipe.execute()
        return int(count or 0) + int(old)

    def migrate(
        self, batch: int = 500, on_batch: Callable[[int], None] = lambda n: None
    ) -> MigrationReport:
        """Convert every record still in the old layout, ``batch`` at a time, each atomically:
        safe to interrupt and to run again (what is converted is not seen again), and while
        workers run (the scripts convert what they touch). Pending sets, in-flight sets and
        dead letters are not touched."""
        report = MigrationReport(before=int(self.conn.scard(CONTACTS)))
        cursor = 0
        while True:
            cursor, keys = self.conn.scan(cursor, match=CONTACT + "*", count=batch, _type="hash")
            if keys:
                with self.conn.pipeline(transaction=False) as pipe:
                    for key in keys:
                        self._load(key, client=pipe)
                    pipe.execute()
                report.converted += len(keys)
                on_batch(report.converted)
            if int(cursor) == 0:
                break
        report.left = int(self.conn.scard(CONTACTS))  # members with no record (never written)
        if report.left:
            self.conn.delete(CONTACTS)
        report.records = int(self.conn.get(CONTACT_COUNT) or 0)
        return report

    def forget(self, email: str) -> bool:
        """Erase everything the ledger holds about an address. A suppressed address leaves only
        the SHA-256 of itself and its reasons' names and times, so that it stays suppressed if an
        ESP reports it again. Returns whether the address was suppressed."""
        email = normalize_email(email)
        state = self.state(email)
        kept = b""
        if state.suppressed:
            kept = orjson.dumps(
                {name: {"at": r.at, "source": "forgotten"} for name, r in state.reasons.items()}
            )
        self._forget(
            CONTACT + email,
            HISTORY + email,
            SYNC + email,
            FORGOTTEN + address_hash(email),
            CONTACT_COUNT,
            CONTACTS,
            email,
            kept,
        )
        return state.suppressed


@dataclass
class MigrationReport:
    before: int = 0  # addresses in the old layout's address set when the run started
    converted: int = 0  # records converted by this run
    left: int = 0  # addresses in that set that had no record (the set is removed)
    records: int = 0  # records in the ledger after the run


def address_hash(email: str) -> str:
    return hashlib.sha256(normalize_email(email).encode()).hexdigest()


def _detail(reason: str | None, smtp_code: str | None) -> str | None:
    if reason and smtp_code:
        return f"{smtp_code} {reason}"[:300]
    return (reason or smtp_code or None) and (reason or smtp_code or "")[:300]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _with_sync(
    raw: bytes | None,
    destination: str,
    label: str,
    at: Any,
    version: Any,
    rest: dict[str, Any],
    codes: str | None,
) -> bytes | None:
    """The record ``raw`` with ``destination``'s sync status set, as ledger_sync.lua sets it (None
    when it cannot be read: the script then sets it)."""
    try:
        record = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return None
    if not isinstance(record, list) or len(record) < 5:
        return None
    while len(record) < 6:
        record.append({})
    sync = record[5] if isinstance(record[5], dict) else {}
    old = sync.get(destination)
    if codes is None:
        codes = old[3] if isinstance(old, list) and len(old) > 3 and old[3] else ""
    entry: list[Any] = [label, float(at), int(version), codes]
    if rest:
        entry.append(rest)
    sync[destination] = entry
    record[5] = sync
    while len(record) > 3 and not record[-1]:
        record.pop()
    return orjson.dumps(record)


def _confirmed(record: list[Any] | None, destination: str) -> frozenset[str]:
    entry = _part(record, 5, {}).get(destination) if record else None
    return _names(entry[3]) if entry and len(entry) > 3 else frozenset()


def _part(record: list[Any], index: int, empty: Any) -> Any:
    """A part of a record; ``empty`` for an empty one (left out at the end, or ``{}``)."""
    value = record[index] if len(record) > index else None
    return value if value else empty


def _codes(names: Iterable[str]) -> str:
    coded = [KIND_CODES.get(n, n) for n in sorted(names)]
    if all(len(c) == 1 for c in coded):
        return "".join(coded)
    return "," + ",".join(sorted(names))


def _names(codes: str) -> frozenset[str]:
    if codes.startswith(","):
        return frozenset(n for n in codes[1:].split(",") if n)
    return frozenset(KIND_NAMES.get(c, c) for c in codes)


def _reasons(record: list[Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for code, entry in _part(record, 3, {}).items():
        reason: dict[str, Any] = {"at": entry[0], "source": entry[1]}
        if len(entry) > 2:
            reason["detail"] = entry[2]
        out[KIND_NAMES.get(code, code)] = reason
    return out


def _state(email: str, record: list[Any] | None) -> ContactState:
    if record is None:
        return ContactState(email=email, suppressed=False, reasons={}, updated_at=0.0, version=0)
    reasons = {
        name: ReasonEntry(name, float(r["at"]), str(r.get("source", "")), r.get("detail"))
        for name, r in _reasons(record).items()
    }
    return ContactState(
        email=email,
        suppressed=record[1] == 1,
        reasons=reasons,
        updated_at=_updated_at(record),
        version=int(record[0] or 0),
    )


def _updated_at(record: list[Any]) -> float:
    """The record's time; 0 stands for its newest history entry's."""
    history = _part(record, 4, [])
    if record[2] == 0 and history:
        return float(history[0][1])
    return float(record[2] or 0)


def _history(record: list[Any]) -> list[dict[str, Any]]:
    reasons = _reasons(record)
    out = []
    for entry in _part(record, 4, []):
        kind = KIND_NAMES.get(entry[2], entry[2])
        effect = entry[4] if len(entry) > 4 else EFFECT_CODES["suppressed"]
        item: dict[str, Any] = {
            "at": entry[0],
            "recorded": entry[1],
            "kind": kind,
            "key": entry[3],
            "effect": EFFECT_NAMES.get(effect, effect),
        }
        if len(entry) < 6:  # like the reason the record holds for its kind
            reason = reasons.get(kind, {})
            item["source"] = reason.get("source", "")
            if reason.get("detail") is not None:
                item["detail"] = reason["detail"]
        else:
            item["source"] = entry[5]
            if len(entry) > 6:
                item["detail"] = entry[6]
        out.append(item)
    return out


def _sync(record: list[Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for dest, entry in sorted(_part(record, 5, {}).items()):
        label, at, version = entry[0], entry[1], entry[2]
        status: dict[str, Any] = {
            "status": label,
            "since" if label == "pending" else "at": at,
            "version": version,
        }
        if len(entry) > 4 and entry[4]:
            status.update(entry[4])
        out[dest] = status
    return out
