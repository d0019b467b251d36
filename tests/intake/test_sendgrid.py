"""SendGrid: signed batches become hygiene events; forged or malformed requests are refused."""

from __future__ import annotations

import base64
from collections import Counter
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from syncworker.config import SourceConfig
from syncworker.errors import ConfigError, PayloadInvalid, SignatureInvalid
from syncworker.events import Kind, content_key
from syncworker.intake.esps.sendgrid import SendGridParser
from tests.intake.signing import (
    SENDGRID_SIGNATURE,
    SENDGRID_TIMESTAMP,
    payload,
    request,
    sendgrid_keypair,
    sendgrid_public_pem,
    sign_sendgrid,
)

NOW = 1_700_000_050
Keypair = tuple[ec.EllipticCurvePrivateKey, str]


@pytest.fixture(scope="module")
def current() -> Keypair:
    return sendgrid_keypair()


@pytest.fixture(scope="module")
def previous() -> Keypair:
    return sendgrid_keypair()


def make_parser(public_key: str, previous_key: str | None = None) -> SendGridParser:
    values = {"PUBLIC_KEY": public_key}
    if previous_key:
        values["PUBLIC_KEY_PREVIOUS"] = previous_key
    config = SourceConfig(name="sendgrid", esp="sendgrid", values=values)
    return SendGridParser(config, clock=lambda: NOW)


def signed(body: bytes, private: ec.EllipticCurvePrivateKey, timestamp: int = NOW) -> Any:
    return request(body, sign_sendgrid(body, private, timestamp))


def event(**fields: Any) -> dict[str, Any]:
    base = {"email": "someone@example.com", "timestamp": 1700000000, "sg_message_id": "m.1"}
    return {**base, **fields}


# -- events ------------------------------------------------------------------------------------


def test_batch_yields_hygiene_events_and_counts_the_rest(current: Keypair) -> None:
    body = payload("sendgrid", "batch")
    parser = make_parser(current[1])
    parser.verify(signed(body, current[0]))
    result = parser.parse(body)
    assert {e.email: e.kind for e in result.events} == {
        "hard.bounce@example.com": Kind.HARD_BOUNCE,
        "blocked@example.com": Kind.BLOCKED,
        "previously.bounced@example.com": Kind.HARD_BOUNCE,
        "previously.unsubscribed@example.com": Kind.UNSUBSCRIBE,
        "previous.complainer@example.com": Kind.SPAM_COMPLAINT,
        "complainer@example.com": Kind.SPAM_COMPLAINT,
        "unsubscriber@example.com": Kind.UNSUBSCRIBE,
        "group.leaver@example.com": Kind.UNSUBSCRIBE,
        "group.rejoiner@example.com": Kind.RESUBSCRIBE,
    }
    assert result.ignored == Counter(
        processed=1, deferred=1, delivered=1, open=1, click=1, dropped=1
    )
    assert result.quarantined == []


def test_bounce_event_carries_its_details(current: Keypair) -> None:
    body = payload("sendgrid", "batch")
    raw = next(e for e in orjson.loads(body) if e["email"] == "Hard.Bounce@Example.com")
    bounce = next(e for e in make_parser(current[1]).parse(body).events if e.smtp_code == "5.0.0")
    message_id = "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.000000000000000000001"
    assert bounce.email == "hard.bounce@example.com"
    assert (bounce.source, bounce.esp) == ("sendgrid", "sendgrid")
    assert bounce.occurred_at == 1700000005.0
    assert bounce.message_id == message_id
    assert bounce.reason == "500 unknown recipient"
    assert bounce.raw == raw
    assert bounce.key == content_key(
        "sendgrid", "hard.bounce@example.com", Kind.HARD_BOUNCE, 1700000005.0, message_id
    )


def test_group_unsubscribe_is_scoped_to_its_suppression_group(current: Keypair) -> None:
    events = make_parser(current[1]).parse(payload("sendgrid", "batch")).events
    by_email = {e.email: e for e in events}
    assert by_email["group.leaver@example.com"].list_id == "10"
    assert by_email["group.rejoiner@example.com"].list_id == "10"
    assert by_email["unsubscriber@example.com"].list_id is None


