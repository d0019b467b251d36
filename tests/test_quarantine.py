"""`syncworker quarantine replay`: quarantined data parsed again once a parser or setting is fixed,
recovered through the normal ingest path, and never lost to a concurrent writer or a crash."""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from syncworker.bootstrap import Runtime
from syncworker.config import Settings, SourceConfig
from syncworker.errors import PayloadInvalid
from syncworker.intake.contract import EspParser, ParseResult, Quarantined
from syncworker.intake.esps.amazon_ses import AmazonSesParser
from syncworker.intake.esps.postmark import PostmarkParser
from syncworker.intake.esps.standard_webhooks import StandardWebhooksParser
from syncworker.ops import replay as quarantine
from syncworker.queue.enqueue import Enqueuer
from syncworker.store.keys import INBOX, QUARANTINE
from syncworker.store.quarantine import store_quarantine
from syncworker.web.app import create_app
from tests.conftest import SettingsFactory
from tests.intake.signers.amazon_ses import sns_server, sns_signer, sns_time
from tests.intake.signers.standard_webhooks import signed_headers
from tests.intake.signing import payload, signer_for

AUTH = {"Authorization": "Basic " + base64.b64encode(b"pm:secret").decode()}
HELD = "held back: this release did not accept it"
UNREADABLE = "this release cannot read the body"
Worker = Callable[..., int]


def bounce(email: str, record_id: int = 1) -> dict[str, Any]:
    """A Postmark hard bounce, as Postmark posts it."""
    return {
        "RecordType": "Bounce",
        "ID": record_id,
        "Type": "HardBounce",
        "MessageID": f"m-{record_id}",
        "Email": email,
        "BouncedAt": "2026-11-05T16:33:54Z",
        "Details": "smtp;550 5.1.1 unknown user",
    }


class StrictPostmark(PostmarkParser):
    """An older release that quarantined every Postmark event, with its own reason."""

    def parse_item(self, raw: Any) -> ParseResult:
        result = super().parse_item(raw)
        items = [e.raw for e in result.events] + [q.raw for q in result.quarantined]
        return ParseResult(
            ignored=result.ignored, quarantined=[Quarantined(HELD, r) for r in items]
        )


class BlindStandardWebhooks(StandardWebhooksParser):
    """An older release that could not read any body (so the web app kept the body)."""

    def parse(self, body: bytes) -> ParseResult:
        raise PayloadInvalid(UNREADABLE)


@pytest.fixture()
def hooks_secret() -> str:
    return signer_for("standard_webhooks").values["SECRET"]


@pytest.fixture()
def settings(make_settings: SettingsFactory, hooks_secret: str) -> Settings:
    return make_settings(
        sources={
            "postmark": ("postmark", {"USERNAME": "pm", "PASSWORD": "secret"}),
            "hooks": ("standard_webhooks", {"SECRET": hooks_secret}),
        }
    )


@pytest.fixture()
def rt(settings: Settings, use_runtime: Callable[[Settings], Runtime]) -> Runtime:
    return use_runtime(settings)


def app_with(settings: Settings, **parsers: type[EspParser]) -> Flask:
    """The web app, with some sources read by another release's parser."""
    app = create_app(settings)
    state = app.extensions["syncworker"]
    for name, cls in parsers.items():
        state.parsers[name] = cls(settings.sources[name])
    return app


def records(conn: redis.Redis) -> list[dict[str, Any]]:
    """The quarantine, newest first."""
    return [orjson.loads(raw) for raw in conn.lrange(QUARANTINE, 0, -1)]


def queued(conn: redis.Redis) -> int:
    """Replay batches waiting in the ingest inbox."""
    return int(conn.xlen(INBOX))


def post_postmark(client: FlaskClient, event: dict[str, Any]) -> dict[str, Any]:
    answer = client.post("/webhooks/postmark", json=event, headers=AUTH)
    assert answer.status_code == 200, answer.json
    assert answer.json is not None
    result: dict[str, Any] = answer.json
    return result


def history_keys(rt: Runtime, email: str) -> list[str]:
    view = rt.ledger.view(email)
    return [] if view is None else [h["key"] for h in view.history]


