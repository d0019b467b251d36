"""Resend: a Svix-signed JSON event becomes at most one hygiene event."""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson
import pytest

from syncworker.config import SourceConfig
from syncworker.devkit.emulators.webhook_receiver import new_secret
from syncworker.errors import PayloadInvalid, SignatureInvalid
from syncworker.events import Kind, content_key
from syncworker.intake.contract import InboundRequest
from syncworker.intake.esps.resend import ResendParser
from tests.intake.signers.standard_webhooks import signed_headers
from tests.intake.signing import payload, request

NOW = 1_732_318_900
SECRET = new_secret()
OLD_SECRET = new_secret()


def make_parser(secret: str = SECRET, previous: str | None = None) -> ResendParser:
    values = {
        "SIGNING_SECRET": secret,
        **({"SIGNING_SECRET_PREVIOUS": previous} if previous else {}),
    }
    return ResendParser(SourceConfig(name="resend", esp="resend", values=values), clock=lambda: NOW)


def svix(body: bytes, *secrets: str, **kwargs: Any) -> dict[str, str]:
    return signed_headers(body, *(secrets or (SECRET,)), prefix="svix-", timestamp=NOW, **kwargs)


def changed(case: str, **data: Any) -> bytes:
    """A stored payload with some of its ``data`` fields replaced."""
    doc = orjson.loads(payload("resend", case))
    doc["data"].update(data)
    return orjson.dumps(doc)


# -- events ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "email", "kind"),
    [
        ("bounced_permanent", "alice@example.com", Kind.HARD_BOUNCE),
        ("bounced_suppressed", "bob@example.com", Kind.HARD_BOUNCE),
        ("bounced_transient", "carol@example.com", Kind.SOFT_BOUNCE),
        ("bounced_without_type", "dave@example.com", Kind.HARD_BOUNCE),
        ("complained", "erin@example.com", Kind.SPAM_COMPLAINT),
        ("suppressed", "frank@example.com", Kind.HARD_BOUNCE),
        ("contact_unsubscribed", "ivan@example.com", Kind.UNSUBSCRIBE),
        ("suppression_added", "mallory@example.com", Kind.SPAM_COMPLAINT),
        ("suppression_removed", "niaj@example.com", Kind.RESUBSCRIBE),
    ],
)
def test_hygiene_events_by_case(case: str, email: str, kind: Kind) -> None:
    body = payload("resend", case)
    parser = make_parser()
    parser.verify(request(body, svix(body)))
    result = parser.parse(body)
    [event] = result.events
    assert (event.email, event.kind) == (email, kind)
    assert (event.source, event.esp) == ("resend", "resend")
    assert event.raw == orjson.loads(body)
    assert result.ignored == Counter() and result.quarantined == []


@pytest.mark.parametrize(
    ("bounce_type", "kind"),
    [("Permanent", Kind.HARD_BOUNCE), ("Transient", Kind.SOFT_BOUNCE)]
    + [("Temporary", Kind.SOFT_BOUNCE), ("Undetermined", Kind.SOFT_BOUNCE)],
)
def test_bounce_type_decides_hard_or_soft(bounce_type: str, kind: Kind) -> None:
    body = changed("bounced_permanent", bounce={"type": bounce_type, "subType": "General"})
    [event] = make_parser().parse(body).events
    assert event.kind == kind


def test_an_unknown_bounce_type_is_quarantined() -> None:
    result = make_parser().parse(changed("bounced_permanent", bounce={"type": "Sideways"}))
    assert result.events == []
    [quarantined] = result.quarantined
    assert "bounce" in quarantined.reason and "type" in quarantined.reason


@pytest.mark.parametrize(
    ("origin", "kind"),
    [
        ("bounce", Kind.HARD_BOUNCE),
        ("complaint", Kind.SPAM_COMPLAINT),
        ("manual", Kind.UNSUBSCRIBE),
    ],
)
def test_a_suppression_added_says_why(origin: str, kind: Kind) -> None:
    [event] = make_parser().parse(changed("suppression_added", origin=origin)).events
    assert (event.kind, event.reason) == (kind, origin)


@pytest.mark.parametrize("origin", ["bounce", "complaint"])
def test_removing_a_bounce_or_complaint_suppression_resubscribes_nobody(origin: str) -> None:
    result = make_parser().parse(changed("suppression_removed", origin=origin))
    assert result.events == [] and result.ignored == Counter({"suppression.removed": 1})


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("delivered", "email.delivered"),
        ("delivery_delayed", "email.delivery_delayed"),
        ("contact_subscribed", "contact.updated"),
    ],
)
def test_other_events_are_counted_not_returned(case: str, code: str) -> None:
    """A delay is not a bounce; a contact that is not unsubscribed says nothing new."""
    result = make_parser().parse(payload("resend", case))
    assert result.events == [] and result.ignored == Counter({code: 1})


