"""``syncworker quarantine replay``: parse quarantined webhook data again with the current parsers,
once a release or a setting has fixed what made it fail, and send what now validates to ingest.

A record leaves the quarantine only after what it yields is in an ingest job (the ledger dedupes
by event key, so sending it twice is harmless), and records pushed meanwhile are never touched:
a replay may be stopped at any point and run again.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from werkzeug.datastructures import Headers

from syncworker import codec
from syncworker.bootstrap import Runtime
from syncworker.config import Settings
from syncworker.errors import IntakeError, PayloadInvalid
from syncworker.events import HygieneEvent
from syncworker.intake.contract import EspParser, InboundRequest, ParseResult, Quarantined, admit
from syncworker.intake.registry import ESP_PARSERS
from syncworker.queue.enqueue import Enqueuer
from syncworker.store import scripts
from syncworker.store.encoding import to_json
from syncworker.store.keys import QUARANTINE, QUARANTINE_BYTES

log = logging.getLogger(__name__)

PAGE = 100  # records read per round trip; their events go out in one ingest job per source
JOB_EVENTS = 1000  # events from which a page's job for one source is sent at once
MANY = 100  # records from which the command shows a progress bar
TRUNCATED = "stored truncated (larger than the record size): cannot be parsed again"


@dataclass
class ReplayReport:
    """What a replay did, or with ``dry_run`` would do; counts of quarantine records unless said."""

    dry_run: bool = False
    records: int = 0  # records of the replayed source(s) read
    replayed: int = 0  # records that left the quarantine
    recovered: int = 0  # events that now validate, sent to an ingest job
    ignored: int = 0  # native events the parser now counts as not hygiene events
    split: int = 0  # items of replayed records that fail on their own: quarantined again, each
    still_invalid: int = 0  # records kept, with the reason they fail now
    reasons: Counter[str] = field(default_factory=Counter)  # why the kept records fail
    skipped: Counter[str] = field(default_factory=Counter)  # why records were not parsed

    def lines(self) -> list[str]:
        """The summary the command prints."""
        would = "would be " if self.dry_run else ""
        lines = ["dry run: nothing was changed"] if self.dry_run else []
        lines.append(
            f"{self.records} record(s) read; {self.replayed} {would}replayed: "
            f"{self.recovered} event(s) {would}recovered, {self.ignored} ignored, "
            f"{self.split} item(s) {would}quarantined again on their own"
        )
        lines.append(f"{self.still_invalid} still invalid (kept, with the reason they fail now)")
        lines += [f"  {n} × {reason}" for reason, n in self.reasons.most_common(5)]
        lines.append(f"{sum(self.skipped.values())} skipped (kept)")
        lines += [f"  {n} × {why}" for why, n in self.skipped.most_common()]
        return lines


def build_parsers(settings: Settings) -> dict[str, EspParser]:
    """Source name -> the current parser of every configured source, as the web app builds them."""
    return {name: ESP_PARSERS[src.esp](src) for name, src in settings.sources.items()}


def replay(
    runtime: Runtime,
    parsers: Mapping[str, EspParser] | None = None,
    *,
    source: str | None = None,
    dry_run: bool = False,
    enqueuer: Enqueuer | None = None,
    on_record: Callable[[], None] | None = None,
) -> ReplayReport:
    """Parse every quarantined record again, oldest first, without verifying it again (it was
    verified when it arrived).

    ``parsers`` maps source names to parsers (default: the configured sources); a record whose
    source has none, or whose ESP is not its parser's, stays and is reported. A record whose
    events now validate, or that holds nothing invalid any more, goes to an ingest job (with any
    of its items that still fail, which the job quarantines on their own) and leaves the list. A
    record that still fails stays where it is, with the current reason. ``source`` limits the
    replay to one source; ``dry_run`` changes nothing. ``on_record`` is called after each record
    read (the command's progress bar).

    The walk starts at the tail, the oldest end, and reads only as many records as the list held
    at the start; the web and the workers push at the head, so their new records are not read.
    The events of a page of records go out in one job per source (one job per record would flood
    the ingest queue: a worker runs tens to hundreds of jobs a second), and only then do the
    page's replayed records leave the list.
    """
    conn = runtime.conn
    run = _Replay(
        runtime,
        build_parsers(runtime.settings) if parsers is None else parsers,
        source,
        dry_run,
        enqueuer,
    )
    next_page = scripts.QuarantinePage(conn)
    total = conn.llen(QUARANTINE)
    seen = 0
    while seen < total:
        page = next_page(QUARANTINE, run.anchor or "", PAGE)
        if not page:
            break  # trimmed or removed by others meanwhile
        for value in reversed(page):  # oldest first
            if seen == total:
                break
            seen += 1
            run.one(value)
            if on_record is not None:
                on_record()
        run.flush()  # before the next page is read: it starts past the records that stay
    report = run.report
    log.info(
        "quarantine replay source=%s dry_run=%s records=%d replayed=%d recovered=%d "
        "still_invalid=%d skipped=%d",
        source or "*", dry_run, report.records, report.replayed, report.recovered,
        report.still_invalid, sum(report.skipped.values()),
    )  # fmt: skip
    return report


class _Replay:
    """One replay's parsers, writers and report."""

    def __init__(
        self,
        runtime: Runtime,
        parsers: Mapping[str, EspParser],
        source: str | None,
        dry_run: bool,
        enqueuer: Enqueuer | None,
    ) -> None:
        self.conn = runtime.conn
        self.parsers = parsers
        self.source = source
        self.dry_run = dry_run
        self._enqueuer = enqueuer
        self._rewrite = scripts.QuarantineRewrite(self.conn)
        self._remove = scripts.QuarantineRemove(self.conn)
        self.report = ReplayReport(dry_run=dry_run)
        self.batches: dict[str, _Batch] = {}  # source -> what its replayed records yield
        # the newest record read that stays in the list: the next page starts past it
        self.anchor: bytes | str | None = None
        # records read that are still in the list (kept, or replayed but not yet removed): the
        # next record is at index -(behind + 1), unless others trimmed or removed some
        self.behind = 0

    @property
    def enqueuer(self) -> Enqueuer:
        if self._enqueuer is None:  # made on first use: a dry run writes nothing
            self._enqueuer = Enqueuer(self.conn)
        return self._enqueuer

    def one(self, value: bytes | str) -> None:
        """Replay one record: keep it (rewritten if it fails otherwise now), or add what it
        yields to its source's batch, to be sent and removed by ``flush``."""
        at = -(self.behind + 1)
        self.behind += 1
        anchor, self.anchor = self.anchor, value  # put back below if the record leaves
        try:
            record = orjson.loads(value)
        except orjson.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            self.report.skipped["not a quarantine record"] += 1
            return
        name = record.get("source")
        if self.source is not None and name != self.source:
            return
        self.report.records += 1
        if not isinstance(name, str) or name not in self.parsers:
            self.report.skipped[f"source {name!r} is not configured"] += 1
            return
        if "truncated" in record:  # only a prefix was kept: see queueing.store_quarantine
            self.report.skipped[TRUNCATED] += 1
            return
        parser = self.parsers[name]
        esp = record.get("esp")
        if esp is not None and esp != parser.esp:
            self.report.skipped[f"source {name!r} now reads {parser.esp}, not {esp}"] += 1
            return
        try:
            result = admit(_parse(parser, record))
            if result.followup is not None and not self.dry_run:
                # a handshake (SNS subscription) the route would have confirmed
                log.info("replay handshake source=%s %s", name, result.followup())
        except IntakeError as exc:
            self.keep(value, at, record, {"reason": str(exc.detail)})
            return
        if not result.events and len(result.quarantined) == 1 and result.response is None:
            (bad,) = result.quarantined
            self.keep(value, at, record, {"reason": bad.reason, "raw": bad.raw})
            return
        if not self.dry_run:
            self.anchor = anchor
            batch = self.batches.setdefault(name, _Batch(parser.esp))
            batch.values.append(value)
            batch.events += result.events
            batch.quarantined += result.quarantined
            if len(batch.events) >= JOB_EVENTS:
                self.flush(name)
        self.report.replayed += 1
        self.report.recovered += len(result.events)
        self.report.ignored += sum(result.ignored.values())
        self.report.split += len(result.quarantined)

    def keep(
        self, value: bytes | str, at: int, record: dict[str, Any], now: dict[str, Any]
    ) -> None:
        """A record that still fails stays where it is, rewritten with how it fails now (a body
        that now parses to one bad item becomes that item)."""
        self.report.still_invalid += 1
        self.report.reasons[now["reason"]] += 1
        kept = dict(record)
        if "raw" in now:
            kept.pop("body", None)
            kept.pop("headers", None)
        kept.update(now)
        if kept != record and not self.dry_run:
            rewritten = to_json(kept)
            self._rewrite(QUARANTINE, QUARANTINE_BYTES, value, rewritten, at)
            self.anchor = rewritten  # what the next page starts past

    def flush(self, source: str | None = None) -> None:
        """Send the ingest job of one source's replayed records (of every source's, by default),
        as the web app sends one for a request; then those records leave the list. A crash in
        between sends their events twice on the next run, which the ledger dedupes."""
        for name in [source] if source is not None else list(self.batches):
            batch = self.batches.pop(name)
            events, quarantined = batch.events, batch.quarantined
            if events or quarantined:
                counters = {"quarantine_recovered": len(events)}
                self.enqueuer.ingest_events(
                    name, batch.esp, events, quarantined, counters, note="replay"
                )
            with self.conn.pipeline(transaction=False) as pipe:
                for value in batch.values:
                    self._remove(QUARANTINE, QUARANTINE_BYTES, value, -1, client=pipe)
                pipe.execute()
            self.behind -= len(batch.values)


@dataclass
class _Batch:
    """Replayed records of one source, waiting for their ingest job."""

    esp: str
    values: list[bytes | str] = field(default_factory=list)
    events: list[HygieneEvent] = field(default_factory=list)
    quarantined: list[Quarantined] = field(default_factory=list)


def _parse(parser: EspParser, record: dict[str, Any]) -> ParseResult:
    """A kept body goes through ``parse_request`` with its kept headers; an item, ``parse_item``."""
    if "event" in record:  # an event the worker could not apply: it is already in codec form
        try:
            return ParseResult(events=[codec.load(record["event"])])
        except codec.InvalidEvent as exc:
            raise PayloadInvalid(f"invalid event: {exc}") from None
    body = record.get("body")
    if isinstance(body, str):
        headers = record.get("headers")
        kept = Headers(headers if isinstance(headers, dict) else {})
        return parser.parse_request(InboundRequest(body.encode("utf-8"), kept))
    if "raw" in record:
        return parser.parse_item(record["raw"])
    raise PayloadInvalid("the record holds neither a body nor an item")