def test_single_event_delivery(current: Keypair) -> None:
    body = payload("sendgrid", "single")
    parser = make_parser(current[1])
    parser.verify(signed(body, current[0]))
    [bounce] = parser.parse(body).events
    assert (bounce.email, bounce.kind, bounce.smtp_code) == (
        "lone.bounce@example.com",
        Kind.HARD_BOUNCE,
        "5.1.1",
    )


@pytest.mark.parametrize(
    ("fields", "kind"),
    [
        ({"event": "bounce", "type": "bounce"}, Kind.HARD_BOUNCE),
        ({"event": "bounce", "type": "blocked"}, Kind.BLOCKED),
        ({"event": "bounce", "type": "expired"}, Kind.SOFT_BOUNCE),
        ({"event": "bounce"}, Kind.HARD_BOUNCE),
        ({"event": "dropped", "reason": "Bounced Address"}, Kind.HARD_BOUNCE),
        ({"event": "dropped", "reason": "Invalid"}, Kind.HARD_BOUNCE),
        ({"event": "dropped", "reason": "Unsubscribed Address"}, Kind.UNSUBSCRIBE),
        ({"event": "dropped", "reason": "Spam Reporting Address"}, Kind.SPAM_COMPLAINT),
        ({"event": "dropped", "reason": "Invalid SMTPAPI header"}, None),
        ({"event": "dropped", "reason": "Recipient List over Package Quota"}, None),
        ({"event": "deferred", "response": "400 try again later"}, None),
        ({"event": "spamreport"}, Kind.SPAM_COMPLAINT),
        ({"event": "unsubscribe"}, Kind.UNSUBSCRIBE),
        ({"event": "group_unsubscribe", "asm_group_id": 3}, Kind.UNSUBSCRIBE),
        ({"event": "group_resubscribe", "asm_group_id": 3}, Kind.RESUBSCRIBE),
        ({"event": "processed"}, None),
    ],
)
def test_event_code_table(current: Keypair, fields: dict[str, Any], kind: Kind | None) -> None:
    result = make_parser(current[1]).parse(orjson.dumps([event(**fields)]))
    assert [e.kind for e in result.events] == ([kind] if kind else [])
    assert result.ignored == (Counter() if kind else Counter({fields["event"]: 1}))


def test_deferred_is_not_a_bounce(current: Keypair) -> None:
    """A deferral is a delay SendGrid retries; it says nothing bad about the address yet."""
    result = make_parser(current[1]).parse(orjson.dumps([event(event="deferred", attempt="5")]))
    assert result.events == [] and result.ignored["deferred"] == 1


def test_unknown_event_code_is_ignored(current: Keypair) -> None:
    result = make_parser(current[1]).parse(orjson.dumps([event(event="account_status_change")]))
    assert result.events == [] and result.ignored == Counter(account_status_change=1)


def test_crlf_separated_batch_verifies_on_the_raw_bytes(current: Keypair) -> None:
    """SendGrid separates events with CRLF; re-serialized JSON would not match the signature."""
    events = orjson.loads(payload("sendgrid", "batch"))
    body = b"[" + b",\r\n".join(orjson.dumps(e) for e in events) + b"]\r\n"
    parser = make_parser(current[1])
    parser.verify(signed(body, current[0]))
    assert len(parser.parse(body).events) == 9


# -- dedupe keys ---------------------------------------------------------------------------------


def test_keys_are_stable_across_redeliveries_even_when_sg_event_id_changes(
    current: Keypair,
) -> None:
    parser = make_parser(current[1])
    first = parser.parse(orjson.dumps([event(event="spamreport", sg_event_id="a")]))
    retry = parser.parse(orjson.dumps([event(event="spamreport", sg_event_id="b")]))
    assert [e.key for e in first.events] == [e.key for e in retry.events]


