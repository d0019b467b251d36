"""Mailgun: a body signed with the webhook signing key becomes at most one hygiene event."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import socket
import threading
import time
from collections import Counter
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest
import redis
from flask.testing import FlaskClient
from hypothesis import given, settings
from hypothesis import strategies as st
from rq import Queue
from rq.serializers import JSONSerializer

from syncworker.config import SourceConfig
from syncworker.devkit.redis_server import RedisServer, free_port
from syncworker.errors import PayloadInvalid, SignatureInvalid
from syncworker.events import Kind
from syncworker.intake.contract import InboundRequest
from syncworker.intake.esps.mailgun import MailgunParser
from syncworker.store.keys import INGEST
from syncworker.web.app import create_app
from tests.conftest import SettingsFactory
from tests.intake.signing import (
    headers_of,
    mailgun_body,
    mailgun_legacy_request,
    payload,
    request,
    resign_mailgun,
    sign_mailgun,
)

NOW = 1_700_000_050
KEY = "key-current-0123456789abcdef"
OLD_KEY = "key-previous-fedcba9876543210"
TOKEN = "f3c2b6a4d1e5f7a9b8c0d2e4f6a8b0c2d4e6f8a0b2c4d6e8f0"


def make_parser(key: str = KEY, previous: str | None = None) -> MailgunParser:
    values = {"SIGNING_KEY": key, **({"SIGNING_KEY_PREVIOUS": previous} if previous else {})}
    config = SourceConfig(name="mailgun", esp="mailgun", values=values)
    return MailgunParser(config, clock=lambda: NOW)


def signed_case(case: str, key: str = KEY, timestamp: int = NOW, token: str = TOKEN) -> bytes:
    return resign_mailgun(payload("mailgun", case), key, timestamp, token)


def with_signature(**signature: Any) -> bytes:
    doc = orjson.loads(payload("mailgun", "complained"))
    doc["signature"] = signature
    return orjson.dumps(doc)


# -- events ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "kind"),
    [
        ("failed_permanent", Kind.HARD_BOUNCE),
        ("failed_temporary", Kind.SOFT_BOUNCE),
        ("failed_suppress_unsubscribe", Kind.UNSUBSCRIBE),
        ("rejected", Kind.BLOCKED),
        ("unsubscribed", Kind.UNSUBSCRIBE),
        ("complained", Kind.SPAM_COMPLAINT),
    ],
)
def test_hygiene_events_by_case(case: str, kind: Kind) -> None:
    body = signed_case(case)
    parser = make_parser()
    parser.verify(request(body))
    result = parser.parse(body)
    [event] = result.events
    assert event.kind == kind
    assert event.key == f"mailgun:{TOKEN}"
    assert (event.source, event.esp) == ("mailgun", "mailgun")
    # the body without the signature: the token keys the event, so a replay needs it
    assert event.raw == {
        "signature": {"token": TOKEN},
        "event-data": orjson.loads(body)["event-data"],
    }
    assert result.ignored == Counter() and result.quarantined == []


@pytest.mark.parametrize("case", ["delivered", "opened"])
def test_engagement_events_are_counted_not_returned(case: str) -> None:
    result = make_parser().parse(signed_case(case))
    assert result.events == [] and result.ignored == Counter({case: 1})


def test_permanent_failure_carries_its_details() -> None:
    [event] = make_parser().parse(signed_case("failed_permanent")).events
    assert event.email == "alice@example.com"
    assert event.occurred_at == 1521233195.375624
    assert event.message_id == "20130503192659.13651.20287@mg.example.com"
    assert event.smtp_code == "550"
    assert event.reason is not None and event.reason.startswith("550 5.1.1")


def test_suppressed_recipient_keeps_the_original_reason() -> None:
    """A send to a previously unsubscribed address fails 'permanent'; it is not a hard bounce."""
    [event] = make_parser().parse(signed_case("failed_suppress_unsubscribe")).events
    assert event.kind == Kind.UNSUBSCRIBE
    assert event.reason == "Not delivering to previously unsubscribed address"


def test_unknown_event_code_is_ignored() -> None:
    body = mailgun_body({"event": "list_member_uploaded", "recipient": "x@example.com"}, KEY, NOW)
    result = make_parser().parse(body)
    assert result.events == [] and result.ignored == Counter(list_member_uploaded=1)


# -- dedupe keys ---------------------------------------------------------------------------------


def test_keys_are_stable_across_redeliveries_and_distinct_per_post() -> None:
    parser = make_parser()
    first = parser.parse(signed_case("complained", token="a" * 50)).events[0].key
    again = parser.parse(signed_case("complained", token="a" * 50)).events[0].key
    other = parser.parse(signed_case("complained", token="b" * 50)).events[0].key
    assert first == again != other


# -- verification --------------------------------------------------------------------------------


def test_previous_signing_key_is_accepted_during_rotation() -> None:
    parser = make_parser(KEY, OLD_KEY)
    parser.verify(request(signed_case("complained", key=KEY)))
    parser.verify(request(signed_case("complained", key=OLD_KEY)))


def test_wrong_signing_key_is_refused() -> None:
    with pytest.raises(SignatureInvalid) as exc:
        make_parser().verify(request(signed_case("complained", key="key-someone-else")))
    assert exc.value.status == 401


def test_forged_signature_is_refused() -> None:
    body = with_signature(timestamp=str(NOW), token=TOKEN, signature="ab" * 32)
    with pytest.raises(SignatureInvalid):
        make_parser().verify(request(body))


def test_token_swapped_under_a_valid_signature_is_refused() -> None:
    signature = {**sign_mailgun(KEY, NOW, TOKEN), "token": "x" * 50}
    with pytest.raises(SignatureInvalid):
        make_parser().verify(request(with_signature(**signature)))


def test_subaccount_parent_signature_is_accepted() -> None:
    """Subaccount events carry parent-signature, made with the primary account's key."""
    child = sign_mailgun("key-subaccount", NOW, TOKEN)
    parent = sign_mailgun(KEY, NOW, TOKEN)["signature"]
    make_parser().verify(request(with_signature(**child, **{"parent-signature": parent})))


