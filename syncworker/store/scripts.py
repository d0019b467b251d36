"""The Lua scripts (syncworker/store/lua/*.lua), each behind a typed wrapper.

Every script opens with a header that documents its KEYS and ARGV one per line; a wrapper takes
them as named, typed parameters and passes them in that order. A wrapper is made per connection
(``register_script``: EVALSHA, the script loaded again when Redis lacks it); ``client`` runs it
on a pipeline instead. tests/test_scripts.py checks the headers against the scripts and the
wrappers against the headers.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from importlib import resources
from typing import Any, ClassVar

import redis
from redis.client import Pipeline

Arg = bytes | str | int | float
#: the keys and the arguments of one repeated group of a script's KEYS and ARGV
Group = tuple[Sequence[str | bytes], Sequence[Arg]]

RECORD_LIBRARY = "_record"  # put before the scripts that read and write records
USE_RECORD_LIBRARY = frozenset({"ledger_sync", "ledger_load"})
FIXED_FIELDS = "local fixed = {FIXED_FIELDS}"  # the enqueue script's placeholder line


@functools.cache
def text(name: str) -> str:
    """The text of ``lua/<name>.lua`` as it ships in the package."""
    return resources.files(__package__).joinpath("lua", f"{name}.lua").read_text("utf-8")


def source(name: str) -> str:
    """The script ``name`` as Redis runs it: with the record library first if it uses it."""
    if name in USE_RECORD_LIBRARY:
        return text(RECORD_LIBRARY) + "\n" + text(name)
    return text(name)


class _Script:
    """One script on one connection."""

    name: ClassVar[str]
    #: sent whole (EVAL) rather than by its SHA (EVALSHA): for a script run seldom, whose first
    #: call would otherwise add a NOSCRIPT reply and a SCRIPT LOAD to the moment it runs
    send_whole: ClassVar[bool] = False

    def __init__(self, conn: redis.Redis) -> None:
        self._conn = conn
        self._source = source(self.name)
        self._script = conn.register_script(self._source)

    def _run(
        self, keys: Sequence[str | bytes], args: Sequence[Arg], client: Pipeline | None = None
    ) -> Any:
        if self.send_whole:
            target = self._conn if client is None else client
            return target.eval(self._source, len(keys), *keys, *args)
        return self._script(keys=list(keys), args=list(args), client=client)


def _groups(groups: Sequence[Group]) -> tuple[list[str | bytes], list[Arg]]:
    keys: list[str | bytes] = []
    args: list[Arg] = []
    for group_keys, group_args in groups:
        keys += group_keys
        args += group_args
    return keys, args


# -- the ledger ------------------------------------------------------------------------------------


class LedgerWrite(_Script):
    """Compare-and-set writes of the records a batch of events changed (``ledger_write.lua``)."""

    name = "ledger_write"
    ADDRESS_ARGS = 9  # values per address, before its events' triples
    EVENT_ARGS = 3

    def __call__(
        self,
        stats: str,
        count_key: str,
        now: float,
        dedupe_ttl_s: int,
        counter_prefix: str,
        addresses: Sequence[Group],
        client: Pipeline | None = None,
    ) -> Any:
        """``addresses``: per address, its keys and values in the header's order."""
        keys, args = _groups(addresses)
        head: list[Arg] = [len(addresses), now, dedupe_ttl_s, counter_prefix]
        return self._run([stats, count_key, *keys], [*head, *args], client)


class LedgerSync(_Script):
    """Sets a destination's sync status in records (``ledger_sync.lua``)."""

    name = "ledger_sync"
    RECORD_ARGS = 9

    def __call__(self, records: Sequence[Group], client: Pipeline | None = None) -> Any:
        """``records``: per record, its key and its 9 values in the header's order."""
        for keys, args in records:
            if len(keys) != 1 or len(args) != self.RECORD_ARGS:
                raise ValueError("a record takes one key and 9 values")
        keys, args = _groups(records)
        return self._run(keys, args, client)


class LedgerLoad(_Script):
    """A record, converted first if it is still in the old layout (``ledger_load.lua``)."""

    name = "ledger_load"

    def __call__(self, record_key: str | bytes, client: Pipeline | None = None) -> Any:
        return self._run([record_key], [], client)


class LedgerForget(_Script):
    """Erases an address, keeping a suppressed one's reasons under its hash
    (``ledger_forget.lua``)."""

    name = "ledger_forget"

    def __call__(
        self,
        record_key: str,
        history_key: str,
        sync_key: str,
        forgotten_key: str,
        count_key: str,
        old_set: str,
        address: str,
        kept: bytes | str,
    ) -> Any:
        keys = [record_key, history_key, sync_key, forgotten_key, count_key, old_set]
        return self._run(keys, [address, kept])


# -- intake ----------------------------------------------------------------------------------------


def enqueue_source(fixed: Sequence[Any]) -> str:
    """``enqueue.lua`` with the job fields every ingest job shares written in (field, value,
    ...: from RQ's ``Job.to_dict()``)."""
    script = text("enqueue")
    if script.count(FIXED_FIELDS) != 1:
        raise AssertionError("enqueue.lua has lost its FIXED_FIELDS line")
    literals = ", ".join(map(lua_string, fixed))
    return script.replace(FIXED_FIELDS, f"local fixed = {{{literals}}}")


def enqueue_head(
    sha: str,
    *,
    queue_key: str,
    queues_key: str,
    stats: str,
    job_prefix: str,
    inbox: str,
    group: str,
    queued_flag: str,
    queued_ttl_s: int,
) -> list[Any]:
    """The EVALSHA command of ``enqueue.lua`` up to ARGV[8]; a call appends ARGV[9..] (a job
    id, now, the number of counters, the counters, the requests)."""
    return [
        "EVALSHA", sha, "0",
        queue_key, queues_key, stats, job_prefix, inbox, group, queued_flag, queued_ttl_s,
    ]  # fmt: skip


