"""The Lua scripts: each header documents the KEYS and ARGV its script reads, each wrapper
passes them as documented, the record library's copies of Python constants are equal, and the
scripts ship with the package."""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

import pytest
import redis

from syncworker import record
from syncworker.store import keys, scripts
from tests.replies import data, items

LUA = resources.files("syncworker.store").joinpath("lua")
NAMES = sorted(p.name[: -len(".lua")] for p in LUA.iterdir() if p.name.endswith(".lua"))
DOCUMENTED = re.compile(r"^-- (KEYS|ARGV)\[(\d+)(\.\.)?\] \S")
USED = re.compile(r"\b(KEYS|ARGV)\[(\d+)\]")


def header(name: str) -> tuple[list[str], str]:
    """The script's opening comment lines, and the rest."""
    lines = scripts.text(name).splitlines()
    n = 0
    while n < len(lines) and lines[n].startswith("--"):
        n += 1
    return lines[:n], "\n".join(lines[n:])


def documented(name: str) -> dict[str, tuple[int, bool]]:
    """Per KEYS and ARGV: how many fixed entries the header names, and whether more follow."""
    found: dict[str, list[int]] = {"KEYS": [], "ARGV": []}
    more = {"KEYS": False, "ARGV": False}
    for line in header(name)[0]:
        m = DOCUMENTED.match(line)
        if m is None:
            continue
        if m.group(3):
            more[m.group(1)] = True
            found[m.group(1)].append(int(m.group(2)) - 1)  # the fixed ones before it
        else:
            found[m.group(1)].append(int(m.group(2)))
    out = {}
    for what, numbers in found.items():
        out[what] = (max(numbers, default=0), more[what])
    return out


def test_there_are_scripts() -> None:
    assert len(NAMES) >= 20
    assert {w.name for w in scripts.WRAPPERS} | {"enqueue", scripts.RECORD_LIBRARY} == set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_a_header_documents_every_key_and_argument_the_script_reads(name: str) -> None:
    head, body = header(name)
    assert head and head[0].startswith(f"-- {name}.lua: "), "open with the script's name and use"
    doc = documented(name)
    used: dict[str, set[int]] = {"KEYS": set(), "ARGV": set()}
    for what, n in USED.findall(body):
        used[what].add(int(n))
    for what in ("KEYS", "ARGV"):
        fixed, more = doc[what]
        lines = [int(m.group(2)) for m in map(DOCUMENTED.match, head) if m and m[1] == what]
        assert lines == sorted(set(lines)), f"{what} documented in order, once each"
        for n in used[what]:
            assert n <= fixed or more, f"{what}[{n}] is read but not documented"
        for n in range(1, fixed + 1):
            # a documented fixed entry is read: the header names no argument nobody reads
            assert n in used[what] or more, f"{what}[{n}] is documented but never read"
        if name != "enqueue" and not more:
            assert set(range(1, fixed + 1)) == used[what], f"{what} read as documented"


def test_the_record_library_uses_no_keys_or_arguments() -> None:
    head, body = header(scripts.RECORD_LIBRARY)
    assert not USED.search(body)


CALLS: dict[type[Any], dict[str, Any]] = {
    scripts.LedgerWrite: dict(
        stats="s", count_key="n", now=1.0, dedupe_ttl_s=1, counter_prefix="", addresses=[]
    ),
    scripts.LedgerSync: dict(records=[]),
    scripts.LedgerLoad: dict(record_key="k"),
    scripts.LedgerForget: dict(
        record_key="c",
        history_key="h",
        sync_key="s",
        forgotten_key="f",
        count_key="n",
        old_set="o",
        address="a",
        kept="",
    ),
    scripts.QuarantinePush: dict(
        quarantine="q", total_bytes="b", stats="s", most_records=1, most_bytes=1, records=[]
    ),
    scripts.QuarantineRemove: dict(quarantine="q", total_bytes="b", record="r", count=0),
    scripts.QuarantinePage: dict(quarantine="q", after="", most=1),
    scripts.QuarantineRewrite: dict(quarantine="q", total_bytes="b", old="o", new=b"n", index=-1),
    scripts.InboxClear: dict(queued_flag="f", job_id="j"),
    scripts.InboxForgetConsumer: dict(inbox="i", group="g", consumer="c"),
    scripts.Take: dict(pending="p", inflight="i", taken="t", now=1.0, most=1, lease_s=1.0),
    scripts.Reclaim: dict(takers="t", inflight="i", taken="k", job_id="j"),
    scripts.Release: dict(takers="t", taken="k", job_id="j"),
    scripts.BreakerFailed: dict(
        breaker="b", pause="p", now=1.0, failures_to_open=1, probe_in_s=1.0, error="e"
    ),
    scripts.BreakerSucceeded: dict(breaker="b", pause="p", now=1.0),
    scripts.BreakerAdmit: dict(breaker="b", now=1.0, probe_hold_s=1.0),
    scripts.BreakerRelease: dict(breaker="b", now=1.0),
    scripts.RateReserve: dict(rate="r", interval_s=1.0, wait_cap_s=1.0),
}