@pytest.mark.slow
def test_replay_recovers_what_a_stricter_release_quarantined(
    settings: Settings, rt: Runtime, redis_conn: redis.Redis, run_worker: Worker
) -> None:
    """The normal parser recovers the held event; the worker applies it; a still-invalid record
    stays with today's reason; an unconfigured source's record stays and is reported; a dry run
    changes nothing and a second replay recovers nothing new."""
    store_quarantine(
        redis_conn,
        "retired",
        [{"esp": "postmark", "reason": "x", "raw": bounce("old@example.com", 3)}],
        100,
    )
    client = app_with(settings, postmark=StrictPostmark).test_client()
    assert post_postmark(client, bounce("Jane@Example.com", 1))["quarantined"] == 1
    assert post_postmark(client, bounce("not-an-address", 2))["quarantined"] == 1
    run_worker()  # the ingest jobs quarantine what the strict parser held back
    assert [r["reason"] for r in records(redis_conn)] == [HELD, HELD, "x"]
    assert not rt.ledger.state("jane@example.com").suppressed

    before = redis_conn.lrange(QUARANTINE, 0, -1)
    dry = quarantine.replay(rt, dry_run=True)
    assert (dry.records, dry.replayed, dry.recovered, dry.still_invalid) == (3, 1, 1, 1)
    assert dict(dry.skipped) == {"source 'retired' is not configured": 1}
    assert "dry run: nothing was changed" in dry.lines()
    assert redis_conn.lrange(QUARANTINE, 0, -1) == before and queued(redis_conn) == 0

    report = quarantine.replay(rt)
    assert (report.records, report.replayed, report.recovered, report.still_invalid) == (3, 1, 1, 1)
    assert dict(report.skipped) == {"source 'retired' is not configured": 1}
    assert queued(redis_conn) == 1
    run_worker()
    assert rt.ledger.state("jane@example.com").suppressed
    assert history_keys(rt, "jane@example.com") == ["postmark:Bounce:1"]  # the route's key
    left = records(redis_conn)
    assert [r["source"] for r in left] == ["postmark", "retired"]  # rewritten where it was
    assert left[0]["reason"].startswith("invalid: ") and "Email" in left[0]["reason"]
    assert left[0]["raw"]["Email"] == "not-an-address"

    after = redis_conn.lrange(QUARANTINE, 0, -1)
    again = quarantine.replay(rt)
    assert (again.replayed, again.recovered, again.still_invalid) == (0, 0, 1)
    assert redis_conn.lrange(QUARANTINE, 0, -1) == after and queued(redis_conn) == 0


def test_a_verified_body_that_could_not_be_read_is_recovered(
    settings: Settings, rt: Runtime, redis_conn: redis.Redis, run_worker: Worker, hooks_secret: str
) -> None:
    """The body is kept with the message id (not the signature), so the recovered event has
    the key the route gives: the ESP's redelivery of the same message then dedupes."""
    body = orjson.dumps({"kind": "unsubscribe", "email": "kim@example.com", "occurred_at": 9})
    headers = signed_headers(body, hooks_secret)
    old = app_with(settings, hooks=BlindStandardWebhooks).test_client()
    answer = old.post("/webhooks/hooks", data=body, headers=headers)
    assert answer.status_code == 400
    [record] = records(redis_conn)
    assert record["reason"] == UNREADABLE and record["body"] == body.decode()
    assert record["headers"] == {"webhook-id": headers["webhook-id"]}  # no signature kept

    report = quarantine.replay(rt)
    assert (report.replayed, report.recovered) == (1, 1)
    assert records(redis_conn) == []
    run_worker()
    assert rt.ledger.state("kim@example.com").suppressed
    key = f"standard_webhooks:hooks:msg:{headers['webhook-id']}"
    assert history_keys(rt, "kim@example.com") == [key]

    # the sender retries the same message; the current release reads it: the same key, deduped
    current = create_app(settings).test_client()
    assert current.post("/webhooks/hooks", data=body, headers=headers).status_code == 200
    run_worker()
    assert history_keys(rt, "kim@example.com") == [key]


def test_a_body_that_now_parses_to_one_bad_event_becomes_that_item(
    settings: Settings, rt: Runtime, redis_conn: redis.Redis, hooks_secret: str
) -> None:
    body = orjson.dumps({"kind": "unsubscribe", "email": "not an address", "occurred_at": 9})
    headers = signed_headers(body, hooks_secret)
    old = app_with(settings, hooks=BlindStandardWebhooks).test_client()
    assert old.post("/webhooks/hooks", data=body, headers=headers).status_code == 400
    report = quarantine.replay(rt)
    assert (report.replayed, report.still_invalid) == (0, 1)
    [record] = records(redis_conn)
    assert "body" not in record and "headers" not in record
    assert record["raw"]["event"]["email"] == "not an address"
    assert record["raw"]["webhook-id"] == headers["webhook-id"]
    assert "email" in record["reason"]


