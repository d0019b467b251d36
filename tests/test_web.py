"""The intake endpoint: order of checks, JSON errors, one job per request, 503 on Redis down."""

from __future__ import annotations

import base64
import time
import zlib
from typing import Any

import orjson
import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from rq import Queue
from rq.serializers import JSONSerializer

from syncworker.devkit.redis_server import RedisServer, free_port
from syncworker.queue import inbox
from syncworker.store.keys import INBOX, INGEST, QUARANTINE, STATS
from syncworker.web.app import create_app
from tests.conftest import SettingsFactory
from tests.replies import optional, stream_entries

AUTH = {"Authorization": "Basic " + base64.b64encode(b"pm:secret").decode()}
BOUNCE: dict[str, Any] = {
    "RecordType": "Bounce",
    "ID": 4323372036854775807,
    "Type": "HardBounce",
    "TypeCode": 1,
    "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
    "Email": "Jane.Doe@example.com",
    "BouncedAt": "2026-11-05T16:33:54.9070259-05:00",
    "Details": "smtp;550 5.1.1 The email account that you tried to reach does not exist",
    "Inactive": True,
}


@pytest.fixture()
def app(make_settings: SettingsFactory) -> Flask:
    settings = make_settings(
        sources={"postmark": ("postmark", {"USERNAME": "pm", "PASSWORD": "secret"})},
        max_body_bytes=4096,
    )
    return create_app(settings)


@pytest.fixture()
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def ingest_payloads(conn: redis.Redis) -> list[Any]:
    """What accepted requests left in the inbox for ingest, oldest first."""
    return [inbox.decode(fields[b"p"]) for _, fields in stream_entries(conn, INBOX)]


def test_valid_request_queues_exactly_one_json_job(
    client: FlaskClient, redis_conn: redis.Redis
) -> None:
    response = client.post("/webhooks/postmark", json=BOUNCE, headers=AUTH)
    assert response.status_code == 200
    assert response.json == {"accepted": 1, "ignored": 0, "quarantined": 0}
    (payload,) = ingest_payloads(redis_conn)
    ((_, fields),) = stream_entries(redis_conn, INBOX)
    assert "@" not in fields[b"d"].decode()
    assert payload["source"] == "postmark"
    assert [e["kind"] for e in payload["events"]] == ["hard_bounce"]
    assert payload["events"][0]["email"] == "jane.doe@example.com"
    # one ordinary RQ job, JSON not pickle, reads the inbox
    (job,) = Queue(INGEST, connection=redis_conn, serializer=JSONSerializer).get_jobs()
    assert job.func_name == "syncworker.jobs.drain_inbox" and job.args == []
    raw = optional(redis_conn.hget(f"rq:job:{job.id}", "data"))
    assert raw is not None
    assert orjson.loads(zlib.decompress(raw))[0] == "syncworker.jobs.drain_inbox"  # as RQ writes


def test_non_hygiene_events_are_counted_not_queued(
    client: FlaskClient, redis_conn: redis.Redis
) -> None:
    delivery = {
        "RecordType": "Delivery",
        "Recipient": "jane@example.com",
        "DeliveredAt": "2026-11-05T16:33:54Z",
        "MessageID": "x",
    }
    response = client.post("/webhooks/postmark", json=delivery, headers=AUTH)
    assert response.status_code == 200
    assert response.json is not None and response.json["ignored"] == 1
    assert ingest_payloads(redis_conn) == []
    assert redis_conn.hget(STATS, "in:postmark:Delivery") == b"1"


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "error"),
    [
        ("/webhooks/nosuch", b"{}", AUTH, 404, "unknown_source"),
        ("/webhooks/postmark", b"x" * 5000, AUTH, 413, "payload_too_large"),
        ("/webhooks/postmark", orjson.dumps(BOUNCE), {}, 401, "signature_invalid"),
        ("/webhooks/postmark", orjson.dumps(BOUNCE), {"Authorization": "Basic %%%"}, 401,
         "signature_invalid"),
        ("/webhooks/postmark", b"{not json", AUTH, 400, "payload_invalid"),
    ],
)  # fmt: skip
def test_bad_requests_get_a_json_reason_and_queue_nothing(
    client: FlaskClient,
    redis_conn: redis.Redis,
    path: str,
    body: bytes,
    headers: dict[str, str],
    status: int,
    error: str,
) -> None:
    response = client.post(path, data=body, headers=headers, content_type="application/json")
    assert response.status_code == status
    assert response.json is not None and response.json["error"] == error
    assert response.json["detail"]
    assert ingest_payloads(redis_conn) == []


def test_oversized_body_is_refused_before_authentication(client: FlaskClient) -> None:
    """An unauthenticated 1 MB body costs no signature work: the size check runs first."""
    response = client.post("/webhooks/postmark", data=b"x" * 10_000)
    assert response.status_code == 413


