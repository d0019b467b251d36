"""MailerSend: a body signed with the webhook's signing secret becomes at most one hygiene event."""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncworker.config import SourceConfig
from syncworker.errors import PayloadInvalid, SignatureInvalid
from syncworker.events import Kind, content_key
from syncworker.intake.esps.mailersend import TEST_SECRET, MailerSendParser
from tests.intake.signers.mailersend import signature
from tests.intake.signing import payload, request

SECRET = "Wk6bPz3nQ0aVr8sLxT2yHcF5uJ9eM1dG"
OLD_SECRET = "old-signing-secret-0123456789abcdef"


def make_parser(secret: str = SECRET, previous: str | None = None) -> MailerSendParser:
    values = {
        "SIGNING_SECRET": secret,
        **({"SIGNING_SECRET_PREVIOUS": previous} if previous else {}),
    }
    return MailerSendParser(SourceConfig(name="mailersend", esp="mailersend", values=values))


def edited(case: str, **data: Any) -> bytes:
    """A stored payload with some of its ``data`` fields replaced (None removes one)."""
    doc = orjson.loads(payload("mailersend", case))
    doc["data"].update(data)
    doc["data"] = {k: v for k, v in doc["data"].items() if v is not None}
    return orjson.dumps(doc)


# -- events ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "email", "kind"),
    [
        ("hard_bounced", "alice@example.com", Kind.HARD_BOUNCE),
        ("soft_bounced", "bob@example.com", Kind.SOFT_BOUNCE),
        ("spam_complaint", "carol@example.com", Kind.SPAM_COMPLAINT),
        ("unsubscribed", "dave@example.com", Kind.UNSUBSCRIBE),
        ("v1_hard_bounced", "invalid@example.com", Kind.HARD_BOUNCE),
        ("v1_unsubscribed", "recipient@example.com", Kind.UNSUBSCRIBE),
    ],
)
def test_hygiene_events_by_case(case: str, email: str, kind: Kind) -> None:
    body = payload("mailersend", case)
    parser = make_parser()
    parser.verify(request(body, signature(body, SECRET)))
    result = parser.parse(body)
    [event] = result.events
    assert (event.email, event.kind) == (email, kind)
    assert event.key == f"mailersend:{orjson.loads(body)['data']['id']}"
    assert (event.source, event.esp) == ("mailersend", "mailersend")
    assert event.raw == orjson.loads(body)
    assert result.ignored == Counter() and result.quarantined == []


def test_webhooks_2_details() -> None:
    """2.0 has no activity time of its own: the top-level created_at is the event's."""
    [event] = make_parser().parse(payload("mailersend", "hard_bounced")).events
    assert event.occurred_at == 1754429042.0
    assert event.message_id == "6892766ae78995a317577aa1"
    assert event.reason == "550 5.1.1 The email account that you tried to reach does not exist"


def test_webhooks_1_details() -> None:
    """1.0 nests recipient and message, keeps the reason in morph and the activity's own time."""
    [event] = make_parser().parse(payload("mailersend", "v1_hard_bounced")).events
    assert event.occurred_at == 1677534493.593
    assert event.message_id == "63fd25194d5edba3da09e044"
    assert event.reason == "Host or domain name not found"
    [unsub] = make_parser().parse(payload("mailersend", "v1_unsubscribed")).events
    assert unsub.reason == "I get too many emails"


def test_the_2_0_recipient_may_be_named_recipient() -> None:
    body = edited("hard_bounced", email=None, recipient="zoe@example.com")
    [event] = make_parser().parse(body).events
    assert event.email == "zoe@example.com"


def test_a_bounce_code_in_meta_is_kept() -> None:
    body = edited("soft_bounced", meta={"bounce_reason": "mailbox full", "bounce_code": 452})
    [event] = make_parser().parse(body).events
    assert (event.reason, event.smtp_code) == ("mailbox full", "452")


@pytest.mark.parametrize(
    ("case", "code"), [("sent", "activity.sent"), ("webhook_test", "webhook.test")]
)
def test_other_events_are_counted_not_returned(case: str, code: str) -> None:
    result = make_parser().parse(payload("mailersend", case))
    assert result.events == [] and result.ignored == Counter({code: 1})


def test_a_deferral_is_not_a_bounce() -> None:
    doc = orjson.loads(payload("mailersend", "soft_bounced"))
    doc["type"] = "activity.deferred"
    result = make_parser().parse(orjson.dumps(doc))
    assert result.events == [] and result.ignored == Counter({"activity.deferred": 1})