def test_a_handshake_kept_for_a_bad_setting_is_confirmed_once_the_setting_is_fixed(
    rt: Runtime, redis_conn: redis.Redis, make_settings: SettingsFactory
) -> None:
    """An SNS subscription confirmation whose SubscribeURL the setting did not admit is kept;
    replayed with the fixed setting, it is confirmed as the route would have (not when dry)."""
    server, topic = sns_server(), "arn:aws:sns:us-east-1:123456789012:replay"
    loopback = server.settings()
    before_fix = {"TOPIC_ARNS": topic, "CERT_URL_PATTERN": loopback["CERT_URL_PATTERN"]}
    app = create_app(make_settings(sources={"ses": ("amazon_ses", before_fix)}))
    url = server.subscribe_url(topic)
    doc = orjson.loads(payload("amazon_ses", "subscription_confirmation"))
    for name in ("Signature", "SignatureVersion", "SigningCertURL"):
        del doc[name]
    doc.update(TopicArn=topic, Timestamp=sns_time(), SubscribeURL=url)
    body = sns_signer(topic).request(doc).body
    answer = app.test_client().post("/webhooks/ses", data=body, content_type="text/plain")
    assert answer.status_code == 400 and len(records(redis_conn)) == 1
    visited = url.removeprefix(server.base)
    assert visited not in server.requests

    fixed = {"ses": AmazonSesParser(SourceConfig("ses", "amazon_ses", {**before_fix, **loopback}))}
    assert quarantine.replay(rt, fixed, dry_run=True).replayed == 1
    assert visited not in server.requests and len(records(redis_conn)) == 1
    report = quarantine.replay(rt, fixed)
    assert (report.replayed, report.recovered) == (1, 0)
    assert visited in server.requests and records(redis_conn) == []


def test_a_record_of_another_esp_and_other_sources_are_left_alone(
    rt: Runtime, redis_conn: redis.Redis
) -> None:
    store_quarantine(
        redis_conn, "postmark", [{"esp": "mailjet", "reason": "x", "raw": {"event": "bounce"}}], 9
    )
    store_quarantine(
        redis_conn, "hooks", [{"esp": "standard_webhooks", "reason": "y", "raw": 1}], 9
    )
    before = redis_conn.lrange(QUARANTINE, 0, -1)
    report = quarantine.replay(rt, source="postmark")
    assert report.records == 1 and report.replayed == 0
    assert dict(report.skipped) == {"source 'postmark' now reads postmark, not mailjet": 1}
    assert redis_conn.lrange(QUARANTINE, 0, -1) == before


def held(conn: redis.Redis, email: str, n: int, limit: int = 10**6) -> None:
    """One record as the ingest job stores it: valid for today's parser unless ``email`` is not
    an address."""
    store_quarantine(
        conn, "postmark", [{"esp": "postmark", "reason": HELD, "raw": bounce(email, n)}], limit
    )


@pytest.mark.slow
def test_records_pushed_during_a_replay_are_not_touched(
    rt: Runtime, redis_conn: redis.Redis, run_worker: Worker
) -> None:
    """Between every two steps of a replay (over several pages) the intake pushes a record: the
    replay reads only what was there when it began, and every record is replayed or kept."""
    for n in range(250):
        held(redis_conn, f"seed{n}@example.com" if n % 2 else f"seed{n} bad", n)
    pushed: list[int] = []

    def intake_meanwhile() -> None:
        n = 1000 + len(pushed)
        held(redis_conn, f"new{n}@example.com", n)
        pushed.append(n)

    report = quarantine.replay(rt, on_record=intake_meanwhile)
    assert (report.records, report.replayed, report.still_invalid) == (250, 125, 125)
    assert len(pushed) == 250
    assert queued(redis_conn) == 3  # one ingest job per page of 100 records, not one per record
    run_worker()
    left = {r["raw"]["ID"] for r in records(redis_conn)}
    assert left == {n for n in range(250) if n % 2 == 0} | set(pushed)
    assert all(rt.ledger.state(f"seed{n}@example.com").suppressed for n in range(1, 250, 2))
    assert not any(rt.ledger.state(f"new{n}@example.com").suppressed for n in pushed)