def test_numeric_timestamp_is_accepted() -> None:
    signature: dict[str, Any] = sign_mailgun(KEY, NOW, TOKEN)
    signature["timestamp"] = NOW
    make_parser().verify(request(with_signature(**signature)))


def test_uppercase_hex_signature_is_accepted() -> None:
    signature = sign_mailgun(KEY, NOW, TOKEN)
    signature["signature"] = signature["signature"].upper()
    make_parser().verify(request(with_signature(**signature)))


@pytest.mark.parametrize("skew", [-301, 301, -86400])
def test_stale_or_future_timestamp_is_refused(skew: int) -> None:
    with pytest.raises(SignatureInvalid, match="skew"):
        make_parser().verify(request(signed_case("complained", timestamp=NOW + skew)))


def _sig(**change: Any) -> dict[str, Any]:
    return {**sign_mailgun(KEY, NOW, TOKEN), **change}


@pytest.mark.parametrize(
    "body",
    [
        with_signature(**_sig(signature="zz" * 32)),
        with_signature(**_sig(signature="abc")),
        with_signature(**_sig(signature="")),
        with_signature(**_sig(signature=12345)),
        with_signature(**_sig(signature="ñ" * 64)),
        with_signature(**_sig(signature=None)),
        with_signature(**_sig(timestamp="yesterday")),
        with_signature(**_sig(timestamp=True)),
        with_signature(**_sig(timestamp=1.7e9)),
        with_signature(**_sig(timestamp="9" * 400)),
        with_signature(**_sig(token="")),
        with_signature(**_sig(token=None)),
        with_signature(),
        orjson.dumps({"event-data": {"event": "complained"}}),
        orjson.dumps({"signature": "abc", "event-data": {}}),
        b"[]",
        b"",
        b"not json",
        b"\xff\xfe",
    ],
)
def test_malformed_signature_is_401(body: bytes) -> None:
    with pytest.raises(SignatureInvalid) as exc:
        make_parser().verify(request(body))
    assert exc.value.status == 401


