"""Mailtrap: HMAC-signed batches (JSON or JSON Lines) become hygiene events keyed by event_id."""

from __future__ import annotations

import hashlib
import hmac
from collections import Counter
from typing import Any

import orjson
import pytest

from syncworker.config import SourceConfig
from syncworker.errors import PayloadInvalid, SignatureInvalid
from syncworker.events import Kind, content_key
from syncworker.intake.contract import ParseResult
from syncworker.intake.esps.mailtrap import MailtrapParser
from tests.intake.signers.mailtrap import SIGNATURE, sign_mailtrap
from tests.intake.signing import payload, request

SECRET, OLD_SECRET = "a3f1c0de9b8e7d6c5b4a39281706f5e4", "0f1e2d3c4b5a69788796a5b4c3d2e1f0"


def make_parser(**values: str) -> MailtrapParser:
    config = SourceConfig(
        name="mailtrap", esp="mailtrap", values={"SIGNING_SECRET": SECRET, **values}
    )
    return MailtrapParser(config)


def verified(body: bytes) -> ParseResult:
    parser = make_parser()
    parser.verify(request(body, sign_mailtrap(body, SECRET)))
    return parser.parse(body)


def event(**fields: Any) -> dict[str, Any]:
    base = {
        "event": "bounce",
        "timestamp": 1728669700,
        "sending_stream": "transactional",
        "message_id": "1df37d17-0286-4d8b-8edf-bc4ec5be86e6",
        "email": "someone@example.com",
        "event_id": "bede7236-2284-43d6-a953-1fdcafd0fdbc",
        "sending_domain_name": "examplesender.example.com",
    }
    return {**base, **fields}


def parse_one(**fields: Any) -> ParseResult:
    return make_parser().parse(orjson.dumps({"events": [event(**fields)]}))


# -- events ------------------------------------------------------------------------------------


def test_batch_yields_hygiene_events_and_counts_the_rest() -> None:
    result = verified(payload("mailtrap", "batch"))
    assert {e.email: e.kind for e in result.events} == {
        "no.such.user@example.com": Kind.HARD_BOUNCE,
        "strict.filter@example.com": Kind.BLOCKED,
        "greylisted@example.com": Kind.SOFT_BOUNCE,
        "complainer@example.com": Kind.SPAM_COMPLAINT,
        "leaver@example.com": Kind.UNSUBSCRIBE,
        "suppressed@example.com": Kind.UNSUBSCRIBE,
    }
    assert result.ignored == Counter(reject=1, suspension=1, delivery=1, open=1, click=1)
    assert result.quarantined == []


def test_bounce_event_carries_its_details() -> None:
    body = payload("mailtrap", "batch")
    [bounce] = [e for e in verified(body).events if e.kind == Kind.HARD_BOUNCE]
    assert bounce.email == "no.such.user@example.com"
    assert (bounce.source, bounce.esp) == ("mailtrap", "mailtrap")
    assert bounce.key == "mailtrap:bede7236-2284-43d6-a953-1fdcafd0fd01"
    assert bounce.occurred_at == 1728669701.0
    assert bounce.message_id == "1df37d17-0286-4d8b-8edf-bc4ec5be8601"
    assert (bounce.smtp_code, bounce.reason) == (
        "550",
        "550 5.1.1 The email account that you tried to reach does not exist.",
    )
    assert bounce.raw == orjson.loads(body)["events"][0]


@pytest.mark.parametrize(
    ("fields", "kind"),
    [
        ({"event": "bounce", "bounce_category": "invalid_recipient"}, Kind.HARD_BOUNCE),
        ({"event": "bounce"}, Kind.HARD_BOUNCE),
        ({"event": "bounce", "bounce_category": "spam"}, Kind.BLOCKED),
        ({"event": "bounce", "bounce_category": "Spam"}, Kind.BLOCKED),
        ({"event": "soft bounce", "bounce_category": "greylisting"}, Kind.SOFT_BOUNCE),
        ({"event": "soft bounce", "bounce_category": "spam"}, Kind.SOFT_BOUNCE),
        ({"event": "spam"}, Kind.SPAM_COMPLAINT),
        ({"event": "unsubscribe"}, Kind.UNSUBSCRIBE),
        (
            {"event": "reject", "reason": "Recipient in suppression list. Reason: unsubscription"},
            Kind.UNSUBSCRIBE,
        ),
        ({"event": "reject", "reason": "Domain was not verified in time"}, None),
        ({"event": "reject"}, None),
        ({"event": "suspension", "reason": "Your account has reached its daily limit."}, None),
        ({"event": "delivery"}, None),
        ({"event": "open"}, None),
        ({"event": "click", "url": "https://example.com"}, None),
        ({"event": "activity_log.user.login"}, None),
    ],
)
def test_event_code_table(fields: dict[str, Any], kind: Kind | None) -> None:
    result = parse_one(**fields)
    assert [e.kind for e in result.events] == ([kind] if kind else [])
    assert result.ignored == (Counter() if kind else Counter({fields["event"]: 1}))


