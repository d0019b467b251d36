"""Mailjet: single or grouped events behind basic auth become hygiene events; ids stay exact."""

from __future__ import annotations

import base64
from collections import Counter
from typing import Any

import orjson
import pytest

from syncworker.config import SourceConfig
from syncworker.errors import PayloadInvalid, SignatureInvalid
from syncworker.events import Kind, content_key
from syncworker.intake.esps.mailjet import MailjetParser
from tests.intake.signing import basic_auth_header, payload, request

USER, PASSWORD, OLD_PASSWORD = "mailjet-hooks", "pw-current", "pw-previous"


def make_parser(**values: str) -> MailjetParser:
    config = SourceConfig(
        name="mailjet", esp="mailjet", values={"USERNAME": USER, "PASSWORD": PASSWORD, **values}
    )
    return MailjetParser(config)


def parse_case(case: str) -> Any:
    body = payload("mailjet", case)
    parser = make_parser()
    parser.verify(request(body, basic_auth_header(USER, PASSWORD)))
    return parser.parse(body)


def event(**fields: Any) -> dict[str, Any]:
    base = {"time": 1430812195, "MessageID": 19421777835146491, "email": "someone@example.com"}
    return {**base, **fields}


# -- events ------------------------------------------------------------------------------------


def test_single_object_delivery() -> None:
    result = parse_case("single_bounce")
    [bounce] = result.events
    assert (bounce.email, bounce.kind) == ("bounce@example.com", Kind.HARD_BOUNCE)
    assert (bounce.source, bounce.esp) == ("mailjet", "mailjet")
    assert bounce.occurred_at == 1430812195.0
    assert bounce.reason == "user unknown"
    assert bounce.raw == orjson.loads(payload("mailjet", "single_bounce"))
    assert bounce.key == content_key(
        "mailjet", "bounce@example.com", Kind.HARD_BOUNCE, 1430812195.0, "19421777835146491"
    )


def test_message_id_beyond_2_53_is_kept_exact() -> None:
    """MessageID is a 64-bit int: as a float it would lose its last digits."""
    [bounce] = parse_case("single_bounce").events
    assert bounce.message_id == "19421777835146491"
    assert str(int(float(19421777835146491))) != bounce.message_id
    assert bounce.raw["MessageID"] == 19421777835146491


def test_grouped_array_mixes_hygiene_and_engagement_events() -> None:
    result = parse_case("grouped")
    assert {e.email: e.kind for e in result.events} == {
        "full.mailbox@example.com": Kind.SOFT_BOUNCE,
        "preblocked@example.com": Kind.HARD_BOUNCE,
        "complainer@example.com": Kind.SPAM_COMPLAINT,
        "leaver@example.com": Kind.UNSUBSCRIBE,
    }
    assert result.ignored == Counter(sent=1, open=1, click=1, blocked=1)
    assert result.quarantined == []
    by_email = {e.email: e for e in result.events}
    assert by_email["leaver@example.com"].list_id == "1"
    assert by_email["complainer@example.com"].reason == "JMRPP"
    assert by_email["preblocked@example.com"].reason == "preblocked"


def test_empty_group_yields_nothing() -> None:
    result = parse_case("empty")
    assert (result.events, result.ignored, result.quarantined) == ([], Counter(), [])


@pytest.mark.parametrize(
    ("fields", "kind"),
    [
        ({"event": "bounce", "hard_bounce": True}, Kind.HARD_BOUNCE),
        ({"event": "bounce", "hard_bounce": False, "error": "greylisted"}, Kind.SOFT_BOUNCE),
        ({"event": "bounce"}, Kind.SOFT_BOUNCE),
        ({"event": "blocked", "error": "preblocked"}, Kind.HARD_BOUNCE),
        ({"event": "blocked", "error": "Preblocked "}, Kind.HARD_BOUNCE),
        ({"event": "blocked", "error": "duplicate in campaign"}, None),
        ({"event": "blocked"}, None),
        ({"event": "spam", "source": "JMRPP"}, Kind.SPAM_COMPLAINT),
        ({"event": "unsub", "mj_list_id": 7}, Kind.UNSUBSCRIBE),
        ({"event": "sent"}, None),
        ({"event": "open"}, None),
        ({"event": "click"}, None),
    ],
)
def test_event_code_table(fields: dict[str, Any], kind: Kind | None) -> None:
    result = make_parser().parse(orjson.dumps(event(**fields)))
    assert [e.kind for e in result.events] == ([kind] if kind else [])
    assert result.ignored == (Counter() if kind else Counter({fields["event"]: 1}))


def test_unknown_event_code_is_ignored() -> None:
    result = make_parser().parse(orjson.dumps([event(event="forwarded")]))
    assert result.events == [] and result.ignored == Counter(forwarded=1)