def test_hmac_is_over_timestamp_and_token_only() -> None:
    """Mailgun's signature does not cover event-data: a signed token is what dedupes replays."""
    signature = sign_mailgun(KEY, NOW, TOKEN)
    expected = hmac.new(KEY.encode(), f"{NOW}{TOKEN}".encode(), hashlib.sha256).hexdigest()
    assert signature["signature"] == expected


# -- malformed bodies and bad events -------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b"[]",
        b"null",
        b'{"signature": {"token": "t"}}',
        b'{"signature": {"token": "t"}, "event-data": []}',
        b'{"event-data": {"event": "complained"}}',
        b'{"signature": {"token": 5}, "event-data": {}}',
    ],
)
def test_malformed_body_is_400(body: bytes) -> None:
    with pytest.raises(PayloadInvalid) as exc:
        make_parser().parse(body)
    assert exc.value.status == 400


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"recipient": None}, "recipient"),
        ({"recipient": "not-an-address"}, "Not a valid email"),
        ({"timestamp": "later"}, "timestamp"),
        ({"event": None}, "event"),
        ({"severity": None}, "without a known severity"),
        ({"severity": "sometimes"}, "without a known severity"),
    ],
)
def test_invalid_event_is_quarantined_with_a_reason(change: dict[str, Any], why: str) -> None:
    doc = orjson.loads(signed_case("failed_permanent"))
    doc["event-data"].update(change)
    result = make_parser().parse(orjson.dumps(doc))
    assert result.events == []
    [quarantined] = result.quarantined
    assert why in quarantined.reason
    assert quarantined.raw == {"signature": {"token": TOKEN}, "event-data": doc["event-data"]}


@pytest.mark.parametrize(
    "change",
    [{"message": "not an object"}, {"delivery-status": None}, {"message": {"headers": None}}],
)
def test_metadata_of_an_unexpected_shape_does_not_lose_the_event(change: dict[str, Any]) -> None:
    """Only the address, time and classification must be right; the rest is best effort."""
    doc = orjson.loads(signed_case("failed_permanent"))
    doc["event-data"].update(change)
    [event] = make_parser().parse(orjson.dumps(doc)).events
    assert event.kind == Kind.HARD_BOUNCE


@pytest.mark.parametrize(
    ("reason", "kind"),
    [
        ("suppress-bounce", Kind.HARD_BOUNCE),
        ("suppress-unsubscribe", Kind.UNSUBSCRIBE),
        ("suppress-complaint", Kind.SPAM_COMPLAINT),
    ],
)
@pytest.mark.parametrize("severity", ["permanent", "temporary", None])
def test_a_refusal_by_a_suppression_list_suppresses_as_its_list_whatever_the_severity(
    reason: str, kind: Kind, severity: str | None
) -> None:
    """Mailgun did not send because the address is on one of its suppression lists: the list
    decides the kind, and the severity (or its absence) does not make it a counted bounce."""
    data = orjson.loads(payload("mailgun", "failed_suppress_bounce"))["event-data"]
    data = {**data, "reason": reason, "severity": severity}
    [event] = make_parser().parse(mailgun_body(data, KEY, NOW)).events
    assert (event.email, event.kind) == ("bounced.before@example.com", kind)
    assert event.reason == "Not delivering to previously bounced address"


def test_a_previous_bounce_refusal_is_a_hard_bounce_with_mailgun_reason() -> None:
    body = signed_case("failed_suppress_bounce")
    parser = make_parser()
    parser.verify(request(body))
    [event] = parser.parse(body).events
    assert (event.kind, event.smtp_code) == (Kind.HARD_BOUNCE, "605")
    assert event.reason == "Not delivering to previously bounced address"


def test_a_receiving_server_refusal_still_follows_its_severity() -> None:
    [event] = make_parser().parse(signed_case("failed_temporary")).events
    assert event.kind == Kind.SOFT_BOUNCE


# -- legacy form posts ---------------------------------------------------------------------------


def legacy_fields(case: str) -> list[list[str]]:
    fields: list[list[str]] = orjson.loads(payload("mailgun", case))["legacy-form"]
    return fields