def test_suspension_is_about_the_sender_not_the_address() -> None:
    """A suspended message waits for the sending domain; it says nothing about the recipient."""
    result = parse_one(event="suspension", reason="Email was sent from an unverified domain")
    assert result.events == [] and result.ignored == Counter(suspension=1)


def test_json_lines_format_is_accepted_on_the_same_signature() -> None:
    events = orjson.loads(payload("mailtrap", "batch"))["events"]
    body = b"\n".join(orjson.dumps(e) for e in events) + b"\n"
    result = verified(body)
    assert len(result.events) == 6 and sum(result.ignored.values()) == 5


def test_single_json_line_is_one_event() -> None:
    [bounce] = verified(orjson.dumps(event()) + b"\r\n").events
    assert bounce.kind == Kind.HARD_BOUNCE


def test_metadata_of_an_unexpected_type_does_not_lose_the_event() -> None:
    result = parse_one(response_code="550", response=["x"], message_id=7, bounce_category=1)
    [bounce] = result.events
    assert (bounce.smtp_code, bounce.reason, bounce.message_id) == ("550", None, "7")


# -- malformed bodies and bad events -------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b" \n ",
        b"not json",
        b"[",
        b"null",
        b"[]",
        b'"events"',
        b'{"events": null}',
        b'{"events": {}}',
        b'{"event": "bounce"}\nnot json',
        b"\xff\xfe",
    ],
)
def test_malformed_body_is_400(body: bytes) -> None:
    with pytest.raises(PayloadInvalid) as exc:
        make_parser().parse(body)
    assert exc.value.status == 400


def test_empty_batch_yields_nothing() -> None:
    result = verified(b'{"events": []}')
    assert (result.events, result.ignored, result.quarantined) == ([], Counter(), [])


def test_invalid_events_are_quarantined_with_a_reason() -> None:
    result = verified(payload("mailtrap", "invalid_events"))
    assert [e.email for e in result.events] == ["fine@example.com"]
    reasons = [q.reason for q in result.quarantined]
    assert len(reasons) == 5
    assert "email" in reasons[0] and "Missing data" in reasons[0]
    assert "Not a valid email address" in reasons[1]
    assert "timestamp" in reasons[2]
    assert reasons[3:] == ["event code missing", "event is not an object"]
    assert result.quarantined[1].raw["email"] == "not an email address"


@pytest.mark.parametrize("timestamp", [True, "soon", 1e20, -5, None])
def test_event_with_an_unusable_timestamp_is_quarantined(timestamp: Any) -> None:
    result = parse_one(timestamp=timestamp)
    assert result.events == [] and len(result.quarantined) == 1


# -- dedupe keys -------------------------------------------------------------------------------


def test_keys_are_stable_across_redeliveries() -> None:
    body = payload("mailtrap", "batch")
    keys = [e.key for e in verified(body).events]
    assert keys == [e.key for e in verified(body).events]
    assert len(set(keys)) == len(keys)


def test_event_without_an_id_gets_a_content_key() -> None:
    body = orjson.dumps({"events": [{k: v for k, v in event().items() if k != "event_id"}]})
    [bounce] = make_parser().parse(body).events
    assert bounce.key == content_key(
        "mailtrap",
        "someone@example.com",
        Kind.HARD_BOUNCE,
        1728669700.0,
        "1df37d17-0286-4d8b-8edf-bc4ec5be86e6",
    )


# -- verification --------------------------------------------------------------------------------


