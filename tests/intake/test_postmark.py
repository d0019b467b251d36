"""Postmark: basic-authenticated bounce, spam and subscription-change records become events."""

from __future__ import annotations

import base64
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from marshmallow import ValidationError

from syncworker.config import SourceConfig
from syncworker.errors import PayloadInvalid, SignatureInvalid
from syncworker.events import Kind, content_key
from syncworker.intake.contract import IsoTime
from syncworker.intake.esps.postmark import PostmarkParser
from tests.intake.signing import basic_auth_header, payload, request

USER, PASSWORD, OLD_PASSWORD = "postmark-hooks", "s3cret-current", "s3cret-previous"
BOUNCED_AT = datetime(2019, 11, 5, 16, 33, 54, 907025, tzinfo=UTC).timestamp()


def make_parser(**values: str) -> PostmarkParser:
    config = SourceConfig(
        name="postmark", esp="postmark", values={"USERNAME": USER, "PASSWORD": PASSWORD, **values}
    )
    return PostmarkParser(config)


def parse_case(case: str) -> Any:
    body = payload("postmark", case)
    parser = make_parser()
    parser.verify(request(body, basic_auth_header(USER, PASSWORD)))
    return parser.parse(body)


# -- events ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "email", "kind"),
    [
        ("bounce_hard", "john@example.com", Kind.HARD_BOUNCE),
        ("bounce_soft", "full.mailbox@example.com", Kind.SOFT_BOUNCE),
        ("bounce_transient", "slow@example.com", Kind.SOFT_BOUNCE),
        ("spam_complaint", "complainer@example.com", Kind.SPAM_COMPLAINT),
        ("subscription_change_unsubscribed", "leaver@example.com", Kind.UNSUBSCRIBE),
        ("subscription_change_hard_bounce", "bounced@example.com", Kind.HARD_BOUNCE),
        ("subscription_change_reactivated", "returner@example.com", Kind.RESUBSCRIBE),
    ],
)
def test_hygiene_records_by_case(case: str, email: str, kind: Kind) -> None:
    result = parse_case(case)
    [event] = result.events
    assert (event.email, event.kind) == (email, kind)
    assert (event.source, event.esp) == ("postmark", "postmark")
    assert event.raw == orjson.loads(payload("postmark", case))
    assert result.ignored == Counter() and result.quarantined == []


@pytest.mark.parametrize(
    ("case", "ignored"),
    [
        ("delivery", "Delivery"),
        ("open", "Open"),
        ("bounce_autoresponder", "Bounce:AutoResponder"),
        ("subscription_change_without_suppress_sending", "SubscriptionChange"),
    ],
)
def test_records_without_hygiene_meaning_are_counted(case: str, ignored: str) -> None:
    result = parse_case(case)
    assert result.events == [] and result.quarantined == []
    assert result.ignored == Counter({ignored: 1})


def test_hard_bounce_carries_its_details_and_the_bounce_id_as_key() -> None:
    [event] = parse_case("bounce_hard").events
    assert event.key == "postmark:Bounce:4323372036854775807"
    assert event.occurred_at == BOUNCED_AT
    assert event.message_id == "883953f4-6105-42a2-a16a-77a8eac79483"
    assert (
        event.reason == "smtp;550 5.1.1 The email account that you tried to reach does not exist."
    )
    assert event.list_id is None


def test_offset_timestamps_with_seven_fraction_digits_are_the_same_instant() -> None:
    [soft] = parse_case("bounce_soft").events  # 11:33:54.9070259-05:00
    assert soft.occurred_at == BOUNCED_AT


def test_spam_complaint_record_is_keyed_by_its_id() -> None:
    [event] = parse_case("spam_complaint").events
    assert event.key == "postmark:SpamComplaint:42"
    assert event.reason == "Test spam complaint details"


def test_subscription_change_is_scoped_to_its_stream_and_content_keyed() -> None:
    [event] = parse_case("subscription_change_unsubscribed").events
    changed_at = datetime(2020, 2, 1, 10, 53, 34, 416071, tzinfo=UTC).timestamp()
    assert event.occurred_at == changed_at
    assert event.list_id == "broadcasts"
    assert event.reason == "ManualSuppression"
    assert event.key == content_key(
        "postmark",
        "leaver@example.com",
        Kind.UNSUBSCRIBE,
        changed_at,
        "883953f4-6105-42a2-a16a-77a8eac79483",
    )


