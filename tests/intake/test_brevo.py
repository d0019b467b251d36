"""Brevo: single or batched transactional events behind a bearer token or basic auth."""

from __future__ import annotations

import base64
from collections import Counter
from typing import Any

import orjson
import pytest

from syncworker.config import SourceConfig
from syncworker.errors import PayloadInvalid, SignatureInvalid
from syncworker.events import Kind, content_key
from syncworker.intake.contract import ParseResult
from syncworker.intake.esps.brevo import BrevoParser
from tests.intake.signers.brevo import bearer
from tests.intake.signing import basic_auth_header, payload, request

TOKEN, OLD_TOKEN = "tok-current", "tok-previous"


def make_parser(**values: str) -> BrevoParser:
    config = SourceConfig(name="brevo", esp="brevo", values={"TOKEN": TOKEN, **values})
    return BrevoParser(config)


def parse_case(case: str) -> ParseResult:
    body = payload("brevo", case)
    parser = make_parser()
    parser.verify(request(body, bearer(TOKEN)))
    return parser.parse(body)


def event(**fields: Any) -> dict[str, Any]:
    base = {
        "email": "someone@example.com",
        "ts_epoch": 1709662222000,
        "message-id": "<202403051910.1@smtp-relay.mailin.fr>",
    }
    return {**base, **fields}


# -- events ------------------------------------------------------------------------------------


def test_single_object_delivery() -> None:
    result = parse_case("single_hard_bounce")
    [bounce] = result.events
    assert (bounce.email, bounce.kind) == ("gone.user@example.com", Kind.HARD_BOUNCE)
    assert (bounce.source, bounce.esp) == ("brevo", "brevo")
    assert bounce.occurred_at == 1709662223.0  # ts_epoch is milliseconds
    assert bounce.message_id == "<202403051910.12345678901@smtp-relay.mailin.fr>"
    assert bounce.reason == (
        "RecipientError: 550 5.1.1 Requested action not taken: mailbox unavailable."
    )
    assert bounce.raw == orjson.loads(payload("brevo", "single_hard_bounce"))
    assert bounce.key == content_key(
        "brevo", "gone.user@example.com", Kind.HARD_BOUNCE, 1709662223.0, bounce.message_id
    )


def test_batched_array_mixes_hygiene_and_engagement_events() -> None:
    result = parse_case("batched")
    assert {e.email: e.kind for e in result.events} == {
        "no.such.user@example.com": Kind.HARD_BOUNCE,
        "typo@example.com": Kind.HARD_BOUNCE,
        "full.mailbox@example.com": Kind.SOFT_BOUNCE,
        "blocked@example.com": Kind.HARD_BOUNCE,
        "complainer@example.com": Kind.SPAM_COMPLAINT,
        "fbl@example.com": Kind.SPAM_COMPLAINT,
        "leaver@example.com": Kind.UNSUBSCRIBE,
    }
    assert result.ignored == Counter(request=1, delivered=1, deferred=1, unique_opened=1, click=1)
    assert result.quarantined == []


def test_event_without_ts_epoch_falls_back_to_ts_event() -> None:
    """Complaint payloads seen in the wild carry only ts and ts_event (both seconds)."""
    [complaint] = [e for e in parse_case("batched").events if e.email == "fbl@example.com"]
    assert complaint.occurred_at == 1709662440.0


def test_ts_epoch_in_seconds_is_not_read_as_milliseconds() -> None:
    """Brevo's own examples put seconds in ts_epoch; read as ms they would date from 1970."""
    body = orjson.dumps(event(event="spam", ts_epoch=1604933623))
    assert make_parser().parse(body).events[0].occurred_at == 1604933623.0


def test_ts_epoch_wins_over_ts_event() -> None:
    body = orjson.dumps(event(event="spam", ts_epoch=1709662222500, ts_event=1))
    assert make_parser().parse(body).events[0].occurred_at == 1709662222.5


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("hard_bounce", Kind.HARD_BOUNCE),
        ("invalid_email", Kind.HARD_BOUNCE),
        ("soft_bounce", Kind.SOFT_BOUNCE),
        ("blocked", Kind.HARD_BOUNCE),
        ("spam", Kind.SPAM_COMPLAINT),
        ("complaint", Kind.SPAM_COMPLAINT),
        ("unsubscribe", Kind.UNSUBSCRIBE),
        ("unsubscribed", Kind.UNSUBSCRIBE),
        ("deferred", None),
        ("error", None),
        ("request", None),
        ("delivered", None),
        ("opened", None),
        ("unique_opened", None),
        ("proxy_open", None),
        ("unique_proxy_open", None),
        ("click", None),
    ],
)
def test_event_code_table(code: str, kind: Kind | None) -> None:
    result = make_parser().parse(orjson.dumps(event(event=code)))
    assert [e.kind for e in result.events] == ([kind] if kind else [])
    assert result.ignored == (Counter() if kind else Counter({code: 1}))


def test_unknown_event_code_is_ignored() -> None:
    result = make_parser().parse(orjson.dumps([event(event="list_addition")]))
    assert result.events == [] and result.ignored == Counter(list_addition=1)


