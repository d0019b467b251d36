"""Mailgun: a body signed with the webhook signing key becomes at most one hygiene event."""

from __future__ import annotations

import hashlib
import hmac
from collections import Counter
from typing import Any

import orjson
import pytest

from syncworker.config import SourceConfig
from syncworker.errors import PayloadInvalid, SignatureInvalid
from syncworker.events import Kind
from syncworker.intake.esps.mailgun import MailgunParser
from tests.intake.signing import mailgun_body, payload, request, resign_mailgun, sign_mailgun

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