def test_reactivation_without_message_id_still_gets_a_key() -> None:
    [event] = parse_case("subscription_change_reactivated").events
    assert event.message_id is None and event.key.startswith("postmark:h:")


@pytest.mark.parametrize(
    ("bounce_type", "kind"),
    [
        ("HardBounce", Kind.HARD_BOUNCE),
        ("BadEmailAddress", Kind.HARD_BOUNCE),
        ("SoftBounce", Kind.SOFT_BOUNCE),
        ("Transient", Kind.SOFT_BOUNCE),
        ("DnsError", Kind.SOFT_BOUNCE),
        ("SpamNotification", Kind.SPAM_COMPLAINT),
        ("SpamComplaint", Kind.SPAM_COMPLAINT),
        ("Blocked", Kind.BLOCKED),
        ("DMARCPolicy", Kind.BLOCKED),
        ("ManuallyDeactivated", Kind.UNSUBSCRIBE),
        ("Unsubscribe", Kind.UNSUBSCRIBE),
        ("Subscribe", None),
        ("ChallengeVerification", None),
        ("VirusNotification", None),
        ("SomethingNew", None),
    ],
)
def test_bounce_type_table(bounce_type: str, kind: Kind | None) -> None:
    doc = {**orjson.loads(payload("postmark", "bounce_hard")), "Type": bounce_type}
    result = make_parser().parse(orjson.dumps(doc))
    assert [e.kind for e in result.events] == ([kind] if kind else [])
    assert result.ignored == (Counter() if kind else Counter({f"Bounce:{bounce_type}": 1}))


@pytest.mark.parametrize(
    ("reason", "kind"),
    [
        ("HardBounce", Kind.HARD_BOUNCE),
        ("SpamComplaint", Kind.SPAM_COMPLAINT),
        (None, Kind.UNSUBSCRIBE),
    ],
)
def test_suppression_reason_table(reason: str | None, kind: Kind) -> None:
    doc = orjson.loads(payload("postmark", "subscription_change_unsubscribed"))
    doc["SuppressionReason"] = reason
    assert [e.kind for e in make_parser().parse(orjson.dumps(doc)).events] == [kind]


def test_unknown_record_type_is_ignored() -> None:
    result = make_parser().parse(b'{"RecordType": "InboundBlocked", "Recipient": "x@example.com"}')
    assert result.events == [] and result.ignored == Counter(InboundBlocked=1)


def test_keys_are_stable_across_redeliveries_and_distinct_per_record() -> None:
    parser = make_parser()
    keys = [
        parser.parse(payload("postmark", case)).events[0].key
        for case in (
            "bounce_hard",
            "bounce_hard",
            "bounce_soft",
            "subscription_change_unsubscribed",
        )
    ]
    assert keys[0] == keys[1] and len(set(keys)) == 3
    change = payload("postmark", "subscription_change_unsubscribed")
    assert parser.parse(change).events[0].key == keys[3]


# -- timestamps ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2019-11-05T16:33:54.9070259Z", BOUNCED_AT),
        ("2019-11-05T16:33:54.9070259+00:00", BOUNCED_AT),
        ("2019-11-05T17:33:54.907025+01:00", BOUNCED_AT),
        ("2019-11-05T16:33:54.90702599999Z", BOUNCED_AT),
        ("2019-11-05T16:33:54Z", BOUNCED_AT - 0.907025),
        ("2019-11-05T16:33:54.9070259", BOUNCED_AT),
    ],
)
def test_postmark_time_parses_iso_with_offset_and_long_fractions(
    text: str, expected: float
) -> None:
    assert IsoTime().deserialize(text) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    "text", ["yesterday", "", 1573, None, "2019-13-45T00:00:00Z", "0001-01-01T00:00:00+23:59"]
)
def test_postmark_time_rejects_what_is_not_a_timestamp(text: Any) -> None:
    with pytest.raises(ValidationError):
        IsoTime(allow_none=False).deserialize(text)


# -- verification --------------------------------------------------------------------------------


def test_previous_password_is_accepted_during_rotation() -> None:
    parser = make_parser(PASSWORD_PREVIOUS=OLD_PASSWORD)
    body = payload("postmark", "bounce_hard")
    parser.verify(request(body, basic_auth_header(USER, PASSWORD)))
    parser.verify(request(body, basic_auth_header(USER, OLD_PASSWORD)))


