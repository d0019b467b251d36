"""EmailLabs: delivery reports behind Basic auth (and the optional checksum) become events."""

from __future__ import annotations

import base64
import hashlib
from collections import Counter
from typing import Any

import orjson
import pytest

from syncworker.config import SourceConfig
from syncworker.errors import PayloadInvalid, SignatureInvalid
from syncworker.events import Kind, content_key
from syncworker.intake.esps.emaillabs import EmailLabsParser
from tests.intake.signing import basic_auth_header, payload, request

USER, PASSWORD, OLD_PASSWORD = "emaillabs-hooks", "pw-current", "pw-previous"
SECRET, OLD_SECRET = "secret-key-current", "secret-key-previous"
DATE, REQUEST_ID = "2024-05-06 10:15:00", "0b7e9f2c-4d1a-4c55-9a51-3f1f0e5b8a11"


def make_parser(**values: str) -> EmailLabsParser:
    config = SourceConfig(
        name="emaillabs",
        esp="emaillabs",
        values={"USERNAME": USER, "PASSWORD": PASSWORD, **values},
    )
    return EmailLabsParser(config)


def checksum_headers(
    secret: str = SECRET, date: str = DATE, request_id: str = REQUEST_ID
) -> dict[str, str]:
    """Hex SHA-1 of ``secret|date|request id``, computed here independently of the module."""
    digest = hashlib.sha1(f"{secret}|{date}|{request_id}".encode()).hexdigest()
    return {"X-Webhook-Date": date, "Request-Id": request_id, "X-Webhook-Checksum": digest}


def signed(body: bytes, secret: str = SECRET, **headers: str) -> Any:
    return request(
        body, {**basic_auth_header(USER, PASSWORD), **checksum_headers(secret), **headers}
    )


def parse_case(case: str) -> Any:
    body = payload("emaillabs", case)
    parser = make_parser()
    parser.verify(request(body, basic_auth_header(USER, PASSWORD)))
    return parser.parse(body)


def report(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "to": {"email": "someone@example.com", "name": "", "messageId": "m-1@mail.example.com"},
        "statusTime": 1714990500,
        "statusDesc": "550 5.1.1 User unknown",
    }
    return {**base, **fields}


# -- events ------------------------------------------------------------------------------------


def test_batch_mixes_hygiene_and_delivery_statuses() -> None:
    result = parse_case("batch")
    assert {e.email: e.kind for e in result.events} == {
        "gone@example.com": Kind.HARD_BOUNCE,
        "full.box@example.com": Kind.SOFT_BOUNCE,
        "filtered@example.com": Kind.BLOCKED,
    }
    assert result.ignored == Counter(ok=1, deferred=1, dropped=1, injected=1)
    assert result.quarantined == []


def test_single_report_carries_its_details() -> None:
    [bounce] = parse_case("single").events
    assert (bounce.source, bounce.esp) == ("emaillabs", "emaillabs")
    assert (bounce.email, bounce.kind) == ("nobody@example.com", Kind.HARD_BOUNCE)
    assert bounce.occurred_at == 1714991000.0
    assert bounce.message_id == "3f9d51c2-0001@mail.example.com"  # angle brackets stripped
    assert bounce.reason is not None and bounce.reason.startswith("550 5.1.1")
    assert bounce.raw == orjson.loads(payload("emaillabs", "single"))[0]
    assert bounce.key == content_key(
        "emaillabs",
        "nobody@example.com",
        Kind.HARD_BOUNCE,
        1714991000.0,
        "3f9d51c2-0001@mail.example.com",
    )


def test_empty_batch_yields_nothing() -> None:
    result = parse_case("empty")
    assert (result.events, result.ignored, result.quarantined) == ([], Counter(), [])