def legacy(case: str, key: str = KEY, timestamp: int = NOW, token: str = TOKEN) -> InboundRequest:
    return mailgun_legacy_request(legacy_fields(case), key, timestamp, token)


@pytest.mark.parametrize(
    ("case", "kind"),
    [
        ("legacy_bounced", Kind.HARD_BOUNCE),
        ("legacy_dropped_old", Kind.SOFT_BOUNCE),
        ("legacy_dropped_hardfail", Kind.HARD_BOUNCE),
        ("legacy_dropped_complained", Kind.SPAM_COMPLAINT),
        ("legacy_complained", Kind.SPAM_COMPLAINT),
        ("legacy_unsubscribed", Kind.UNSUBSCRIBE),
    ],
)
def test_legacy_posts_are_verified_and_parsed(case: str, kind: Kind) -> None:
    req = legacy(case)
    parser = make_parser()
    parser.verify(req)
    result = parser.parse_request(req)
    [event] = result.events
    assert event.kind == kind
    assert event.key == f"mailgun:{TOKEN}"  # keyed like a JSON post: by the signed token
    assert event.occurred_at == NOW  # a legacy post's only time is its signed timestamp
    assert event.raw["signature"] == {"token": TOKEN, "timestamp": str(NOW)}
    assert parser.parse_item(orjson.loads(orjson.dumps(event.raw))).events == [event]
    assert result.quarantined == [] and result.ignored == Counter()


def test_legacy_bounce_carries_its_details() -> None:
    [event] = make_parser().parse_request(legacy("legacy_bounced")).events
    assert event.email == "alice@example.com"
    assert event.message_id == "20130503182626.18666.16540@mg.example.com"
    assert event.smtp_code == "550"
    assert event.reason is not None and event.reason.startswith("5.1.1 The email account")
    # a user variable named like an event field comes after Mailgun's own value
    assert event.raw["legacy"]["event"] == "bounced"
    assert "my_var_1" not in event.raw["legacy"]


def test_legacy_delivered_is_counted_not_returned() -> None:
    result = make_parser().parse_request(legacy("legacy_delivered"))
    assert result.events == [] and result.ignored == Counter(delivered=1)


def test_legacy_post_is_read_without_its_content_type() -> None:
    """A body kept in the quarantine comes back without headers: it is still read as a form."""
    req = legacy("legacy_unsubscribed")
    [event] = make_parser().parse(req.body).events
    assert event.kind == Kind.UNSUBSCRIBE and event.message_id is not None


def test_legacy_multipart_post_with_an_attachment_is_verified_and_parsed() -> None:
    """Bounce, drop and complaint posts carrying the ESP's attachment are multipart."""
    signed = sign_mailgun(KEY, NOW, TOKEN)
    fields = [*legacy_fields("legacy_complained"), *signed.items()]
    boundary = "mailgun-test-boundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="attachment-1"; '
        f'filename="report.eml"\r\nContent-Type: message/rfc822\r\n\r\n'.encode()
        + b"\xff\xfe not text \r\n"
    )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    parser = make_parser()
    req = request(body, headers)
    parser.verify(req)
    assert parser.replay_nonce(req) == f"{NOW}:{TOKEN}"
    [event] = parser.parse_request(req).events
    assert (event.kind, event.email) == (Kind.SPAM_COMPLAINT, "frank@example.com")
    assert parser.kept_headers(req.headers) == headers  # the boundary, to read it again


def test_legacy_signature_fields_take_mailguns_value_after_a_user_variable() -> None:
    """A user variable named token comes first; Mailgun's signed token is the last value."""
    req = mailgun_legacy_request(
        [["token", "user-variable"], *legacy_fields("legacy_bounced")], KEY, NOW, TOKEN
    )
    parser = make_parser()
    parser.verify(req)
    assert parser.replay_nonce(req) == f"{NOW}:{TOKEN}"
    assert parser.parse_request(req).events[0].key == f"mailgun:{TOKEN}"