def test_user_and_password_rotate_together() -> None:
    """During rotation each generation's pair works, and a user from one with the password of
    the other does not: that pair is no credential anybody was given."""
    old_user = "postmark-hooks-old"
    parser = make_parser(USERNAME_PREVIOUS=old_user, PASSWORD_PREVIOUS=OLD_PASSWORD)
    body = payload("postmark", "bounce_hard")
    parser.verify(request(body, basic_auth_header(USER, PASSWORD)))
    parser.verify(request(body, basic_auth_header(old_user, OLD_PASSWORD)))
    for user, password in [(old_user, PASSWORD), (USER, OLD_PASSWORD)]:
        with pytest.raises(SignatureInvalid):
            parser.verify(request(body, basic_auth_header(user, password)))


def test_a_key_without_a_previous_value_keeps_its_current_one() -> None:
    """Only the user rotates: the previous generation is the old user with today's password."""
    parser = make_parser(USERNAME_PREVIOUS="postmark-hooks-old")
    body = payload("postmark", "bounce_hard")
    parser.verify(request(body, basic_auth_header(USER, PASSWORD)))
    parser.verify(request(body, basic_auth_header("postmark-hooks-old", PASSWORD)))
    with pytest.raises(SignatureInvalid):
        parser.verify(request(body, basic_auth_header("postmark-hooks-old", "wrong")))


@pytest.mark.parametrize(
    "headers",
    [
        {},
        basic_auth_header(USER, "wrong"),
        basic_auth_header("someone", PASSWORD),
        basic_auth_header(USER, OLD_PASSWORD),
        basic_auth_header(USER, PASSWORD + "x"),
        {"Authorization": "Bearer " + PASSWORD},
        {"Authorization": "Basic"},
        {"Authorization": "Basic %%%"},
        {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()},
        {"Authorization": "Basic " + base64.b64encode(b"\xff\xfe:x").decode()},
        {"Authorization": "Basic ÄÖÜ"},
        {"Authorization": "Basic \udcff"},
    ],
)
def test_bad_credentials_are_401(headers: dict[str, str]) -> None:
    with pytest.raises(SignatureInvalid) as exc:
        make_parser().verify(request(payload("postmark", "bounce_hard"), headers))
    assert exc.value.status == 401


# -- malformed bodies and bad records ------------------------------------------------------------


@pytest.mark.parametrize("body", [b"", b"{", b"[]", b'[{"RecordType": "Bounce"}]', b"null", b"7"])
def test_malformed_body_is_400(body: bytes) -> None:
    with pytest.raises(PayloadInvalid) as exc:
        make_parser().parse(body)
    assert exc.value.status == 400


@pytest.mark.parametrize(
    ("case", "change", "why"),
    [
        ("bounce_hard", {"Email": None}, "Email"),
        ("bounce_hard", {"Email": "nobody"}, "Not a valid email"),
        ("bounce_hard", {"BouncedAt": "last tuesday"}, "ISO 8601"),
        ("bounce_hard", {"Type": None}, "Type"),
        ("spam_complaint", {"BouncedAt": None}, "BouncedAt"),
        ("subscription_change_unsubscribed", {"Recipient": None}, "Recipient"),
        ("subscription_change_unsubscribed", {"SuppressSending": "maybe"}, "SuppressSending"),
        ("delivery", {"RecordType": None}, "RecordType missing"),
    ],
)
def test_invalid_record_is_quarantined_with_a_reason(
    case: str, change: dict[str, Any], why: str
) -> None:
    doc = {**orjson.loads(payload("postmark", case)), **change}
    result = make_parser().parse(orjson.dumps(doc))
    assert result.events == []
    [quarantined] = result.quarantined
    assert why in quarantined.reason and quarantined.raw == doc


def test_a_manually_deactivated_address_is_an_unsubscribe_at_once() -> None:
    """Postmark's suppression list holds the address because the sender deactivated it: an
    opt-out, suppressed at once like SuppressionReason ManualSuppression."""
    [event] = parse_case("bounce_manually_deactivated").events
    assert (event.email, event.kind) == ("deactivated@example.com", Kind.UNSUBSCRIBE)
    assert event.reason == "Manually deactivated by the sender"


def test_an_isp_block_stays_a_counted_block() -> None:
    [event] = parse_case("bounce_blocked").events
    assert (event.email, event.kind) == ("strict.isp@example.com", Kind.BLOCKED)
    assert event.reason is not None and "blocked using zen.spamhaus.org" in event.reason