def test_a_contact_created_unsubscribed_is_an_unsubscribe() -> None:
    doc = orjson.loads(payload("resend", "contact_unsubscribed"))
    doc["type"] = "contact.created"
    [event] = make_parser().parse(orjson.dumps(doc)).events
    assert event.kind == Kind.UNSUBSCRIBE
    assert event.list_id == "78261eea-8f8b-4381-83c6-79fa7120f1cf"


def test_bounce_details_are_kept() -> None:
    [event] = make_parser().parse(payload("resend", "bounced_permanent")).events
    assert event.message_id == "56761188-7520-42d8-8898-ff6fc54ce618"
    assert event.reason is not None and event.reason.startswith("The recipient's email provider")
    assert event.occurred_at == 1732318872.126  # the event's created_at, not the email's


def test_a_suppression_names_the_email_that_caused_it() -> None:
    [event] = make_parser().parse(payload("resend", "suppression_added")).events
    assert event.message_id == "4ef9a417-02e9-4d39-ad75-9611e0fcc33c"


def test_a_display_name_in_to_is_dropped() -> None:
    [event] = make_parser().parse(payload("resend", "bounced_transient")).events
    assert event.email == "carol@example.com"


def test_a_bounce_naming_several_recipients_is_an_event_for_each() -> None:
    """Resend documents a bounce's and a complaint's ``to`` as the impacted recipients."""
    body = changed("bounced_permanent", to=["alice@example.com", "Zed <zed@example.com>"])
    parser = make_parser()
    result = parser.parse(body)
    assert [e.email for e in result.events] == ["alice@example.com", "zed@example.com"]
    assert {e.kind for e in result.events} == {Kind.HARD_BOUNCE} and not result.quarantined
    assert len({e.key for e in result.events}) == 2, "each recipient's event has its own key"
    assert parser.parse(body).events == result.events, "retries give the same keys"
    for event in result.events:
        assert parser.parse_item(event.raw).events == [event]


def test_a_keyed_bounce_naming_several_recipients_keeps_a_key_per_recipient() -> None:
    """A single event is keyed on the svix-id; two events of one message cannot share it."""
    body = changed("bounced_permanent", to=["alice@example.com", "zed@example.com"])
    parser = make_parser()
    headers = {"svix-id": "msg_1", "svix-timestamp": "1", "svix-signature": "v1,x"}
    events = parser.parse_request(InboundRequest(body, headers)).events
    assert len({e.key for e in events}) == 2


def test_a_suppression_naming_several_recipients_is_quarantined() -> None:
    """For other types the docs do not say ``to`` names only the affected recipients."""
    body = changed("suppressed", to=["alice@example.com", "zed@example.com"])
    result = make_parser().parse(body)
    assert result.events == []
    [quarantined] = result.quarantined
    assert "Several recipients" in quarantined.reason


LATER = {"email": "a@example.com", "origin": "later"}


@pytest.mark.parametrize(
    "doc",
    [
        {"created_at": "2024-11-22T23:41:12.126Z", "data": {"to": ["a@example.com"]}},
        {"type": ["email.bounced"], "created_at": "2024-11-22T23:41:12.126Z"},
        {"type": "email.bounced", "created_at": "yesterday", "data": {"to": ["a@example.com"]}},
        {"type": "email.bounced", "data": {"to": ["a@example.com"]}},
        {"type": "email.bounced", "created_at": "2024-11-22T23:41:12Z", "data": {"to": []}},
        {"type": "email.bounced", "created_at": "2024-11-22T23:41:12Z", "data": {"to": ["x"]}},
        {"type": "email.complained", "created_at": "2024-11-22T23:41:12Z", "data": "x"},
        {"type": "contact.updated", "created_at": "2024-11-22T23:41:12Z", "data": {}},
        {"type": "suppression.added", "created_at": "2024-11-22T23:41:12Z", "data": LATER},
    ],
)
def test_invalid_events_of_a_signed_request_are_quarantined(doc: dict[str, Any]) -> None:
    result = make_parser().parse(orjson.dumps(doc))
    assert result.events == [] and len(result.quarantined) == 1 and not result.ignored


def test_unknown_types_are_ignored() -> None:
    result = make_parser().parse(b'{"type": "inbox.thread.created", "data": {}}')
    assert result.events == [] and result.ignored == Counter({"inbox.thread.created": 1})