@pytest.mark.slow
def test_records_pushed_by_another_thread_are_never_lost(
    rt: Runtime, redis_conn: redis.Redis, redis_url: str, run_worker: Worker
) -> None:
    """A writer keeps pushing (LPUSH + LTRIM) while the replay runs: afterwards each record is
    either applied (its address suppressed) or still quarantined."""
    for n in range(300):
        held(redis_conn, f"seed{n}@example.com", n)
    stop = threading.Event()
    pushed: list[int] = []

    def writer() -> None:
        conn = redis.Redis.from_url(redis_url)
        while not stop.is_set():
            n = 1000 + len(pushed)
            held(conn, f"new{n}@example.com", n)
            pushed.append(n)
        conn.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        report = quarantine.replay(rt)
    finally:
        stop.set()
        thread.join()
    assert report.replayed == 300 and pushed
    run_worker()
    left = {r["raw"]["ID"] for r in records(redis_conn)}
    for n in [*range(300), *pushed]:
        email = f"seed{n}@example.com" if n < 1000 else f"new{n}@example.com"
        assert (n in left) != rt.ledger.state(email).suppressed, n
    assert left >= set(pushed)


def test_a_trim_during_a_replay_moves_records_but_never_mixes_them(
    rt: Runtime, redis_conn: redis.Redis
) -> None:
    """Past the cap, each record the intake pushes drops the oldest, which the replay has read:
    the records it rewrites are not where it expects them, and are found by value; the walk
    still reads every record it began with, and no pushed record."""
    for n in range(150):
        held(redis_conn, f"bad {n}", n, limit=200)

    def intake_at_the_cap() -> None:
        n = 1000 + int(redis_conn.incr("test:pushed"))
        held(redis_conn, f"new{n}@example.com", n, limit=200)

    report = quarantine.replay(rt, on_record=intake_at_the_cap)
    assert (report.records, report.replayed, report.still_invalid) == (150, 0, 150)
    left = records(redis_conn)
    pushed = [r for r in left if r["raw"]["ID"] >= 1000]
    assert len(pushed) == 150 and all(r["reason"] == HELD for r in pushed)
    assert all(r["raw"]["Email"] == f"new{r['raw']['ID']}@example.com" for r in pushed)
    # the 100 oldest were trimmed; the rest were rewritten where they were, each with its own data
    seeds = [r for r in left if r["raw"]["ID"] < 1000]
    assert [r["raw"]["ID"] for r in seeds] == list(range(149, 99, -1))
    assert all(r["raw"]["Email"] == f"bad {r['raw']['ID']}" for r in seeds)
    assert all(r["reason"].startswith("invalid: ") for r in seeds)


class DiesAfterEnqueue(Enqueuer):
    """The replay process killed right after its job was written, before the record left."""

    def ingest(self, *args: Any, **kwargs: Any) -> str | None:
        super().ingest(*args, **kwargs)
        raise KeyboardInterrupt("killed")


@pytest.mark.slow
def test_a_replay_killed_half_way_loses_nothing(
    rt: Runtime, redis_conn: redis.Redis, run_worker: Worker
) -> None:
    for n in range(3):
        held(redis_conn, f"crash{n}@example.com", n)
    with pytest.raises(KeyboardInterrupt):
        quarantine.replay(rt, enqueuer=DiesAfterEnqueue(redis_conn))
    assert len(records(redis_conn)) == 3 and queued(redis_conn) == 1  # the job and the record

    def killed_after_one() -> None:
        raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        quarantine.replay(rt, on_record=killed_after_one)
    assert len(records(redis_conn)) == 3 and queued(redis_conn) == 1  # its page was not sent

    report = quarantine.replay(rt)
    assert report.replayed == 3 and records(redis_conn) == []
    assert queued(redis_conn) == 2
    run_worker()
    for n in range(3):  # each was sent twice: the ledger kept it once
        assert history_keys(rt, f"crash{n}@example.com") == [f"postmark:Bounce:{n}"]


def test_an_item_with_an_integer_beyond_64_bits_is_kept(redis_conn: redis.Redis) -> None:
    """orjson cannot write it; the ingest job must not fail (and lose the item) because of it."""
    store_quarantine(redis_conn, "postmark", [{"reason": "x", "raw": {"ID": 2**70}}], 9)
    [record] = records(redis_conn)
    assert record["reason"] == "x" and record["raw"]["ID"] == float(2**70)
