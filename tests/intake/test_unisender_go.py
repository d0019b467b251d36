"""Unisender Go: batched or single-event JSON authenticated by an MD5 over the raw body."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from syncworker.config import SourceConfig
from syncworker.errors import PayloadInvalid, SignatureInvalid
from syncworker.events import Kind, content_key
from syncworker.intake.contract import ParseResult
from syncworker.intake.esps.unisender_go import UnisenderGoParser
from tests.intake.signers.unisender_go import (
    PLACEHOLDER,
    envelope,
    sign_raw,
    sign_unisender,
    unisender_json,
)
from tests.intake.signing import payload, request

API_KEY, OLD_API_KEY = "6ncjsbtgm3qdaihqhzg1gu6cqkhc7gbkecbqiejo", "5xyzoldkey"


def make_parser(**values: str) -> UnisenderGoParser:
    config = SourceConfig(
        name="unisender_go", esp="unisender_go", values={"API_KEY": API_KEY, **values}
    )
    return UnisenderGoParser(config)


def receive(body: bytes, api_key: str = API_KEY) -> ParseResult:
    """Sign `body` as Unisender would, then verify and parse it as the intake route does."""
    parser = make_parser()
    signed = sign_unisender(body, api_key)
    parser.verify(request(signed))
    return parser.parse(signed)


def status_event(status: str, **fields: Any) -> dict[str, Any]:
    data = {
        "job_id": "1a3Q2V-0000OZ-S9",
        "email": "someone@example.com",
        "status": status,
        "event_time": "2024-03-05 18:12:00",
        **fields,
    }
    return {"event_name": "transactional_email_status", "event_data": data}


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


# -- events ------------------------------------------------------------------------------------


def test_batch_mixes_hygiene_engagement_and_spam_block_events() -> None:
    result = receive(payload("unisender_go", "batch"))
    assert {e.email: e.kind for e in result.events} == {
        "no.such.user@example.com": Kind.HARD_BOUNCE,
        "full.mailbox@example.com": Kind.SOFT_BOUNCE,
        "complainer@example.com": Kind.SPAM_COMPLAINT,
        "leaver@example.com": Kind.UNSUBSCRIBE,
        "blocklisted@example.com": Kind.BLOCKED,
    }
    assert result.ignored == Counter(
        delivered=1, clicked=1, soft_bounced=1, transactional_spam_block=1
    )
    assert result.quarantined == []


def test_hard_bounce_fields() -> None:
    [bounce] = [
        e for e in receive(payload("unisender_go", "batch")).events if e.kind == "hard_bounce"
    ]
    assert bounce.occurred_at == at("2024-03-05 18:12:00")  # event_time is UTC without a zone
    assert bounce.message_id == "1a3Q2V-0000OZ-S2"
    assert bounce.reason == (
        "550 5.1.1 <no.such.user@example.com>: Recipient address rejected: User unknown"
    )
    events = orjson.loads(payload("unisender_go", "batch"))["events_by_user"][0]["events"]
    assert bounce.raw == events[2]
    email, kind = "no.such.user@example.com", Kind.HARD_BOUNCE
    expected = content_key("unisender_go", email, kind, bounce.occurred_at, "1a3Q2V-0000OZ-S2")
    assert bounce.key == expected


def test_single_event_form() -> None:
    """With "use single event" on, the body is one flat event next to auth."""
    result = receive(payload("unisender_go", "single_event"))
    [bounce] = result.events
    assert (bounce.email, bounce.kind) == ("single.bounce@example.com", Kind.HARD_BOUNCE)
    assert bounce.occurred_at == at("2024-03-05 19:00:00")
    assert bounce.message_id == "1a3Q2V-0000OZ-T1"
    # kept in a grouped event's shape: the flat fields, without auth, are its event_data
    assert bounce.raw["event_name"] == "transactional_email_status"
    data = bounce.raw["event_data"]
    assert "auth" not in data and data["project_id"] == "6432890213745872"


def test_single_event_of_another_name_is_ignored() -> None:
    body = unisender_json({"auth": PLACEHOLDER, "event_name": "transactional_spam_block"})
    assert receive(body).ignored == Counter(transactional_spam_block=1)


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        ("hard_bounced", Kind.HARD_BOUNCE),
        ("soft_bounced", Kind.SOFT_BOUNCE),
        ("spam", Kind.SPAM_COMPLAINT),
        ("unsubscribed", Kind.UNSUBSCRIBE),
        ("subscribed", Kind.RESUBSCRIBE),
        ("sent", None),
        ("delivered", None),
        ("opened", None),
        ("clicked", None),
    ],
)
def test_status_table(status: str, kind: Kind | None) -> None:
    result = receive(envelope(status_event(status)))
    assert [e.kind for e in result.events] == ([kind] if kind else [])
    assert result.ignored == (Counter() if kind else Counter({status: 1}))


@pytest.mark.parametrize(
    ("status", "delivery_status", "kind"),
    [
        ("hard_bounced", "err_user_unknown", Kind.HARD_BOUNCE),
        ("hard_bounced", "err_domain_inactive", Kind.HARD_BOUNCE),
        ("hard_bounced", "err_unsubscribed", Kind.UNSUBSCRIBE),
        ("hard_bounced", "err_blacklisted", Kind.BLOCKED),
        ("hard_bounced", "err_spam_rejected", Kind.BLOCKED),
        ("hard_bounced", "err_spam_skipped", None),
        ("hard_bounced", "err_unreachable", Kind.HARD_BOUNCE),
        ("soft_bounced", "err_unreachable", Kind.HARD_BOUNCE),
        ("hard_bounced", "err_skip_letter", Kind.SOFT_BOUNCE),
        ("soft_bounced", "err_unsubscribed", Kind.UNSUBSCRIBE),
        ("hard_bounced", "err_too_large", None),
        ("soft_bounced", "err_mailbox_full", Kind.SOFT_BOUNCE),
        ("soft_bounced", "err_will_retry", None),
        ("soft_bounced", None, Kind.SOFT_BOUNCE),
        ("spam", "err_will_retry", Kind.SPAM_COMPLAINT),  # refines bounces only
    ],
)
def test_delivery_status_refines_bounces(
    status: str, delivery_status: str | None, kind: Kind | None
) -> None:
    event = status_event(status, delivery_info={"delivery_status": delivery_status})
    result = receive(envelope(event))
    assert [e.kind for e in result.events] == ([kind] if kind else [])
    assert result.ignored == (Counter() if kind else Counter({status: 1}))


def test_keys_are_stable_across_redeliveries_and_distinct_per_event() -> None:
    """Unisender's ID header changes on every retry; the content key must not."""
    body = payload("unisender_go", "batch")
    keys = [e.key for e in receive(body).events]
    assert keys == [e.key for e in receive(body).events]
    assert len(set(keys)) == len(keys)