@pytest.mark.parametrize(
    "body",
    [
        edited("hard_bounced", email="not an address"),
        edited("hard_bounced", email=None),
        edited("v1_hard_bounced", email={"recipient": {}}),
        edited("v1_hard_bounced", created_at="not a time"),
        b'{"type": "activity.hard_bounced", "data": {"email": "a@example.com"}}',
        b'{"type": "activity.hard_bounced", "created_at": "2025-08-05T21:24:02Z"}',
        b'{"type": "activity.hard_bounced", "created_at": "2025-08-05T21:24:02Z", "data": []}',
        b'{"data": {"email": "a@example.com"}}',
    ],
)
def test_invalid_events_of_a_signed_request_are_quarantined(body: bytes) -> None:
    result = make_parser().parse(body)
    assert result.events == [] and len(result.quarantined) == 1 and not result.ignored


@pytest.mark.parametrize("body", [b"[]", b'"activity.sent"', b"null", b"{"])
def test_a_body_that_is_not_one_object_is_400(body: bytes) -> None:
    with pytest.raises(PayloadInvalid):
        make_parser().parse(body)


# -- keys ----------------------------------------------------------------------------------------


def test_keys_are_the_activity_id_stable_across_retries() -> None:
    parser = make_parser()
    [first] = parser.parse(payload("mailersend", "spam_complaint")).events
    [again] = parser.parse(payload("mailersend", "spam_complaint")).events
    assert first.key == again.key == "mailersend:68930048a23f15a8bcbbb003"


def test_without_an_activity_id_the_key_is_a_content_hash() -> None:
    [event] = make_parser().parse(edited("spam_complaint", id=None)).events
    assert event.key == content_key(
        "mailersend",
        "carol@example.com",
        Kind.SPAM_COMPLAINT,
        1754464360.0,
        "6892766ae78995a317577aa2",
    )


# -- verification --------------------------------------------------------------------------------


def test_a_body_with_escaped_slashes_verifies_on_its_raw_bytes() -> None:
    """MailerSend escapes '/' as '\\/'; re-serialized JSON would not verify."""
    body = payload("mailersend", "v1_hard_bounced")
    assert b"\\/" in body
    make_parser().verify(request(body, signature(body, SECRET)))
    with pytest.raises(SignatureInvalid):
        make_parser().verify(request(orjson.dumps(orjson.loads(body)), signature(body, SECRET)))


def test_an_uppercase_hex_signature_is_accepted() -> None:
    body = payload("mailersend", "hard_bounced")
    headers = {"Signature": signature(body, SECRET)["Signature"].upper()}
    make_parser().verify(request(body, headers))


def test_previous_signing_secret_is_accepted_during_rotation() -> None:
    body = payload("mailersend", "hard_bounced")
    parser = make_parser(SECRET, OLD_SECRET)
    parser.verify(request(body, signature(body, SECRET)))
    parser.verify(request(body, signature(body, OLD_SECRET)))


def test_forged_request_is_refused() -> None:
    body = payload("mailersend", "hard_bounced")
    with pytest.raises(SignatureInvalid) as exc:
        make_parser().verify(request(body, signature(body, "someone-else")))
    assert exc.value.status == 401


@pytest.mark.parametrize("header", ["", "abc", "g" * 64, "0" * 63, "sha256=" + "0" * 64, "é" * 64])
def test_a_malformed_signature_header_is_401(header: str) -> None:
    body = payload("mailersend", "hard_bounced")
    with pytest.raises(SignatureInvalid) as exc:
        make_parser().verify(request(body, {"Signature": header}))
    assert exc.value.status == 401


def test_the_ping_signed_with_the_published_test_secret_is_accepted() -> None:
    """MailerSend signs the webhook.test ping it sends on save with a fixed public secret."""
    body = payload("mailersend", "webhook_test")
    parser = make_parser()
    parser.verify(request(body, signature(body, TEST_SECRET)))
    assert parser.parse(body).events == []


def test_the_published_test_secret_authenticates_nothing_but_the_ping() -> None:
    body = payload("mailersend", "hard_bounced")
    with pytest.raises(SignatureInvalid):
        make_parser().verify(request(body, signature(body, TEST_SECRET)))


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(
    header=st.one_of(st.text(max_size=80), st.from_regex(r"[0-9a-fA-F]{60,66}", fullmatch=True)),
    body=st.binary(max_size=200),
)
def test_any_signature_header_gets_a_clear_answer(header: str, body: bytes) -> None:
    """Whatever the header holds, verify() accepts or raises SignatureInvalid: never a 500."""
    try:
        make_parser().verify(request(body, {"Signature": header}))
    except SignatureInvalid:
        pass