def test_lone_report_object_is_a_batch_of_one() -> None:
    """The docs promise an array; a bare object is taken rather than refused."""
    [event] = make_parser().parse(orjson.dumps(report(status="softbounce"))).events
    assert event.kind == Kind.SOFT_BOUNCE


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        ("hardbounce", Kind.HARD_BOUNCE),
        ("Hardbounce", Kind.HARD_BOUNCE),
        (" HARDBOUNCE ", Kind.HARD_BOUNCE),
        ("softbounce", Kind.SOFT_BOUNCE),
        ("spambounce", Kind.BLOCKED),
        ("spam_complaint", Kind.SPAM_COMPLAINT),
        ("feedback", Kind.SPAM_COMPLAINT),
        ("dropped", None),
        ("deferred", None),
        ("injected", None),
        ("ok", None),
        ("open", None),
        ("track", None),
    ],
)
def test_status_table(status: str, kind: Kind | None) -> None:
    result = make_parser().parse(orjson.dumps([report(status=status)]))
    assert [e.kind for e in result.events] == ([kind] if kind else [])
    code = status.strip().lower()
    assert result.ignored == (Counter() if kind else Counter({code: 1}))


def test_dropped_is_not_a_block() -> None:
    """Dropped also means the account's send limit was used up: it says nothing of the address."""
    result = make_parser().parse(orjson.dumps([report(status="dropped")]))
    assert result.events == [] and result.ignored == Counter(dropped=1)


def test_unknown_status_is_ignored() -> None:
    result = make_parser().parse(orjson.dumps([report(status="unsubscribed_somehow")]))
    assert result.events == [] and result.ignored == Counter(unsubscribed_somehow=1)


@pytest.mark.parametrize(
    ("message_id", "expected"),
    [
        ("<a@mail.example.com>", "a@mail.example.com"),
        (" a@mail.example.com ", "a@mail.example.com"),
        ("<>", None),
        ("", None),
        (None, None),
        (1234, "1234"),
        (["x"], None),
    ],
)
def test_message_id(message_id: Any, expected: str | None) -> None:
    body = orjson.dumps(
        [report(status="hardbounce", to={"email": "a@example.com", "messageId": message_id})]
    )
    assert make_parser().parse(body).events[0].message_id == expected


def test_string_status_time_is_accepted() -> None:
    [event] = (
        make_parser()
        .parse(orjson.dumps([report(status="hardbounce", statusTime="1714990500")]))
        .events
    )
    assert event.occurred_at == 1714990500.0


def test_keys_are_stable_across_redeliveries_and_distinct_per_event() -> None:
    parser = make_parser()
    body = payload("emaillabs", "batch")
    keys = [e.key for e in parser.parse(body).events]
    assert keys == [e.key for e in parser.parse(body).events]
    assert len(set(keys)) == len(keys)
    now = parser.parse(orjson.dumps([report(status="hardbounce")])).events[0].key
    later = parser.parse(orjson.dumps([report(status="hardbounce", statusTime=1714990501)]))
    assert now != later.events[0].key


# -- verification --------------------------------------------------------------------------------


def test_basic_auth_alone_is_enough_without_a_secret_key() -> None:
    make_parser().verify(request(b"[]", basic_auth_header(USER, PASSWORD)))


def test_previous_password_is_accepted_during_rotation() -> None:
    parser = make_parser(PASSWORD_PREVIOUS=OLD_PASSWORD)
    parser.verify(request(b"[]", basic_auth_header(USER, PASSWORD)))
    parser.verify(request(b"[]", basic_auth_header(USER, OLD_PASSWORD)))


@pytest.mark.parametrize(
    "headers",
    [
        {},
        basic_auth_header(USER, "wrong"),
        basic_auth_header("someone", PASSWORD),
        basic_auth_header(USER, OLD_PASSWORD),
        {"Authorization": "Basic ==="},
        {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()},
        {"Authorization": "Bearer " + PASSWORD},
        checksum_headers(),  # a valid checksum does not replace the credentials
    ],
)
def test_bad_credentials_are_401(headers: dict[str, str]) -> None:
    with pytest.raises(SignatureInvalid) as exc:
        make_parser(SECRET_KEY=SECRET).verify(request(b"[]", headers))
    assert exc.value.status == 401


def test_checksum_is_checked_when_a_secret_key_is_set() -> None:
    parser = make_parser(SECRET_KEY=SECRET)
    parser.verify(signed(b"[]"))
    with pytest.raises(SignatureInvalid, match="does not match"):
        parser.verify(signed(b"[]", secret="someone-else"))