def test_signature_matches_mailtraps_published_test_vector() -> None:
    """The cross-SDK fixture of Mailtrap's official SDKs (mailtrap-ruby spec/mailtrap/webhooks)."""
    body = (
        b'{"event":"delivery","sending_stream":"transactional","category":"welcome",'
        b'"message_id":"a8b1d8f6-1f8d-4a3c-9b2e-1a2b3c4d5e6f",'
        b'"email":"recipient@example.com",'
        b'"event_id":"f1e2d3c4-b5a6-7890-1234-567890abcdef",'
        b'"timestamp":1716070000}'
    )
    headers = {SIGNATURE: "6d262e2611cd09be1f948382b5c611d63b0e585c4c9c5e40139d6ac3876d5433"}
    make_parser(SIGNING_SECRET="8d9a3c0e7f5b2d4a6c1e9f8b3a7d5c2e").verify(request(body, headers))


def test_signature_is_checked_on_the_raw_bytes() -> None:
    body = payload("mailtrap", "batch")
    reserialized = orjson.dumps(orjson.loads(body))
    with pytest.raises(SignatureInvalid):
        make_parser().verify(request(reserialized, sign_mailtrap(body, SECRET)))


def test_previous_secret_is_accepted_during_rotation() -> None:
    body = payload("mailtrap", "batch")
    parser = make_parser(SIGNING_SECRET_PREVIOUS=OLD_SECRET)
    parser.verify(request(body, sign_mailtrap(body, SECRET)))
    parser.verify(request(body, sign_mailtrap(body, OLD_SECRET)))


def test_uppercase_hex_is_accepted() -> None:
    body = payload("mailtrap", "batch")
    headers = {SIGNATURE: sign_mailtrap(body, SECRET)[SIGNATURE].upper()}
    make_parser().verify(request(body, headers))


def test_signature_with_another_secret_is_refused() -> None:
    body = payload("mailtrap", "batch")
    with pytest.raises(SignatureInvalid) as exc:
        make_parser().verify(request(body, sign_mailtrap(body, OLD_SECRET)))
    assert exc.value.status == 401


def test_tampered_body_is_refused() -> None:
    body = payload("mailtrap", "batch")
    forged = body.replace(b"No.Such.User", b"victim")
    with pytest.raises(SignatureInvalid):
        make_parser().verify(request(forged, sign_mailtrap(body, SECRET)))


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "zz" * 32,
        "abc",
        "sha256=" + hmac.new(SECRET.encode(), b"{}", hashlib.sha256).hexdigest(),
        "ÄÖÜ",
        "\udcff",
    ],
)
def test_malformed_signature_header_is_401(value: str) -> None:
    with pytest.raises(SignatureInvalid) as exc:
        make_parser().verify(request(b"{}", {SIGNATURE: value}))
    assert exc.value.status == 401


def test_missing_signature_header_is_401() -> None:
    with pytest.raises(SignatureInvalid, match="missing"):
        make_parser().verify(request(payload("mailtrap", "batch"), {}))


@pytest.mark.parametrize(
    ("entry", "kind"),
    [
        ("unsubscription", Kind.UNSUBSCRIBE),
        ("spam complaint", Kind.SPAM_COMPLAINT),
        ("hard bounce", Kind.HARD_BOUNCE),
        ("manual import", Kind.UNSUBSCRIBE),
        ("some reason added later", Kind.HARD_BOUNCE),
    ],
)
def test_a_reject_by_the_suppression_list_suppresses_as_its_entry_reason(
    entry: str, kind: Kind
) -> None:
    """Mailtrap names why the address is on its suppression list; that reason decides the kind,
    and the reject's text is kept as the event's reason."""
    reason = f"Recipient in suppression list. Reason: {entry}"
    [event] = parse_one(event="reject", reason=reason).events
    assert (event.kind, event.reason) == (kind, reason)


def test_a_receiving_server_policy_bounce_stays_a_block() -> None:
    [event] = parse_one(
        event="bounce",
        response="[CS01] Message rejected due to local policy",
        response_code=555,
        bounce_category="spam",
    ).events
    assert (event.kind, event.reason) == (
        Kind.BLOCKED,
        "[CS01] Message rejected due to local policy",
    )
