"""The operator commands, and `syncworker run` as a real process with its embedded Redis."""

from __future__ import annotations

import re
import signal
import sys
from pathlib import Path

import orjson
import redis
import requests
from click.testing import CliRunner

from syncworker.cli import main
from syncworker.events import HygieneEvent, Kind
from syncworker.queueing import QUARANTINE
from syncworker.redis_server import free_port
from tests.conftest import SettingsFactory
from tests.intake.signing import basic_auth_header
from tests.processes import Process, clean_env, wait_until


def test_lookup_shows_state_history_and_sync_status(
    redis_url: str, make_settings: SettingsFactory, use_runtime: object
) -> None:
    rt = use_runtime(make_settings())  # type: ignore[operator]
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
        proc.stop(signal.SIGTERM)
    assert proc.proc.returncode is not None
