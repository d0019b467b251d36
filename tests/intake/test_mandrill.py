"""Mandrill: signed form posts of mandrill_events; message and denylist sync events."""

from __future__ import annotations

from collections import Counter
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest

from syncworker.config import SourceConfig
from syncworker.errors import PayloadInvalid, SignatureInvalid
from syncworker.events import Kind, content_key
from syncworker.intake.contract import InboundRequest, ParseResult
from syncworker.intake.esps.mandrill import MandrillParser
from tests.intake.signers.mandrill import WEBHOOK_URL, mandrill_request, mandrill_signature
from tests.intake.signing import payload, request

KEY, OLD_KEY = "webhook-key-current", "webhook-key-previous"


def make_parser(**values: str) -> MandrillParser:
    config = SourceConfig(name="mandrill", esp="mandrill", values={"WEBHOOK_KEY": KEY, **values})
    return MandrillParser(config)


def receive(events: str | bytes, parser: MandrillParser | None = None) -> ParseResult:
    """Verify and parse a signed delivery of `events`, as the intake route does."""
    parser = parser or make_parser()
    req = mandrill_request(events, KEY)
    parser.verify(req)
    return parser.parse(req.body)


def form(**fields: str) -> bytes:
    return urlencode(fields).encode()


def message_event(code: str, **fields: Any) -> dict[str, Any]:
    msg = {"email": "someone@example.com", "state": "sent", "_id": "m1", **fields}
    return {"event": code, "msg": msg, "_id": "m1", "ts": 1709662240}


def sync_event(kind: str, action: str, **reject: Any) -> dict[str, Any]:
    entry = {"email": "someone@example.com", "reason": "hard-bounce", **reject}
    return {"type": kind, "action": action, "reject": entry, "ts": 1709662241}


# -- events ------------------------------------------------------------------------------------


def test_batch_mixes_message_sync_and_engagement_events() -> None:
    result = receive(payload("mandrill", "batch"))
    assert [(e.email, e.kind) for e in result.events] == [
        ("no.such.user@example.com", Kind.HARD_BOUNCE),
        ("full.mailbox@example.com", Kind.SOFT_BOUNCE),
        ("complainer@example.com", Kind.SPAM_COMPLAINT),
        ("leaver@example.com", Kind.UNSUBSCRIBE),
        ("denied@example.com", Kind.BLOCKED),
        ("no.such.user@example.com", Kind.HARD_BOUNCE),
        ("manual.block@example.com", Kind.UNSUBSCRIBE),
    ]
    assert result.ignored == Counter(
        {"send": 1, "deferral": 1, "open": 1, "click": 1, "blacklist:remove": 1, "whitelist:add": 1}
    )
    assert result.quarantined == []


def test_hard_bounce_carries_message_id_diagnostics_and_event_time() -> None:
    bounce = receive(payload("mandrill", "batch")).events[0]
    assert bounce.message_id == "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa3"
    assert bounce.occurred_at == 1709662240.0  # the event's ts, not msg.ts (the send time)
    assert bounce.reason == (
        "smtp;550 5.1.1 The email account that you tried to reach does not exist."
    )
    assert bounce.smtp_code == "550"
    assert bounce.raw == orjson.loads(payload("mandrill", "batch"))[2]
    assert bounce.key == content_key(
        "mandrill", "no.such.user@example.com", Kind.HARD_BOUNCE, 1709662240.0, bounce.message_id
    )


def test_denylist_addition_carries_reason_and_no_message() -> None:
    added = receive(payload("mandrill", "batch")).events[6]
    assert (added.reason, added.message_id, added.smtp_code) == ("custom", None, None)
    assert added.occurred_at == 1709662800.0


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("hard_bounce", Kind.HARD_BOUNCE),
        ("soft_bounce", Kind.SOFT_BOUNCE),
        ("spam", Kind.SPAM_COMPLAINT),
        ("unsub", Kind.UNSUBSCRIBE),
        ("reject", Kind.BLOCKED),
        ("send", None),
        ("delivered", None),
        ("deferral", None),
        ("open", None),
        ("click", None),
        ("inbound", None),
    ],
)
def test_message_event_table(code: str, kind: Kind | None) -> None:
    result = receive(orjson.dumps([message_event(code)]))
    assert [e.kind for e in result.events] == ([kind] if kind else [])
    assert result.ignored == (Counter() if kind else Counter({code: 1}))