def test_verified_but_malformed_body_is_quarantined(
    client: FlaskClient, redis_conn: redis.Redis
) -> None:
    response = client.post("/webhooks/postmark", data=b"[1, 2", headers=AUTH)
    assert response.status_code == 400
    entries = [orjson.loads(e) for e in redis_conn.lrange(QUARANTINE, 0, -1)]
    assert [e["body"] for e in entries] == ["[1, 2"]
    assert entries[0]["source"] == "postmark"


def test_forged_malformed_body_is_not_stored(client: FlaskClient, redis_conn: redis.Redis) -> None:
    response = client.post("/webhooks/postmark", data=b"[1, 2")
    assert response.status_code == 401
    assert redis_conn.llen(QUARANTINE) == 0


def test_invalid_event_of_a_verified_request_travels_to_quarantine(
    client: FlaskClient, redis_conn: redis.Redis
) -> None:
    bad = dict(BOUNCE, Email="not-an-address")
    response = client.post("/webhooks/postmark", json=bad, headers=AUTH)
    assert response.status_code == 200
    assert response.json is not None and response.json["quarantined"] == 1
    (payload,) = ingest_payloads(redis_conn)
    assert payload["events"] == []
    assert payload["quarantined"][0]["raw"]["Email"] == "not-an-address"


def test_unknown_route_and_method_answer_json(client: FlaskClient) -> None:
    missing = client.get("/nowhere")
    assert missing.status_code == 404
    assert missing.json is not None and missing.json["error"] == "not_found"
    response = client.put("/webhooks/postmark")
    assert response.status_code == 405
    assert response.json is not None and response.json["error"] == "method_not_allowed"


def _app_for(make_settings: SettingsFactory, url: str) -> FlaskClient:
    settings = make_settings(
        sources={"postmark": ("postmark", {"USERNAME": "pm", "PASSWORD": "secret"})}
    ).replace(redis_url=url)
    return create_app(settings).test_client()


def test_redis_refusing_connections_gives_503_with_retry_after(
    make_settings: SettingsFactory,
) -> None:
    client = _app_for(make_settings, f"redis://127.0.0.1:{free_port()}/0")
    started = time.monotonic()
    response = client.post("/webhooks/postmark", json=BOUNCE, headers=AUTH)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "60"
    assert response.json is not None and response.json["error"] == "unavailable"
    assert time.monotonic() - started < 3, "no multi-second retry loop"


@pytest.mark.slow
def test_hung_redis_gives_503_after_the_timeout_not_a_retry_loop(
    make_settings: SettingsFactory, blackhole_port: int
) -> None:
    client = _app_for(make_settings, f"redis://127.0.0.1:{blackhole_port}/0")
    started = time.monotonic()
    response = client.post("/webhooks/postmark", json=BOUNCE, headers=AUTH)
    elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert elapsed < 3, f"took {elapsed:.1f}s"


def test_redis_stopping_mid_run_gives_503_then_recovers(make_settings: SettingsFactory) -> None:
    server = RedisServer().start()
    port = server.port
    try:
        client = _app_for(make_settings, server.url)
        assert client.post("/webhooks/postmark", json=BOUNCE, headers=AUTH).status_code == 200
        server.stop()
        assert client.post("/webhooks/postmark", json=BOUNCE, headers=AUTH).status_code == 503
        server = RedisServer(port=port).start()
        assert client.post("/webhooks/postmark", json=BOUNCE, headers=AUTH).status_code == 200
    finally:
        server.stop()


def test_probes(client: FlaskClient) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").json == {"status": "ready"}
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert b"syncworker_ingest_backlog" in metrics.data


def test_probes_answer_without_revealing_the_configuration(client: FlaskClient) -> None:
    """Mandrill checks a webhook URL with HEAD before it issues the key, Unisender Go with GET."""
    for path in ("/webhooks/postmark", "/webhooks/mandrill", "/webhooks/nosuch"):
        assert client.head(path).status_code == 200
        assert client.get(path).status_code == 200


def test_redis_refusing_the_job_write_is_503_not_500(
    client: FlaskClient, redis_conn: redis.Redis
) -> None:
    """Out of memory (noeviction) or a read-only replica refuses the write itself: that is our
    own passing trouble, a 503 with Retry-After so the ESP retries, never a 500."""
    limit = redis_conn.config_get("maxmemory")["maxmemory"]
    policy = redis_conn.config_get("maxmemory-policy")["maxmemory-policy"]
    assert limit is not None and policy is not None
    redis_conn.config_set("maxmemory-policy", "noeviction")
    redis_conn.config_set("maxmemory", 1)
    try:
        response = client.post("/webhooks/postmark", json=BOUNCE, headers=AUTH)
    finally:
        redis_conn.config_set("maxmemory", limit)
        redis_conn.config_set("maxmemory-policy", policy)
    assert response.status_code == 503 and "Retry-After" in response.headers
    assert response.json is not None and response.json["error"] == "unavailable"
    assert ingest_payloads(redis_conn) == []
    assert client.post("/webhooks/postmark", json=BOUNCE, headers=AUTH).status_code == 200