@pytest.mark.parametrize(
    "change",
    [
        {"signature": "ab" * 32},
        {"token": "x" * 50},
        {"timestamp": str(NOW + 1)},
        {"timestamp": "yesterday"},
        {"signature": ""},
    ],
)
def test_legacy_post_with_a_bad_signature_is_401(change: dict[str, str]) -> None:
    signed = {**sign_mailgun(KEY, NOW, TOKEN), **change}
    fields = [(k, v) for k, v in legacy_fields("legacy_bounced")] + list(signed.items())
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    with pytest.raises(SignatureInvalid) as exc:
        make_parser().verify(request(urlencode(fields).encode(), headers))
    assert exc.value.status == 401


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"event=bounced&recipient=a%40example.com", "application/x-www-form-urlencoded"),
        (b"\xff=\xfe", "application/x-www-form-urlencoded"),
        (b"--x\r\nbroken", "multipart/form-data; boundary=x"),
        (b"a=b", "multipart/form-data"),
    ],
)
def test_legacy_post_without_a_readable_signature_is_401(body: bytes, content_type: str) -> None:
    with pytest.raises(SignatureInvalid):
        make_parser().verify(request(body, {"Content-Type": content_type}))


def test_stale_legacy_post_is_refused() -> None:
    with pytest.raises(SignatureInvalid, match="skew"):
        make_parser().verify(legacy("legacy_bounced", timestamp=NOW - 301))


@pytest.mark.parametrize(
    ("change", "why"),
    [({"recipient": "not-an-address"}, "Not a valid email"), ({"recipient": None}, "recipient")],
)
def test_invalid_legacy_event_is_quarantined_and_replays(change: dict[str, Any], why: str) -> None:
    fields = [[k, v] for k, v in legacy_fields("legacy_bounced") if k != "recipient"]
    if change["recipient"] is not None:
        fields.append(["recipient", change["recipient"]])
    req = mailgun_legacy_request(fields, KEY, NOW, TOKEN)
    parser = make_parser()
    parser.verify(req)
    result = parser.parse_request(req)
    [bad] = result.quarantined
    assert why in bad.reason and result.events == []
    [again] = parser.parse_item(orjson.loads(orjson.dumps(bad.raw))).quarantined
    assert (again.reason, again.raw) == (bad.reason, bad.raw)


@pytest.mark.parametrize(
    "raw",
    [
        {"legacy": {"event": "bounced"}, "signature": {"token": TOKEN}},
        {"legacy": {"event": 5}, "signature": {"token": TOKEN, "timestamp": "1"}},
        {"legacy": [], "signature": {"token": TOKEN, "timestamp": "1"}},
    ],
)
def test_a_legacy_item_without_what_keys_it_is_payload_invalid(raw: dict[str, Any]) -> None:
    with pytest.raises(PayloadInvalid):
        make_parser().parse_item(raw)


LEGACY_NAMES = st.sampled_from(
    ["event", "recipient", "code", "reason", "description", "error", "notification", "Message-Id",
     "message-headers", "token", "timestamp", "signature", "my_var"]
)  # fmt: skip
LEGACY_VALUES = st.one_of(
    st.sampled_from(["bounced", "dropped", "complained", "unsubscribed", "delivered", "old"]),
    st.sampled_from(["hardfail", "605", "607", "a@example.com", "[]", '[["Message-Id", 5]]']),
    st.text(max_size=30),
)


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(fields=st.lists(st.tuples(LEGACY_NAMES, LEGACY_VALUES), max_size=12))
def test_any_signed_legacy_post_gets_a_clear_answer(fields: list[tuple[str, str]]) -> None:
    """Whatever fields a verified legacy post holds: a result or a 400, and each event or
    quarantined item it yields replays to one outcome."""
    parser = make_parser()
    req = mailgun_legacy_request(fields, KEY, NOW, TOKEN)
    parser.verify(req)
    try:
        result = parser.parse_request(req)
    except PayloadInvalid:
        return
    assert len(result.events) + sum(result.ignored.values()) + len(result.quarantined) == 1
    for raw in [*(e.raw for e in result.events), *(q.raw for q in result.quarantined)]:
        again = parser.parse_item(orjson.loads(orjson.dumps(raw)))
        assert len(again.events) + sum(again.ignored.values()) + len(again.quarantined) == 1