@pytest.mark.parametrize(
    ("kind", "action", "reason", "expected"),
    [
        ("blacklist", "add", "hard-bounce", Kind.HARD_BOUNCE),
        ("blacklist", "add", "spam", Kind.SPAM_COMPLAINT),
        ("blacklist", "add", "unsub", Kind.UNSUBSCRIBE),
        ("blacklist", "add", "soft-bounce", Kind.SOFT_BOUNCE),
        ("blacklist", "add", "custom", Kind.UNSUBSCRIBE),
        ("blacklist", "add", None, Kind.HARD_BOUNCE),
        ("blacklist", "add", "a-reason-added-later", Kind.HARD_BOUNCE),
        ("blacklist", "change", "hard-bounce", Kind.HARD_BOUNCE),
        ("denylist", "add", "spam", Kind.SPAM_COMPLAINT),
        ("denylist", "change", "unsub", Kind.UNSUBSCRIBE),
        ("blacklist", "remove", "hard-bounce", None),
        ("whitelist", "add", None, None),
        ("allowlist", "remove", None, None),
    ],
)
def test_sync_event_table(
    kind: str, action: str, reason: str | None, expected: Kind | None
) -> None:
    result = receive(orjson.dumps([sync_event(kind, action, reason=reason)]))
    assert [e.kind for e in result.events] == ([expected] if expected else [])
    assert result.ignored == (Counter() if expected else Counter({f"{kind}:{action}": 1}))


def test_sync_event_without_action_is_ignored_under_its_type() -> None:
    event = {"type": "blacklist", "reject": {"email": "a@example.com"}, "ts": 1709662241}
    assert receive(orjson.dumps([event])).ignored == Counter(blacklist=1)


def test_empty_batch_is_mandrills_test_delivery() -> None:
    """Mandrill may post mandrill_events=[] to check a webhook; it verifies and yields nothing."""
    result = receive(payload("mandrill", "empty"))
    assert (result.events, result.ignored, result.quarantined) == ([], Counter(), [])


def test_keys_are_stable_across_redeliveries_and_distinct_per_event() -> None:
    body = payload("mandrill", "batch")
    keys = [e.key for e in receive(body).events]
    assert keys == [e.key for e in receive(body).events]
    assert len(set(keys)) == len(keys)


def test_an_old_delivery_still_verifies_and_repeats_its_keys() -> None:
    """Mandrill signs no time: a replay cannot be refused, only deduplicated by key."""
    old = [message_event("spam", ts=1262304000)]
    first, again = receive(orjson.dumps(old)), receive(orjson.dumps(old))
    assert [e.key for e in first.events] == [e.key for e in again.events]


# -- verification --------------------------------------------------------------------------------


def test_signature_covers_the_public_url() -> None:
    parser = make_parser()
    parser.verify(mandrill_request("[]", KEY))
    for url in [
        "http://hooks.example.com/webhooks/mandrill",  # scheme rewritten by a proxy
        WEBHOOK_URL + "/",  # a trailing slash
        "https://other.example.com/webhooks/mandrill",
        "https://user:pw@hooks.example.com/webhooks/mandrill",  # credentials in the entered URL
        WEBHOOK_URL + "?source=mandrill",
    ]:
        with pytest.raises(SignatureInvalid) as exc:
            parser.verify(mandrill_request("[]", KEY, signed_url=url))
        assert WEBHOOK_URL in exc.value.detail


def test_query_string_of_the_entered_url_is_signed() -> None:
    url = WEBHOOK_URL + "?env=prod"
    body = form(mandrill_events="[]")
    sig = mandrill_signature(KEY, url, [("mandrill_events", "[]")])
    req = InboundRequest(body, {"X-Mandrill-Signature": sig}, url=url)
    make_parser().verify(req)


def test_webhook_url_setting_overrides_the_url_the_app_sees() -> None:
    entered = "https://user:pw@hooks.example.com/webhooks/mandrill/"
    req = mandrill_request("[]", KEY, signed_url=entered)
    make_parser(WEBHOOK_URL=entered).verify(req)
    with pytest.raises(SignatureInvalid):
        make_parser().verify(req)


def test_every_post_field_is_signed_in_key_order() -> None:
    extra = [("zeta", "1"), ("alpha", "two words"), ("mandrill_events_x", "3")]
    req = mandrill_request("[]", KEY, extra=extra)
    make_parser().verify(req)
    tampered = req.body.replace(b"zeta=1", b"zeta=2")
    with pytest.raises(SignatureInvalid):
        make_parser().verify(InboundRequest(tampered, req.headers, url=req.url))


def test_tampered_events_are_401() -> None:
    req = mandrill_request(payload("mandrill", "batch"), KEY)
    tampered = req.body.replace(b"hard_bounce", b"soft_bounce", 1)
    assert tampered != req.body
    with pytest.raises(SignatureInvalid):
        make_parser().verify(InboundRequest(tampered, req.headers, url=req.url))