class _Recorder:
    """Stands for redis-py's Script: records what a wrapper passes."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[Any], list[Any]]] = []

    def __call__(self, keys: list[Any], args: list[Any], client: Any = None) -> Any:
        self.calls.append((keys, args))
        return None


class _Conn:
    def __init__(self) -> None:
        self.recorder = _Recorder()

    def register_script(self, text: str) -> _Recorder:
        assert text
        return self.recorder

    def eval(self, text: str, numkeys: int, *keys_and_args: Any) -> Any:
        assert text
        keys, args = list(keys_and_args[:numkeys]), list(keys_and_args[numkeys:])
        return self.recorder(keys=keys, args=args)


@pytest.mark.parametrize("wrapper", scripts.WRAPPERS, ids=lambda w: w.name)
def test_a_wrapper_passes_what_its_script_documents(wrapper: type[Any]) -> None:
    conn = _Conn()
    wrapper(conn)(**CALLS[wrapper])
    ((passed_keys, passed_args),) = conn.recorder.calls
    doc = documented(wrapper.name)
    for what, passed in (("KEYS", passed_keys), ("ARGV", passed_args)):
        fixed, more = doc[what]
        # called with no repeated groups: exactly the fixed entries
        assert len(passed) == fixed, f"{wrapper.name}: {what}"


def test_repeated_groups_are_passed_in_order() -> None:
    conn = _Conn()
    scripts.LedgerWrite(conn)(  # type: ignore[arg-type]
        "s", "n", 1.0, 60, "p:", [(["c1", "f1"], ["a"] * 9), (["c2", "f2"], ["b"] * 9)]
    )
    scripts.LedgerSync(conn)([(["c1"], ["x"] * 9)])  # type: ignore[arg-type]
    scripts.QuarantinePush(conn)("q", "b", "s", 5, 6, [b"r1", b"r2"])  # type: ignore[arg-type]
    write, sync, push = conn.recorder.calls
    assert write == (["s", "n", "c1", "f1", "c2", "f2"], [2, 1.0, 60, "p:"] + ["a"] * 9 + ["b"] * 9)
    assert sync == (["c1"], ["x"] * 9)
    assert push == (["q", "b", "s"], [5, 6, b"r1", b"r2"])
    with pytest.raises(ValueError):
        scripts.LedgerSync(conn)([(["c1"], ["x"] * 8)])  # type: ignore[arg-type]


def test_the_record_librarys_constants_are_pythons(redis_conn: redis.Redis) -> None:
    """_record.lua spells the old layout's key prefixes and the kind and effect codes once;
    they must equal syncworker/store/keys.py's and syncworker/record.py's."""
    probe = scripts.text(scripts.RECORD_LIBRARY) + (
        "\nreturn cjson.encode({C_PREFIX, H_PREFIX, S_PREFIX, F_PREFIX, OLD_SET, COUNT_KEY,"
        " KIND_CODE, EFFECT_CODE})"
    )
    import orjson

    prefixes = orjson.loads(data(redis_conn.eval(probe, 0)))
    assert prefixes[:6] == [
        keys.CONTACT,
        keys.HISTORY,
        keys.SYNC,
        keys.CONFIRMED,
        keys.CONTACTS,
        keys.CONTACT_COUNT,
    ]
    assert prefixes[6] == dict(record.KIND_CODES)
    assert prefixes[7] == dict(record.EFFECT_CODES)


def test_the_enqueue_header_names_the_job_fields_rq_writes() -> None:
    from syncworker.queue.enqueue import DRAIN_DESCRIPTION, DRAIN_FUNC, JOB_OPTIONS, queue

    probe = queue(redis.Redis(), keys.INGEST).create_job(
        DRAIN_FUNC, description=DRAIN_DESCRIPTION, **JOB_OPTIONS
    )
    head = " ".join(line[3:] for line in header("enqueue")[0])
    listed = re.search(r"with RQ 2\.x these are (.*?)\. tests/", head)
    assert listed is not None
    fields = {f.strip() for f in listed.group(1).replace(" ", "").split(",")}
    assert fields == set(probe.to_dict()) - {"created_at", "enqueued_at"}


def test_the_scripts_ship_with_the_package() -> None:
    from pathlib import Path

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    assert '"store/lua/*.lua"' in pyproject.read_text()


def test_an_ingest_job_is_the_job_queue_enqueue_writes(redis_conn: redis.Redis) -> None:
    """enqueue.lua writes RQ's job hash itself: the hash must be the one RQ's Queue.enqueue
    writes (but for the id and the times), and RQ's Job.fetch must read it back alike."""
    from rq.job import Job
    from rq.serializers import JSONSerializer

    from syncworker.queue.enqueue import (
        DRAIN_DESCRIPTION,
        DRAIN_FUNC,
        JOB_OPTIONS,
        Enqueuer,
        queue,
    )

    Enqueuer(redis_conn).ingest({"events": []}, "x", {})
    (ours_id,) = [i.decode() for i in items(redis_conn.lrange(keys.rq_queue(keys.INGEST), 0, -1))]
    theirs = queue(redis_conn, keys.INGEST).enqueue_call(
        DRAIN_FUNC, description=DRAIN_DESCRIPTION, **JOB_OPTIONS
    )
    ours_hash = redis_conn.hgetall(keys.rq_job(ours_id))
    theirs_hash = redis_conn.hgetall(keys.rq_job(theirs.id))
    # Sentry's RQ integration, once set up in this process, adds trace headers to ``meta``
    theirs_hash.pop(b"meta", None)
    assert set(ours_hash) == set(theirs_hash)
    for name in set(theirs_hash) - {b"created_at", b"enqueued_at"}:
        assert ours_hash[name] == theirs_hash[name], name
    ours = Job.fetch(ours_id, connection=redis_conn, serializer=JSONSerializer)
    again = Job.fetch(theirs.id, connection=redis_conn, serializer=JSONSerializer)
    for attr in (
        "func_name",
        "args",
        "kwargs",
        "description",
        "origin",
        "timeout",
        "result_ttl",
        "failure_ttl",
        "retries_left",
        "retry_intervals",
    ):
        assert getattr(ours, attr) == getattr(again, attr), attr
    assert ours.get_status() == again.get_status()
    assert redis_conn.smembers(keys.RQ_QUEUES) == {keys.rq_queue(keys.INGEST).encode()}