def test_empty_batch_yields_nothing() -> None:
    result = make_parser().parse(b"[]")
    assert (result.events, result.ignored, result.quarantined) == ([], Counter(), [])


def test_keys_are_stable_across_redeliveries_and_distinct_per_event() -> None:
    parser = make_parser()
    body = payload("brevo", "batched")
    keys = [e.key for e in parser.parse(body).events]
    assert keys == [e.key for e in parser.parse(body).events]
    assert len(set(keys)) == len(keys)


def test_single_and_batched_forms_of_one_event_share_a_key() -> None:
    """Switching a webhook to batched delivery must not make old events look new."""
    parser = make_parser()
    single = parser.parse(orjson.dumps(event(event="spam"))).events
    batched = parser.parse(orjson.dumps([event(event="spam")])).events
    assert [e.key for e in single] == [e.key for e in batched]
    later = parser.parse(orjson.dumps(event(event="spam", ts_epoch=1709662223000))).events
    assert later[0].key != single[0].key


# -- verification --------------------------------------------------------------------------------


def test_bearer_token_is_accepted() -> None:
    make_parser().verify(request(b"{}", {"Authorization": f"Bearer {TOKEN}"}))
    make_parser().verify(request(b"{}", {"Authorization": f"bearer  {TOKEN} "}))


def test_basic_credentials_in_the_url_are_accepted() -> None:
    make_parser().verify(request(b"{}", basic_auth_header("brevo", TOKEN)))
    parser = make_parser(USERNAME="hooks")
    parser.verify(request(b"{}", basic_auth_header("hooks", TOKEN)))
    with pytest.raises(SignatureInvalid):
        parser.verify(request(b"{}", basic_auth_header("brevo", TOKEN)))


@pytest.mark.parametrize(
    "headers", [{"Authorization": f"Bearer {OLD_TOKEN}"}, basic_auth_header("brevo", OLD_TOKEN)]
)
def test_previous_token_is_accepted_during_rotation(headers: dict[str, str]) -> None:
    make_parser(TOKEN_PREVIOUS=OLD_TOKEN).verify(request(b"{}", headers))
    with pytest.raises(SignatureInvalid):
        make_parser().verify(request(b"{}", headers))


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Token {TOKEN}"},
        {"Authorization": TOKEN},
        {"Authorization": "Bearer ÄÖÜ"},
        {"Authorization": "Bearer \ud800"},
        basic_auth_header("brevo", "wrong"),
        basic_auth_header("someone", TOKEN),
        {"Authorization": "Basic ==="},
        {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()},
    ],
)
def test_bad_credentials_are_401(headers: dict[str, str]) -> None:
    with pytest.raises(SignatureInvalid) as exc:
        make_parser().verify(request(payload("brevo", "batched"), headers))
    assert exc.value.status == 401


# -- malformed bodies and bad events -------------------------------------------------------------


@pytest.mark.parametrize("body", [b"", b"{", b'"hard_bounce"', b"7", b"null", b"true", b"\xff"])
def test_malformed_body_is_400(body: bytes) -> None:
    with pytest.raises(PayloadInvalid) as exc:
        make_parser().parse(body)
    assert exc.value.status == 400


def test_invalid_events_are_quarantined_with_a_reason() -> None:
    result = make_parser().parse(payload("brevo", "invalid_events"))
    assert [e.email for e in result.events] == ["fine@example.com"]
    reasons = [q.reason for q in result.quarantined]
    assert len(reasons) == 5
    assert "email" in reasons[0] and "Missing data" in reasons[0]
    assert "ts_epoch or ts_event is required" in reasons[1]
    assert "Not a valid email" in reasons[2]
    assert reasons[3] == "event code missing"
    assert reasons[4] == "event is not an object"
    assert result.quarantined[4].raw == "hard_bounce"


@pytest.mark.parametrize("ts_epoch", [-1, "soon", None, True, 1e30])
def test_event_with_a_bad_time_is_quarantined(ts_epoch: Any) -> None:
    body = orjson.dumps([event(event="spam", ts_epoch=ts_epoch)])
    result = make_parser().parse(body)
    assert result.events == [] and len(result.quarantined) == 1


def test_a_send_refused_by_the_blocklist_is_a_hard_bounce_with_brevo_reason() -> None:
    """`blocked`: Brevo did not send because the address is on its blocklist (an earlier hard
    bounce, complaint, unsubscription or block by the account), so it is suppressed at once."""
    [event] = parse_case("single_blocked").events
    assert (event.email, event.kind) == ("blocklisted@example.com", Kind.HARD_BOUNCE)
    assert event.reason == "blocked : due to blacklist user"


def test_a_receiving_server_refusal_reported_as_soft_stays_soft() -> None:
    body = orjson.dumps(
        event(event="soft_bounce", reason="421 4.7.0 Try again later, closing connection (spam)")
    )
    [found] = make_parser().parse(body).events
    assert found.kind == Kind.SOFT_BOUNCE