def lua_string(value: Any) -> str:
    """A Lua string literal of ``value`` as redis-py would encode it (str, enum by value, int)."""
    if isinstance(value, bytes):
        raw = value
    elif isinstance(value, str):
        raw = value.encode()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        raw = repr(value).encode()
    else:
        raise TypeError(f"cannot put {type(value).__name__} in the enqueue script")
    safe = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _-.:,[]"
    return "'" + "".join(chr(b) if b in safe else f"\\{b:03d}" for b in raw) + "'"


class QuarantinePush(_Script):
    """Pushes records and trims the oldest to the bounds (``quarantine_push.lua``)."""

    name = "quarantine_push"
    send_whole = True

    def __call__(
        self,
        quarantine: str,
        total_bytes: str,
        stats: str,
        most_records: int,
        most_bytes: int,
        records: Sequence[bytes],
    ) -> Any:
        return self._run([quarantine, total_bytes, stats], [most_records, most_bytes, *records])


class QuarantineRemove(_Script):
    """Removes a record by value, keeping the byte total (``quarantine_remove.lua``)."""

    name = "quarantine_remove"

    def __call__(
        self,
        quarantine: str,
        total_bytes: str,
        record: bytes | str,
        count: int,
        client: Pipeline | None = None,
    ) -> Any:
        return self._run([quarantine, total_bytes], [record, count], client)


class QuarantinePage(_Script):
    """The replay's next page of records (``quarantine_page.lua``)."""

    name = "quarantine_page"

    def __call__(self, quarantine: str, after: bytes | str, most: int) -> Any:
        return self._run([quarantine], [after, most])


class QuarantineRewrite(_Script):
    """Rewrites a record where it is (``quarantine_rewrite.lua``)."""

    name = "quarantine_rewrite"

    def __call__(
        self, quarantine: str, total_bytes: str, old: bytes | str, new: bytes, index: int
    ) -> Any:
        return self._run([quarantine, total_bytes], [old, new, index])


class InboxClear(_Script):
    """Frees the queued flag if it still names the job (``inbox_clear.lua``)."""

    name = "inbox_clear"
    send_whole = True

    def __call__(self, queued_flag: str, job_id: str) -> Any:
        return self._run([queued_flag], [job_id])


class InboxForgetConsumer(_Script):
    """Removes a consumer that holds nothing from the inbox's group
    (``inbox_forget_consumer.lua``)."""

    name = "inbox_forget_consumer"
    send_whole = True

    def __call__(self, inbox: str, group: str, consumer: str) -> Any:
        return self._run([inbox], [group, consumer])


# -- delivery --------------------------------------------------------------------------------------


class Take(_Script):
    """A deliver job takes a batch (``take.lua``)."""

    name = "take"

    def __call__(
        self, pending: str, inflight: str, taken: str, now: float, most: int, lease_s: float
    ) -> Any:
        return self._run([pending, inflight, taken], [now, most, lease_s])


class Reclaim(_Script):
    """Frees a dead taker's slot and makes its batch due (``reclaim.lua``)."""

    name = "reclaim"
    send_whole = True

    def __call__(self, takers: str, inflight: str, taken: str, job_id: str) -> Any:
        return self._run([takers, inflight, taken], [job_id])


class Release(_Script):
    """A deliver job frees its slot and batch record (``release.lua``)."""

    name = "release"

    def __call__(self, takers: str, taken: str, job_id: str) -> Any:
        return self._run([takers, taken], [job_id])


class BreakerFailed(_Script):
    """Counts a call with no answer (``breaker_failed.lua``)."""

    name = "breaker_failed"

    def __call__(
        self,
        breaker: str,
        pause: str,
        now: float,
        failures_to_open: int,
        probe_in_s: float,
        error: str,
    ) -> Any:
        return self._run([breaker, pause], [now, failures_to_open, probe_in_s, error])


class BreakerSucceeded(_Script):
    """Counts an answered call (``breaker_succeeded.lua``)."""

    name = "breaker_succeeded"

    def __call__(self, breaker: str, pause: str, now: float) -> Any:
        return self._run([breaker, pause], [now])


class BreakerAdmit(_Script):
    """Whether a deliver job may take a batch, or probe (``breaker_admit.lua``)."""

    name = "breaker_admit"

    def __call__(self, breaker: str, now: float, probe_hold_s: float) -> Any:
        return self._run([breaker], [now, probe_hold_s])


class BreakerRelease(_Script):
    """A probe without a verdict: the next job may probe (``breaker_release.lua``)."""

    name = "breaker_release"

    def __call__(self, breaker: str, now: float) -> Any:
        return self._run([breaker], [now])


class RateReserve(_Script):
    """Reserves a destination's next request slot (``rate_reserve.lua``)."""

    name = "rate_reserve"

    def __call__(self, rate: str, interval_s: float, wait_cap_s: float) -> Any:
        return self._run([rate], [interval_s, wait_cap_s])


WRAPPERS: tuple[type[_Script], ...] = (
    LedgerWrite,
    LedgerSync,
    LedgerLoad,
    LedgerForget,
    QuarantinePush,
    QuarantineRemove,
    QuarantinePage,
    QuarantineRewrite,
    InboxClear,
    InboxForgetConsumer,
    Take,
    Reclaim,
    Release,
    BreakerFailed,
    BreakerSucceeded,
    BreakerAdmit,
    BreakerRelease,
    RateReserve,
)

# Read every script once, at import: a worker imports this before it forks its work-horses, which
# then find the texts in memory rather than each reading the files again.
for _wrapper in WRAPPERS:
    source(_wrapper.name)
text("enqueue")