def test_keys_are_distinct_for_distinct_events(current: Keypair) -> None:
    parser = make_parser(current[1])
    body = payload("sendgrid", "batch")
    keys = [e.key for e in parser.parse(body).events]
    assert len(set(keys)) == len(keys)
    assert keys == [e.key for e in parser.parse(body).events]
    other_message = parser.parse(orjson.dumps([event(event="spamreport", sg_message_id="m.2")]))
    same_message = parser.parse(orjson.dumps([event(event="spamreport")]))
    assert other_message.events[0].key != same_message.events[0].key


# -- verification --------------------------------------------------------------------------------


def test_previous_key_is_accepted_during_rotation(current: Keypair, previous: Keypair) -> None:
    body = payload("sendgrid", "single")
    parser = make_parser(current[1], previous[1])
    parser.verify(signed(body, current[0]))
    parser.verify(signed(body, previous[0]))


def test_pem_public_key_is_accepted(current: Keypair) -> None:
    body = payload("sendgrid", "single")
    make_parser(sendgrid_public_pem(current[0])).verify(signed(body, current[0]))


def test_signature_by_another_key_is_refused(current: Keypair, previous: Keypair) -> None:
    body = payload("sendgrid", "single")
    with pytest.raises(SignatureInvalid) as exc:
        make_parser(current[1]).verify(signed(body, previous[0]))
    assert exc.value.status == 401


def test_tampered_body_is_refused(current: Keypair) -> None:
    body = payload("sendgrid", "single")
    headers = sign_sendgrid(body, current[0], NOW)
    forged = body.replace(b"lone.bounce", b"victim")
    with pytest.raises(SignatureInvalid):
        make_parser(current[1]).verify(request(forged, headers))


def test_tampered_timestamp_is_refused(current: Keypair) -> None:
    body = payload("sendgrid", "single")
    headers = {**sign_sendgrid(body, current[0], NOW), SENDGRID_TIMESTAMP: str(NOW + 1)}
    with pytest.raises(SignatureInvalid):
        make_parser(current[1]).verify(request(body, headers))


@pytest.mark.parametrize("skew", [-301, 301, -(10**6)])
def test_timestamp_outside_the_tolerance_is_refused(current: Keypair, skew: int) -> None:
    body = payload("sendgrid", "single")
    with pytest.raises(SignatureInvalid, match="skew"):
        make_parser(current[1]).verify(signed(body, current[0], NOW + skew))


def test_timestamp_inside_the_tolerance_is_accepted(current: Keypair) -> None:
    body = payload("sendgrid", "single")
    make_parser(current[1]).verify(signed(body, current[0], NOW - 299))


@pytest.mark.parametrize(
    "change",
    [
        {SENDGRID_SIGNATURE: "%%% not base64 %%%"},
        {SENDGRID_SIGNATURE: base64.b64encode(b"short").decode()},
        {SENDGRID_SIGNATURE: base64.b64encode(b"\x30" * 4000).decode()},
        {SENDGRID_SIGNATURE: "ÄÖÜ"},
        {SENDGRID_SIGNATURE: "\udcff"},
        {SENDGRID_SIGNATURE: ""},
        {SENDGRID_TIMESTAMP: "not-a-number"},
        {SENDGRID_TIMESTAMP: "1e9"},
        {SENDGRID_TIMESTAMP: "١٧٠٠٠٠٠٠٥٠"},
        {SENDGRID_TIMESTAMP: ""},
    ],
)
def test_malformed_signature_headers_are_401(current: Keypair, change: dict[str, str]) -> None:
    body = payload("sendgrid", "single")
    headers = {**sign_sendgrid(body, current[0], NOW), **change}
    with pytest.raises(SignatureInvalid) as exc:
        make_parser(current[1]).verify(request(body, headers))
    assert exc.value.status == 401


