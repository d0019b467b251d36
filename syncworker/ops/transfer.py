"""Seed the ledger from an ESP's suppression export (CSV), and export the suppressions (CSV).

An import row becomes a hygiene event keyed on (address, kind, source): importing the same file
again changes nothing. The column names ESPs use for the address and time are recognised.
"""

from __future__ import annotations

import csv
import hashlib
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO

from syncworker import codec
from syncworker.bootstrap import Runtime
from syncworker.events import HygieneEvent, Kind, normalize_email

EMAIL_COLUMNS = ("email", "email_address", "address", "recipient")
TIME_COLUMNS = ("created", "created_at", "suppressed_at", "date", "timestamp")
CHUNK = 1000


@dataclass
class ImportReport:
    rows: int = 0
    applied: int = 0
    duplicates: int = 0
    rejected: list[str] = field(default_factory=list)  # "line N: why"
    marked: set[str] = field(default_factory=set)


def read_rows(stream: IO[str], kind: Kind, source: str) -> Iterator[HygieneEvent | str]:
    """Events from a CSV with a header; a string (the reason) for each row that is unusable."""
    reader = csv.DictReader(stream)
    columns = {name.strip().lower(): name for name in reader.fieldnames or ()}
    email_column = next((columns[c] for c in EMAIL_COLUMNS if c in columns), None)
    if email_column is None:
        raise ValueError(f"no address column: expected one of {', '.join(EMAIL_COLUMNS)}")
    time_column = next((columns[c] for c in TIME_COLUMNS if c in columns), None)
    for line, row in enumerate(reader, start=2):
        email = normalize_email(row.get(email_column) or "")
        at = _seconds(row.get(time_column) or "") if time_column else None
        material = f"{email}\x1f{kind.value}\x1f{source}".encode("utf-8", "surrogatepass")
        event = HygieneEvent(
            key="import:" + hashlib.sha256(material).hexdigest()[:32],
            source=source,
            esp="import",
            email=email,
            kind=kind,
            occurred_at=at if at is not None else time.time(),
            reason="imported",
        )
        why = codec.problem(event)  # the rule the intake applies, so the worker takes it too
        yield event if why is None else f"line {line}: {why}"


def import_rows(
    rt: Runtime,
    rows: Iterable[HygieneEvent | str],
    on_chunk: Callable[[int], None] = lambda n: None,
) -> ImportReport:
    report = ImportReport()
    chunk: list[HygieneEvent] = []

    def flush() -> None:
        result = rt.ledger.apply(chunk)
        report.duplicates += result.effects.get("duplicate", 0)
        report.applied += len(chunk) - result.effects.get("duplicate", 0)
        report.marked |= result.marked
        on_chunk(len(chunk))
        chunk.clear()

    for row in rows:
        report.rows += 1
        if isinstance(row, str):
            report.rejected.append(row)
            continue
        chunk.append(row)
        if len(chunk) >= CHUNK:
            flush()
    if chunk:
        flush()
    return report


def export_rows(rt: Runtime, *, everyone: bool = False) -> Iterator[list[str]]:
    """``email, suppressed, reasons, updated_at`` for each suppressed address (or every one)."""
    yield ["email", "suppressed", "reasons", "updated_at"]
    cursor = 0
    while True:
        cursor, found = rt.ledger.scan(cursor, CHUNK)
        emails = sorted(found)
        for state in rt.ledger.states(emails):
            if state.suppressed or everyone:
                yield [
                    state.email,
                    "yes" if state.suppressed else "no",
                    ";".join(sorted(state.reasons)),
                    datetime.fromtimestamp(state.updated_at, UTC).isoformat(timespec="seconds"),
                ]
        if cursor == 0:
            break


def _seconds(text: str) -> float | None:
    text = text.strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace(" ", "T", 1))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