@pytest.mark.parametrize("body", [b"[]", b'"email.bounced"', b"null"])
def test_a_body_that_is_not_one_object_is_400(body: bytes) -> None:
    with pytest.raises(PayloadInvalid):
        make_parser().parse(body)


# -- keys ----------------------------------------------------------------------------------------


def test_a_request_is_keyed_on_its_svix_id() -> None:
    """Svix repeats a delivery's svix-id on every retry: that is the event's key."""
    parser = make_parser()
    body = payload("resend", "bounced_permanent")
    first = request(body, svix(body, msg_id="msg_2nLKxYp1"))
    parser.verify(first)
    [event] = parser.parse_request(first).events
    [retry] = parser.parse_request(request(body, svix(body, msg_id="msg_2nLKxYp1"))).events
    [other] = parser.parse_request(request(body, svix(body, msg_id="msg_9zzzzzzz"))).events
    assert event.key == retry.key == "resend:resend:msg:msg_2nLKxYp1"
    assert other.key != event.key


def test_keys_are_stable_across_redeliveries() -> None:
    """Without the headers (parse() alone), the key is a hash of the event's content."""
    parser = make_parser()
    [first] = parser.parse(payload("resend", "bounced_permanent")).events
    [again] = parser.parse(payload("resend", "bounced_permanent")).events
    assert (
        first.key
        == again.key
        == content_key(
            "resend",
            "alice@example.com",
            Kind.HARD_BOUNCE,
            1732318872.126,
            "56761188-7520-42d8-8898-ff6fc54ce618",
        )
    )


def test_keys_differ_for_another_message_or_time() -> None:
    parser = make_parser()
    [base] = parser.parse(payload("resend", "bounced_permanent")).events
    [other_email] = parser.parse(changed("bounced_permanent", email_id="other")).events
    doc = orjson.loads(payload("resend", "bounced_permanent"))
    doc["created_at"] = "2024-11-22T23:41:13.126Z"
    [later] = parser.parse(orjson.dumps(doc)).events
    assert len({base.key, other_email.key, later.key}) == 3


# -- verification --------------------------------------------------------------------------------


def test_svix_signed_request_is_accepted() -> None:
    body = payload("resend", "complained")
    make_parser().verify(request(body, svix(body)))


def test_previous_signing_secret_is_accepted_during_rotation() -> None:
    body = payload("resend", "complained")
    parser = make_parser(SECRET, OLD_SECRET)
    parser.verify(request(body, svix(body, SECRET)))
    parser.verify(request(body, svix(body, OLD_SECRET)))


def test_a_header_signed_with_the_old_and_new_secret_is_accepted() -> None:
    """While Resend rotates the signing secret, svix-signature carries one entry per secret."""
    body = payload("resend", "complained")
    make_parser(SECRET).verify(request(body, svix(body, OLD_SECRET, SECRET)))


def test_forged_request_is_refused() -> None:
    body = payload("resend", "complained")
    with pytest.raises(SignatureInvalid) as exc:
        make_parser().verify(request(body, svix(body, new_secret())))
    assert exc.value.status == 401


def test_stale_request_is_refused() -> None:
    body = payload("resend", "complained")
    headers = signed_headers(body, SECRET, prefix="svix-", timestamp=NOW - 600)
    with pytest.raises(SignatureInvalid, match="skew"):
        make_parser().verify(request(body, headers))


def test_a_redelivered_body_with_a_tampered_address_is_refused() -> None:
    body = payload("resend", "complained")
    headers = svix(body)
    tampered = body.replace(b"erin@example.com", b"boss@example.com")
    with pytest.raises(SignatureInvalid):
        make_parser().verify(request(tampered, headers))


@pytest.mark.parametrize("missing", ["svix-id", "svix-timestamp", "svix-signature"])
def test_a_missing_header_is_401(missing: str) -> None:
    body = payload("resend", "complained")
    headers = {k: v for k, v in svix(body).items() if k != missing}
    with pytest.raises(SignatureInvalid):
        make_parser().verify(request(body, headers))


def test_a_send_refused_by_the_suppression_list_is_a_hard_bounce_with_resend_reason() -> None:
    """email.suppressed: Resend's own list refused the send, which only an earlier hard bounce,
    complaint or manual entry causes, so the address is suppressed at once."""
    [event] = make_parser().parse(payload("resend", "suppressed")).events
    assert (event.email, event.kind) == ("frank@example.com", Kind.HARD_BOUNCE)
    assert event.reason is not None
    assert event.reason.startswith("Resend has suppressed sending to this address because it is")