@pytest.mark.parametrize("missing", [SENDGRID_SIGNATURE, SENDGRID_TIMESTAMP])
def test_missing_signature_header_is_401(current: Keypair, missing: str) -> None:
    body = payload("sendgrid", "single")
    headers = sign_sendgrid(body, current[0], NOW)
    del headers[missing]
    with pytest.raises(SignatureInvalid):
        make_parser(current[1]).verify(request(body, headers))


@pytest.mark.parametrize("bad", ["bm90IGEga2V5", "-----BEGIN PUBLIC KEY-----\nxx\n-----END"])
def test_unloadable_public_key_stops_startup(bad: str) -> None:
    with pytest.raises(ConfigError, match="SYNCWORKER_SENDGRID_PUBLIC_KEY_PREVIOUS"):
        make_parser(sendgrid_keypair()[1], bad)


def test_public_key_on_another_curve_stops_startup() -> None:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    der = (
        ec.generate_private_key(ec.SECP384R1())
        .public_key()
        .public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(ConfigError, match="P-256"):
        make_parser(base64.b64encode(der).decode())


# -- malformed bodies and bad events -------------------------------------------------------------


@pytest.mark.parametrize(
    "body", [b"", b"   ", b"not json", b"[", b"null", b"{}", b'{"event": "bounce"}', b"\xff\xfe"]
)
def test_malformed_body_is_400(current: Keypair, body: bytes) -> None:
    with pytest.raises(PayloadInvalid) as exc:
        make_parser(current[1]).parse(body)
    assert exc.value.status == 400


def test_empty_batch_yields_nothing(current: Keypair) -> None:
    result = make_parser(current[1]).parse(b"[]")
    assert (result.events, result.ignored, result.quarantined) == ([], Counter(), [])


def test_invalid_events_are_quarantined_with_a_reason(current: Keypair) -> None:
    result = make_parser(current[1]).parse(payload("sendgrid", "invalid_events"))
    assert [e.email for e in result.events] == ["fine@example.com"]
    reasons = [q.reason for q in result.quarantined]
    assert len(reasons) == 5
    assert "email" in reasons[0] and "Missing data" in reasons[0]
    assert "Not a valid email address" in reasons[1]
    assert "timestamp" in reasons[2]
    assert reasons[3] == "event code missing"
    assert reasons[4] == "event is not an object"
    assert result.quarantined[1].raw["email"] == "not an email address"


@pytest.mark.parametrize("timestamp", [True, "soon", 1e20, -5, None])
def test_event_with_an_unusable_timestamp_is_quarantined(current: Keypair, timestamp: Any) -> None:
    result = make_parser(current[1]).parse(
        orjson.dumps([event(event="bounce", timestamp=timestamp)])
    )
    assert result.events == [] and len(result.quarantined) == 1


def test_metadata_of_an_unexpected_type_does_not_lose_the_event(current: Keypair) -> None:
    """ESPs change field types without notice; only the address, time and code must be right."""
    body = orjson.dumps([event(event="bounce", status=550, sg_message_id=["x"], asm_group_id={})])
    [bounce] = make_parser(current[1]).parse(body).events
    assert (bounce.smtp_code, bounce.message_id) == ("550", None)


def test_a_drop_by_a_suppression_list_suppresses_with_sendgrid_reason(current: Keypair) -> None:
    """`dropped` for an address on one of SendGrid's suppression lists suppresses at once as
    that list; a receiving server's block (`bounce` type blocked) stays a counted block."""
    result = make_parser(current[1]).parse(payload("sendgrid", "batch"))
    found = {e.email: (e.kind, e.reason) for e in result.events}
    assert found["previously.bounced@example.com"] == (Kind.HARD_BOUNCE, "Bounced Address")
    assert found["previously.unsubscribed@example.com"] == (
        Kind.UNSUBSCRIBE,
        "Unsubscribed Address",
    )
    assert found["previous.complainer@example.com"] == (
        Kind.SPAM_COMPLAINT,
        "Spam Reporting Address",
    )
    assert found["blocked@example.com"] == (
        Kind.BLOCKED,
        "550 5.7.1 Service unavailable; client host blocked",
    )