def test_batch_and_single_forms_of_one_event_share_a_key() -> None:
    event = status_event("spam")
    flat = {"auth": PLACEHOLDER, "event_name": event["event_name"], **event["event_data"]}
    batched = receive(envelope(event)).events
    single = receive(unisender_json(flat)).events
    assert [e.key for e in batched] == [e.key for e in single]


# -- verification --------------------------------------------------------------------------------


def test_auth_is_checked_on_the_raw_bytes() -> None:
    """Unisender writes "/" as "\\/"; hashing re-serialized JSON would fail (anymail #398)."""
    body = sign_raw(payload("unisender_go", "batch"), API_KEY)
    assert b"https:\\/\\/" in body
    make_parser().verify(request(body))
    auth = orjson.loads(body)["auth"]
    reserialized = json.dumps(orjson.loads(body)).encode()
    assert hashlib.md5(reserialized.replace(auth.encode(), API_KEY.encode())).hexdigest() != auth


def test_spacing_and_key_order_do_not_matter() -> None:
    body = b'{ "events_by_user" : [ ],\n  "auth" : "' + PLACEHOLDER.encode() + b'" }'
    make_parser().verify(request(sign_raw(body, API_KEY)))


def test_uppercase_digest_is_accepted() -> None:
    body = sign_raw(payload("unisender_go", "single_event"), API_KEY)
    auth = orjson.loads(body)["auth"]
    make_parser().verify(request(body.replace(auth.encode(), auth.upper().encode())))