def test_previous_key_is_accepted_during_rotation() -> None:
    req = mandrill_request("[]", OLD_KEY)
    make_parser(WEBHOOK_KEY_PREVIOUS=OLD_KEY).verify(req)
    with pytest.raises(SignatureInvalid):
        make_parser().verify(req)


@pytest.mark.parametrize(
    "signature",
    ["", "   ", "not base64!", "ÄÖÜ", "\ud800", "c2lnbmF0dXJl", "=" * 28, "A" * 10000],
)
def test_malformed_or_wrong_signature_is_401(signature: str) -> None:
    headers = {"X-Mandrill-Signature": signature}
    with pytest.raises(SignatureInvalid) as exc:
        make_parser().verify(request(form(mandrill_events="[]"), headers, path="mandrill"))
    assert exc.value.status == 401


@pytest.mark.parametrize("body", [b"\xff\xfe", b"mandrill_events=%ff", b"&".join([b"a=1"] * 101)])
def test_body_that_is_not_a_form_cannot_be_verified(body: bytes) -> None:
    sig = mandrill_signature(KEY, WEBHOOK_URL, [])
    with pytest.raises(SignatureInvalid):
        make_parser().verify(request(body, {"X-Mandrill-Signature": sig}, path="mandrill"))


# -- malformed bodies and bad events -------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"[]",  # JSON posted without the form field
        b"\xff\xfe",
        b"mandrill_events=%ff",
        form(other="[]"),
        b"mandrill_events=[]&mandrill_events=[]",
        form(mandrill_events=""),
        form(mandrill_events="{"),
        form(mandrill_events='{"event": "spam"}'),
        form(mandrill_events="null"),
    ],
)
def test_malformed_body_is_400(body: bytes) -> None:
    with pytest.raises(PayloadInvalid) as exc:
        make_parser().parse(body)
    assert exc.value.status == 400


def test_invalid_events_are_quarantined_with_a_reason() -> None:
    result = receive(payload("mandrill", "invalid_events"))
    assert [e.email for e in result.events] == ["fine@example.com"]
    reasons = [q.reason for q in result.quarantined]
    assert len(reasons) == 5
    assert "msg" in reasons[0] and "Missing data" in reasons[0]
    assert "ts" in reasons[1] and "Missing data" in reasons[1]
    assert "Not a valid email" in reasons[2]
    assert reasons[3] == "event code missing"
    assert reasons[4] == "event is not an object"
    assert result.quarantined[4].raw == 42


@pytest.mark.parametrize(
    ("reason", "kind"),
    [
        ("hard-bounce", Kind.HARD_BOUNCE),
        ("spam", Kind.SPAM_COMPLAINT),
        ("unsub", Kind.UNSUBSCRIBE),
        ("custom", Kind.UNSUBSCRIBE),
        ("soft-bounce", Kind.SOFT_BOUNCE),
        ("invalid", Kind.HARD_BOUNCE),
        ("a-reason-added-later", Kind.HARD_BOUNCE),
        ("rule", Kind.BLOCKED),
    ],
)
def test_a_reject_with_its_reason_suppresses_as_that_reason(reason: str, kind: Kind) -> None:
    """A send Mandrill refused because of its denylist is decided by the rejection's reason, and
    that reason is the event's."""
    rejection = {"reason": reason, "detail": "", "email": "someone@example.com"}
    [event] = receive(orjson.dumps([message_event("reject", reject=rejection)])).events
    assert (event.kind, event.reason) == (kind, reason)


@pytest.mark.parametrize("reason", ["invalid-sender", "unsigned", "test-mode-limit"])
def test_a_reject_for_the_sender_fault_says_nothing_about_the_address(reason: str) -> None:
    rejection = {"reason": reason, "email": "someone@example.com"}
    result = receive(orjson.dumps([message_event("reject", reject=rejection)]))
    assert result.events == [] and result.ignored == Counter(reject=1)


def test_stored_rejects_by_the_denylist_suppress_at_once() -> None:
    result = receive(payload("mandrill", "reject_denylisted"))
    assert [(e.email, e.kind, e.reason) for e in result.events] == [
        ("bounced.before@example.com", Kind.HARD_BOUNCE, "hard-bounce"),
        ("complained.before@example.com", Kind.SPAM_COMPLAINT, "spam"),
        ("unsubscribed.before@example.com", Kind.UNSUBSCRIBE, "unsub"),
        ("no.reason@example.com", Kind.BLOCKED, None),
    ]