def test_previous_secret_key_is_accepted_during_rotation() -> None:
    parser = make_parser(SECRET_KEY=SECRET, SECRET_KEY_PREVIOUS=OLD_SECRET)
    parser.verify(signed(b"[]", secret=SECRET))
    parser.verify(signed(b"[]", secret=OLD_SECRET))


def test_credentials_and_secret_key_rotate_together() -> None:
    """The panel sets the Basic credentials and the SecretKey in one form: a request must match
    one generation in full, not today's password with yesterday's key."""
    parser = make_parser(
        SECRET_KEY=SECRET, SECRET_KEY_PREVIOUS=OLD_SECRET, PASSWORD_PREVIOUS=OLD_PASSWORD
    )

    def posted(password: str, secret: str) -> Any:
        return request(b"[]", {**basic_auth_header(USER, password), **checksum_headers(secret)})

    parser.verify(posted(PASSWORD, SECRET))
    parser.verify(posted(OLD_PASSWORD, OLD_SECRET))
    for password, secret in [(PASSWORD, OLD_SECRET), (OLD_PASSWORD, SECRET)]:
        with pytest.raises(SignatureInvalid, match="does not match"):
            parser.verify(posted(password, secret))


def test_a_secret_key_rotated_alone_keeps_the_current_credentials() -> None:
    parser = make_parser(SECRET_KEY=SECRET, SECRET_KEY_PREVIOUS=OLD_SECRET)
    parser.verify(signed(b"[]", secret=OLD_SECRET))
    with pytest.raises(SignatureInvalid):
        parser.verify(
            request(b"[]", {**basic_auth_header(USER, "wrong"), **checksum_headers(OLD_SECRET)})
        )


def test_uppercase_checksum_is_accepted() -> None:
    upper = checksum_headers()["X-Webhook-Checksum"].upper()
    make_parser(SECRET_KEY=SECRET).verify(signed(b"[]", **{"X-Webhook-Checksum": upper}))


@pytest.mark.parametrize(
    "change",
    [
        {"Request-Id": "another-request"},  # the checksum binds the request id
        {"X-Webhook-Date": "2024-05-06 10:15:01"},  # ... and the date
        {"Request-Id": ""},
        {"X-Webhook-Date": ""},
        {"X-Webhook-Checksum": ""},
        {"X-Webhook-Checksum": "zz" * 20},
        {"X-Webhook-Checksum": "ab" * 32},  # a SHA-256 length
        {"X-Webhook-Checksum": "ñ" * 40},
        {"X-Webhook-Date": "\ud800"},
    ],
)
def test_forged_or_malformed_checksum_is_401(change: dict[str, str]) -> None:
    with pytest.raises(SignatureInvalid) as exc:
        make_parser(SECRET_KEY=SECRET).verify(signed(b"[]", **change))
    assert exc.value.status == 401


def test_checksum_is_hex_sha1_of_secret_date_and_request_id() -> None:
    """The second-hand scheme, pinned: SHA-1 (not HMAC) of the three values joined by '|'."""
    expected = hashlib.sha1(f"{SECRET}|{DATE}|{REQUEST_ID}".encode()).hexdigest()
    assert checksum_headers()["X-Webhook-Checksum"] == expected
    make_parser(SECRET_KEY=SECRET).verify(signed(b"[]", **{"X-Webhook-Checksum": expected}))


# -- malformed bodies and bad events -------------------------------------------------------------


@pytest.mark.parametrize("body", [b"", b"[", b'"hardbounce"', b"7", b"null", b"true", b"\x00"])
def test_malformed_body_is_400(body: bytes) -> None:
    with pytest.raises(PayloadInvalid) as exc:
        make_parser().parse(body)
    assert exc.value.status == 400


def test_invalid_reports_are_quarantined_with_a_reason() -> None:
    result = parse_case("invalid_events")
    assert [e.email for e in result.events] == ["fine@example.com"]
    reasons = [q.reason for q in result.quarantined]
    assert len(reasons) == 6
    assert "email" in reasons[0] and "Missing data" in reasons[0]
    assert "statusTime" in reasons[1]
    assert "Not a valid email" in reasons[2]
    assert reasons[3] == "status missing"
    assert "to" in reasons[4]
    assert reasons[5] == "report is not an object"
    assert result.quarantined[5].raw == 42
