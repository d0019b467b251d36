"""The operator commands, and `syncworker run` as a real process with its embedded Redis."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
import redis
import requests
from click.testing import CliRunner

from syncworker.bootstrap import Runtime
from syncworker.cli import main
from syncworker.config import Settings
from syncworker.devkit.redis_server import free_port
from syncworker.events import HygieneEvent, Kind
from syncworker.store.keys import QUARANTINE
from syncworker.store.quarantine import store_quarantine
from tests.conftest import SettingsFactory
from tests.intake.signing import basic_auth_header
from tests.processes import Process, clean_env, wait_until


def test_lookup_shows_state_history_and_sync_status(
    redis_url: str, make_settings: SettingsFactory, use_runtime: Callable[[Settings], Runtime]
) -> None:
    rt = use_runtime(make_settings())
    rt.ledger.apply(
        [HygieneEvent("k", "postmark", "postmark", "a@example.com", Kind.HARD_BOUNCE, 9.0)]
    )
    result = CliRunner().invoke(main, ["lookup", "A@Example.com"], env={"REDIS_URL": redis_url})
    assert result.exit_code == 0, result.output
    body = orjson.loads(result.output)
    assert body["suppressed"] is True
    assert body["reasons"]["hard_bounce"]["source"] == "postmark"
    assert body["history"][0]["key"] == "k"


def test_lookup_of_an_unknown_address_fails_clearly(redis_url: str) -> None:
    result = CliRunner().invoke(main, ["lookup", "x@example.com"], env={"REDIS_URL": redis_url})
    assert result.exit_code == 1
    assert "no record" in result.output


def test_commands_explain_a_missing_redis_url() -> None:
    result = CliRunner().invoke(main, ["status"], env={"REDIS_URL": ""})
    assert result.exit_code == 1
    assert "REDIS_URL is not set" in result.output


def test_suppress_and_unsuppress_are_recorded_and_propagate(
    redis_url: str, redis_conn: redis.Redis
) -> None:
    env = {
        "REDIS_URL": redis_url,
        "SYNCWORKER_DESTINATIONS": "hubspot",
        "SYNCWORKER_HUBSPOT_TOKEN": "t",
    }
    runner = CliRunner()
    result = runner.invoke(main, ["suppress", "b@example.com", "--reason", "legal"], env=env)
    assert result.exit_code == 0, result.output
    assert "suppressed; pending for hubspot" in result.output
    assert redis_conn.zscore("sw:pending:hubspot", "b@example.com") is not None
    assert redis_conn.llen("rq:queue:syncworker-deliver") == 1  # a deliver job is queued
    result = runner.invoke(main, ["unsuppress", "b@example.com", "--reason", "oops"], env=env)
    assert "active" in result.output
    view = orjson.loads(runner.invoke(main, ["lookup", "b@example.com"], env=env).output)
    assert [h["detail"] for h in view["history"]] == ["oops", "legal"]
    assert [h["source"] for h in view["history"]] == ["cli", "cli"]


def test_suppress_rejects_a_non_address(redis_url: str) -> None:
    result = CliRunner().invoke(
        main, ["suppress", "nobody", "--reason", "x"], env={"REDIS_URL": redis_url}
    )
    assert result.exit_code == 2
    assert "not an email address" in result.output


def test_status_and_quarantine(redis_url: str, redis_conn: redis.Redis) -> None:
    redis_conn.lpush(QUARANTINE, orjson.dumps({"source": "postmark", "reason": "invalid: x"}))
    runner = CliRunner()
    status = orjson.loads(runner.invoke(main, ["status"], env={"REDIS_URL": redis_url}).output)
    assert status["quarantined"] == 1
    shown = runner.invoke(main, ["quarantine"], env={"REDIS_URL": redis_url}).output
    assert orjson.loads(shown)["reason"] == "invalid: x"


def quarantined_bounce(conn: redis.Redis, source: str, email: str, n: int) -> None:
    """A Postmark bounce an older release quarantined (as the ingest job stores it)."""
    bounce = {"RecordType": "Bounce", "ID": n, "Type": "HardBounce", "Email": email,
              "BouncedAt": "2026-11-20T10:00:00Z"}  # fmt: skip
    store_quarantine(conn, source, [{"esp": "postmark", "reason": "held", "raw": bounce}], 10**6)


def test_quarantine_replay_command(redis_url: str, redis_conn: redis.Redis) -> None:
    """`quarantine replay`: a dry run first, then the replay; the listing still works."""
    env = {
        "REDIS_URL": redis_url,
        "SYNCWORKER_SOURCES": "postmark",
        "SYNCWORKER_POSTMARK_USERNAME": "pm",
        "SYNCWORKER_POSTMARK_PASSWORD": "pw",
    }
    quarantined_bounce(redis_conn, "postmark", "fixed@example.com", 1)
    quarantined_bounce(redis_conn, "postmark", "still bad", 2)
    quarantined_bounce(redis_conn, "retired", "old@example.com", 3)
    runner = CliRunner()
    before = redis_conn.lrange(QUARANTINE, 0, -1)
    dry = runner.invoke(main, ["quarantine", "replay", "--dry-run"], env=env)
    assert dry.exit_code == 0, dry.output
    assert "dry run: nothing was changed" in dry.output
    assert "3 record(s) read; 1 would be replayed: 1 event(s) would be recovered" in dry.output
    assert redis_conn.lrange(QUARANTINE, 0, -1) == before
    assert redis_conn.llen("rq:queue:syncworker-ingest") == 0

    done = runner.invoke(main, ["quarantine", "replay"], env=env)
    assert done.exit_code == 0, done.output
    assert "3 record(s) read; 1 replayed: 1 event(s) recovered" in done.output
    assert "1 still invalid" in done.output and "Not a valid email address" in done.output
    assert "1 skipped" in done.output and "source 'retired' is not configured" in done.output
    assert redis_conn.llen("rq:queue:syncworker-ingest") == 1
    listed = runner.invoke(main, ["quarantine", "--limit", "5"], env=env).output
    shown = [orjson.loads(doc) for doc in re.split(r"\n(?=\{)", listed.strip())]
    assert [(doc["source"], doc["raw"]["ID"]) for doc in shown] == [("retired", 3), ("postmark", 2)]

    only = runner.invoke(main, ["quarantine", "replay", "--source", "retired"], env=env)
    assert only.exit_code == 1 and "'retired' is not a configured source" in only.output


def test_quarantine_replay_shows_progress_for_many_records(
    redis_url: str, redis_conn: redis.Redis
) -> None:
    env = {
        "REDIS_URL": redis_url,
        "SYNCWORKER_SOURCES": "postmark",
        "SYNCWORKER_POSTMARK_USERNAME": "pm",
        "SYNCWORKER_POSTMARK_PASSWORD": "pw",
    }
    for n in range(150):
        quarantined_bounce(redis_conn, "postmark", f"many{n}@example.com", n)
    result = CliRunner().invoke(main, ["quarantine", "replay", "--source", "postmark"], env=env)
    assert result.exit_code == 0, result.output
    assert "replay quarantine" in result.output
    assert "150 record(s) read; 150 replayed: 150 event(s) recovered" in result.output
    assert redis_conn.llen(QUARANTINE) == 0


@pytest.mark.slow
def test_run_starts_an_embedded_redis_web_and_worker(tmp_path: Path) -> None:
    """`syncworker run` with no REDIS_URL: a real Redis of its own, gunicorn and the worker."""
    port = free_port()
    env = clean_env(
        {
            "SYNCWORKER_SOURCES": "postmark",
            "SYNCWORKER_POSTMARK_USERNAME": "pm",
            "SYNCWORKER_POSTMARK_PASSWORD": "pw",
            "SYNCWORKER_API_TOKEN": "tok",
        }
    )
    env.pop("REDIS_URL", None)
    args = [sys.executable, "-m", "syncworker", "run", "--port", str(port)]
    proc = Process([*args, "--data-dir", str(tmp_path / "data")], env, tmp_path / "run.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: "embedded Redis listening on" in proc.output(), 20, "the Redis line")
        match = re.search(r"embedded Redis listening on (redis://\S+)", proc.output())
        assert match is not None

        def up() -> bool:
            assert proc.alive(), proc.output()
            try:
                return requests.get(base + "/healthz", timeout=0.5).status_code == 200
            except requests.RequestException:
                return False

        wait_until(up, 30, "the web process")
        bounce = {"RecordType": "Bounce", "ID": 1, "Type": "HardBounce",
                  "Email": "run@example.com", "BouncedAt": "2026-11-20T10:00:00Z"}  # fmt: skip
        answer = requests.post(
            base + "/webhooks/postmark", json=bounce, headers=basic_auth_header("pm", "pw")
        )
        assert answer.status_code == 200
        auth = {"Authorization": "Bearer tok"}

        def ingested() -> bool:
            got = requests.get(base + "/v1/contacts/run@example.com", headers=auth, timeout=2)
            return got.status_code == 200 and got.json()["suppressed"] is True

        wait_until(ingested, 30, "the worker to apply the bounce", interval=0.2)
        embedded = redis.Redis.from_url(match.group(1))
        assert embedded.exists("sw:c:run@example.com")
        embedded.close()
    finally:
        proc.stop()
    assert proc.proc.returncode is not None


@pytest.mark.slow
def test_run_binds_where_configured_and_says_so(tmp_path: Path) -> None:
    """`syncworker run` listens on SYNCWORKER_BIND (here 127.0.0.2 only) and prints that address,
    not 0.0.0.0 on --port."""
    port, other = free_port(), free_port()
    env = clean_env(
        {
            "SYNCWORKER_SOURCES": "postmark",
            "SYNCWORKER_POSTMARK_USERNAME": "pm",
            "SYNCWORKER_POSTMARK_PASSWORD": "pw",
            "SYNCWORKER_BIND": f"127.0.0.2:{port}",
        }
    )
    env.pop("REDIS_URL", None)
    args = [sys.executable, "-m", "syncworker", "run", "--port", str(other)]
    proc = Process([*args, "--data-dir", str(tmp_path / "data")], env, tmp_path / "run.log")
    try:

        def up() -> bool:
            assert proc.alive(), proc.output()
            try:
                got = requests.get(f"http://127.0.0.2:{port}/healthz", timeout=0.5)
                return got.status_code == 200
            except requests.RequestException:
                return False

        wait_until(up, 30, "the web process on 127.0.0.2")
        assert f"web listening on 127.0.0.2:{port}: http://127.0.0.2:{port}" in proc.output()
        assert "0.0.0.0" not in proc.output() and "127.0.0.1:" + str(port) not in proc.output()
        for elsewhere in (f"http://127.0.0.1:{port}", f"http://127.0.0.2:{other}"):
            try:
                requests.get(elsewhere + "/healthz", timeout=2)
            except requests.ConnectionError:
                continue
            raise AssertionError(f"{elsewhere} answered: the web process bound too widely")
    finally:
        proc.stop()