def test_legacy_signature_is_accepted_once_through_the_app(
    make_settings: SettingsFactory, redis_conn: redis.Redis
) -> None:
    client = _mailgun_app(make_settings)
    req = mailgun_legacy_request(legacy_fields("legacy_bounced"), KEY)
    headers = headers_of(req)
    assert client.post("/webhooks/mailgun", data=req.body, headers=headers).status_code == 200
    # the same signature with another recipient
    forged = req.body.replace(b"Alice%40Example.com", b"victim%40example.com")
    assert forged != req.body
    again = client.post("/webhooks/mailgun", data=forged, headers=headers)
    assert again.status_code == 401 and again.json is not None
    assert Queue(INGEST, connection=redis_conn, serializer=JSONSerializer).count == 1


# -- single use, through the app -----------------------------------------------------------------


class DroppingProxy:
    """A loopback TCP proxy in front of the test Redis that, while ``drop`` is set, cuts any
    connection whose command names ``EVALSHA`` (the ingest job write) instead of forwarding it:
    Redis lost between a request's nonce claim and its job write."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.drop = False
        self.dropped = 0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.server.getsockname()[1])
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            self.sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, outbound: bool) -> None:
        try:
            while data := source.recv(65536):
                if outbound and self.drop and b"EVALSHA" in data:
                    self.dropped += 1
                    break
                target.sendall(data)
        except OSError:
            pass
        for sock in (source, target):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self.server.close()
        for sock in self.sockets:
            sock.close()


def _mailgun_app(make_settings: SettingsFactory, **overrides: Any) -> FlaskClient:
    settings = make_settings(sources={"mailgun": ("mailgun", {"SIGNING_KEY": KEY})}, **overrides)
    return create_app(settings).test_client()


def _event(case: str, recipient: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(payload("mailgun", case))["event-data"]
    data["timestamp"] = float(int(time.time()))
    if recipient is not None:
        data["recipient"] = recipient
    return data


def _nonce_keys(conn: redis.Redis) -> list[bytes]:
    return list(conn.scan_iter(match="sw:nonce:*"))


def test_a_signature_is_accepted_once_even_with_other_event_data(
    make_settings: SettingsFactory, redis_conn: redis.Redis
) -> None:
    """A captured signature posted again with a victim's address in event-data is refused (401,
    with a reason) and queues nothing; so is an exact repeat."""
    client = _mailgun_app(make_settings)
    signature = sign_mailgun(KEY)
    genuine = {"signature": signature, "event-data": _event("complained")}
    forged = {"signature": signature, "event-data": _event("complained", "victim@example.com")}
    assert client.post("/webhooks/mailgun", json=genuine).status_code == 200
    jobs = Queue(INGEST, connection=redis_conn, serializer=JSONSerializer).count
    for body in (forged, genuine):
        response = client.post("/webhooks/mailgun", json=body)
        assert response.status_code == 401
        assert response.json is not None and response.json["error"] == "signature_invalid"
        assert "already used" in response.json["detail"]
    assert Queue(INGEST, connection=redis_conn, serializer=JSONSerializer).count == jobs == 1
    assert b"victim" not in b"".join(redis_conn.dump(k) or b"" for k in redis_conn.keys("rq:*"))


def test_a_signature_is_accepted_once_across_sources_sharing_a_key(
    make_settings: SettingsFactory, redis_conn: redis.Redis
) -> None:
    """Two paths for one Mailgun account share its signing key: what one accepted, the other
    refuses."""
    sources = {name: ("mailgun", {"SIGNING_KEY": KEY}) for name in ("mailgun", "mailgun_eu")}
    client = create_app(make_settings(sources=sources)).test_client()
    signature = sign_mailgun(KEY)
    body = {"signature": signature, "event-data": _event("complained")}
    assert client.post("/webhooks/mailgun", json=body).status_code == 200
    other = {"signature": signature, "event-data": _event("complained", "victim@example.com")}
    assert client.post("/webhooks/mailgun_eu", json=other).status_code == 401


def test_a_new_signature_for_the_same_event_is_accepted(
    make_settings: SettingsFactory, redis_conn: redis.Redis
) -> None:
    """A retry, signed again, is not a replay (the ledger dedupes its events by key)."""
    client = _mailgun_app(make_settings)
    data = _event("failed_permanent")
    for _ in range(2):
        body = {"signature": sign_mailgun(KEY), "event-data": data}
        assert client.post("/webhooks/mailgun", json=body).status_code == 200
    assert len(_nonce_keys(redis_conn)) == 2


def test_a_claim_is_kept_for_the_skew_window_only(
    make_settings: SettingsFactory, redis_conn: redis.Redis
) -> None:
    source = SourceConfig("mailgun", "mailgun", {"SIGNING_KEY": KEY}, signature_tolerance_s=120)
    client = create_app(make_settings().replace(sources={"mailgun": source})).test_client()
    body = {"signature": sign_mailgun(KEY), "event-data": _event("complained")}
    assert client.post("/webhooks/mailgun", json=body).status_code == 200
    [key] = _nonce_keys(redis_conn)
    assert 0 < redis_conn.ttl(key) <= 2 * 120 + 1
    assert TOKEN not in key.decode()  # hashed: fixed length, whatever the nonce is


def test_an_unverified_request_claims_nothing(
    make_settings: SettingsFactory, redis_conn: redis.Redis
) -> None:
    client = _mailgun_app(make_settings)
    signature = {**sign_mailgun(KEY), "signature": "ab" * 32}
    body = {"signature": signature, "event-data": _event("complained")}
    assert client.post("/webhooks/mailgun", json=body).status_code == 401
    assert _nonce_keys(redis_conn) == []


def test_a_job_that_cannot_be_written_releases_its_claim(
    make_settings: SettingsFactory, redis_server: RedisServer, redis_conn: redis.Redis
) -> None:
    """Redis is lost after the claim, before the job is written: 503 with Retry-After, and the
    claim is gone, so the same delivery sent again is accepted, not refused as a replay."""
    proxy = DroppingProxy(redis_server.port)
    try:
        client = _mailgun_app(make_settings, redis_url=f"redis://127.0.0.1:{proxy.port}/0")
        body = {"signature": sign_mailgun(KEY), "event-data": _event("complained")}
        proxy.drop = True
        response = client.post("/webhooks/mailgun", json=body)
        assert response.status_code == 503 and response.headers["Retry-After"] == "60"
        assert proxy.dropped == 1
        assert _nonce_keys(redis_conn) == []
        proxy.drop = False
        assert client.post("/webhooks/mailgun", json=body).status_code == 200
    finally:
        proxy.close()
    assert Queue(INGEST, connection=redis_conn, serializer=JSONSerializer).count == 1


def test_redis_unreachable_while_claiming_is_503(make_settings: SettingsFactory) -> None:
    client = _mailgun_app(make_settings, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    body = {"signature": sign_mailgun(KEY), "event-data": _event("complained")}
    response = client.post("/webhooks/mailgun", json=body)
    assert response.status_code == 503 and response.headers["Retry-After"] == "60"
    assert response.json is not None and response.json["error"] == "unavailable"


def test_redis_refusing_the_claim_is_503(
    make_settings: SettingsFactory, redis_conn: redis.Redis
) -> None:
    """Out of memory (noeviction): the write of the claim is refused; 503 with Retry-After, so
    Mailgun retries, never a 500."""
    client = _mailgun_app(make_settings)
    body = {"signature": sign_mailgun(KEY), "event-data": _event("complained")}
    limit = redis_conn.config_get("maxmemory")["maxmemory"]
    policy = redis_conn.config_get("maxmemory-policy")["maxmemory-policy"]
    assert limit is not None and policy is not None
    redis_conn.config_set("maxmemory-policy", "noeviction")
    redis_conn.config_set("maxmemory", 1)
    try:
        response = client.post("/webhooks/mailgun", json=body)
    finally:
        redis_conn.config_set("maxmemory", limit)
        redis_conn.config_set("maxmemory-policy", policy)
    assert response.status_code == 503 and response.headers["Retry-After"] == "60"
    assert response.json is not None and "OutOfMemory" in response.json["detail"]
    assert client.post("/webhooks/mailgun", json=body).status_code == 200