@pytest.mark.parametrize(
    ("message_id", "expected"),
    [
        ("19421777835146491", "19421777835146491"),
        (1.9421777835146492e16, None),
        (0, None),
        ("", None),
        (None, None),
        (True, None),
    ],
)
def test_message_id_is_never_taken_from_a_float(message_id: Any, expected: str | None) -> None:
    body = orjson.dumps(event(event="spam", MessageID=message_id))
    assert make_parser().parse(body).events[0].message_id == expected


@pytest.mark.parametrize(("list_id", "expected"), [(12, "12"), ("12", "12"), (0, None), ("", None)])
def test_unsubscribe_list_id(list_id: Any, expected: str | None) -> None:
    body = orjson.dumps(event(event="unsub", mj_list_id=list_id))
    assert make_parser().parse(body).events[0].list_id == expected


def test_keys_are_stable_across_redeliveries_and_distinct_per_event() -> None:
    parser = make_parser()
    body = payload("mailjet", "grouped")
    keys = [e.key for e in parser.parse(body).events]
    assert keys == [e.key for e in parser.parse(body).events]
    assert len(set(keys)) == len(keys)
    later = parser.parse(orjson.dumps(event(event="spam", time=1430812196))).events[0].key
    now = parser.parse(orjson.dumps(event(event="spam"))).events[0].key
    assert later != now


# -- verification --------------------------------------------------------------------------------


def test_previous_password_is_accepted_during_rotation() -> None:
    parser = make_parser(PASSWORD_PREVIOUS=OLD_PASSWORD)
    body = payload("mailjet", "grouped")
    parser.verify(request(body, basic_auth_header(USER, PASSWORD)))
    parser.verify(request(body, basic_auth_header(USER, OLD_PASSWORD)))


@pytest.mark.parametrize(
    "headers",
    [
        {},
        basic_auth_header(USER, "wrong"),
        basic_auth_header("someone", PASSWORD),
        basic_auth_header(USER, OLD_PASSWORD),
        basic_auth_header(USER, ""),
        {"Authorization": "Digest " + PASSWORD},
        {"Authorization": "Basic ==="},
        {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()},
        {"Authorization": "Basic ÄÖÜ"},
    ],
)
def test_bad_credentials_are_401(headers: dict[str, str]) -> None:
    with pytest.raises(SignatureInvalid) as exc:
        make_parser().verify(request(payload("mailjet", "grouped"), headers))
    assert exc.value.status == 401


# -- malformed bodies and bad events -------------------------------------------------------------


@pytest.mark.parametrize("body", [b"", b"{", b'"bounce"', b"7", b"null", b"true", b"\x00"])
def test_malformed_body_is_400(body: bytes) -> None:
    with pytest.raises(PayloadInvalid) as exc:
        make_parser().parse(body)
    assert exc.value.status == 400


def test_invalid_events_are_quarantined_with_a_reason() -> None:
    result = make_parser().parse(payload("mailjet", "invalid_events"))
    assert [(e.email, e.list_id) for e in result.events] == [("fine@example.com", "2")]
    reasons = [q.reason for q in result.quarantined]
    assert len(reasons) == 5
    assert "email" in reasons[0] and "Missing data" in reasons[0]
    assert "time" in reasons[1]
    assert "Not a valid email" in reasons[2]
    assert reasons[3] == "event code missing"
    assert reasons[4] == "event is not an object"
    assert result.quarantined[4].raw == 42


@pytest.mark.parametrize(
    ("code", "error", "kind"),
    [
        ("blocked", "preblocked", Kind.HARD_BOUNCE),
        ("blocked", "spam reporter", Kind.SPAM_COMPLAINT),
        ("blocked", "blacklisted", Kind.UNSUBSCRIBE),
        ("bounce", "spam reporter", Kind.SPAM_COMPLAINT),
        ("bounce", "blacklisted", Kind.UNSUBSCRIBE),
    ],
)
def test_a_refusal_by_mailjet_lists_suppresses_at_once_with_its_error(
    code: str, error: str, kind: Kind
) -> None:
    """Mailjet did not send because of an earlier bounce, a spam report or the account's own
    blacklist: the address is suppressed as that reason, with Mailjet's error as the reason."""
    doc = event(event=code, error_related_to="recipient", error=error, hard_bounce=False)
    [found] = make_parser().parse(orjson.dumps(doc)).events
    assert (found.kind, found.reason) == (kind, error)


def test_a_receiving_server_policy_bounce_is_still_counted_by_its_hard_bounce_flag() -> None:
    doc = event(event="bounce", error_related_to="spam", error="content blocked", hard_bounce=False)
    [found] = make_parser().parse(orjson.dumps(doc)).events
    assert (found.kind, found.reason) == (Kind.SOFT_BOUNCE, "content blocked")