def test_previous_api_key_is_accepted_during_rotation() -> None:
    body = sign_raw(payload("unisender_go", "batch"), OLD_API_KEY)
    make_parser(API_KEY_PREVIOUS=OLD_API_KEY).verify(request(body))
    with pytest.raises(SignatureInvalid):
        make_parser().verify(request(body))


def test_tampered_body_is_401() -> None:
    body = sign_raw(payload("unisender_go", "batch"), API_KEY)
    tampered = body.replace(b"complainer@example.com", b"someone.else@example.com")
    with pytest.raises(SignatureInvalid):
        make_parser().verify(request(tampered))


def _with_auth(auth: Any) -> bytes:
    return orjson.dumps({"auth": auth, "events_by_user": []})


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[]",
        b'"auth"',
        b'{"events_by_user": []}',
        _with_auth(None),
        _with_auth(42),
        _with_auth(""),
        _with_auth(API_KEY),
        _with_auth("z" * 32),
        _with_auth("0" * 31),
        _with_auth(hashlib.md5(b"something else").hexdigest()),
        payload("unisender_go", "batch"),  # the unsigned placeholder
    ],
)
def test_missing_malformed_or_wrong_auth_is_401(body: bytes) -> None:
    with pytest.raises(SignatureInvalid) as exc:
        make_parser().verify(request(body))
    assert exc.value.status == 401


# -- malformed bodies and bad events -------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b"[]",
        b"null",
        b'"events_by_user"',
        b'{"auth": "x"}',
        b'{"events_by_user": {}}',
        b'{"events_by_user": [1]}',
        b'{"events_by_user": [{"user_id": 1}]}',
        b'{"events_by_user": [{"events": {}}]}',
    ],
)
def test_malformed_body_is_400(body: bytes) -> None:
    with pytest.raises(PayloadInvalid) as exc:
        make_parser().parse(body)
    assert exc.value.status == 400


@pytest.mark.parametrize(
    "doc", [{"events_by_user": []}, {"events_by_user": [{"user_id": 456, "events": []}]}]
)
def test_empty_event_lists_yield_nothing(doc: dict[str, Any]) -> None:
    result = receive(unisender_json({"auth": PLACEHOLDER, **doc}))
    assert (result.events, result.ignored, result.quarantined) == ([], Counter(), [])


def test_invalid_events_are_quarantined_with_a_reason() -> None:
    result = receive(payload("unisender_go", "invalid_events"))
    assert [e.email for e in result.events] == ["fine@example.com"]
    reasons = [q.reason for q in result.quarantined]
    assert len(reasons) == 5
    assert "email" in reasons[0] and "Missing data" in reasons[0]
    assert "event_time" in reasons[1]
    assert reasons[2] == "event_data.status missing"
    assert reasons[3] == "event_name missing"
    assert reasons[4] == "event is not an object"
    events = orjson.loads(payload("unisender_go", "invalid_events"))["events_by_user"][0]["events"]
    assert [q.raw for q in result.quarantined] == events[1:]


def test_an_address_unisender_lists_as_unreachable_is_a_hard_bounce_at_once() -> None:
    """err_unreachable: Unisender did not send because repeated failures put the address on its
    own list of permanently unavailable addresses; its answer is kept as the reason."""
    result = receive(payload("unisender_go", "unreachable"))
    [event] = result.events
    assert (event.email, event.kind) == ("unreachable@example.com", Kind.HARD_BOUNCE)
    assert event.reason == "err_unreachable"


def test_a_receiving_server_blacklist_stays_a_counted_block() -> None:
    info = {"delivery_status": "err_blacklisted", "destination_response": "554 5.7.1 listed"}
    [event] = receive(envelope(status_event("hard_bounced", delivery_info=info))).events
    assert (event.kind, event.reason) == (Kind.BLOCKED, "554 5.7.1 listed")
