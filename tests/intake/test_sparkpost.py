"""SparkPost: msys batches behind basic auth become hygiene events, classified by bounce_class."""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson
import pytest

from syncworker.config import SourceConfig
from syncworker.errors import PayloadInvalid, SignatureInvalid
from syncworker.events import Kind, content_key
from syncworker.intake.contract import ParseResult
from syncworker.intake.esps.sparkpost import BOUNCE_CLASSES, SparkPostParser
from tests.intake.signers.sparkpost import wrap
from tests.intake.signing import basic_auth_header, payload, request

USER, PASSWORD, OLD_PASSWORD = "sparkpost-hooks", "pw-current", "pw-previous"


def make_parser(**values: str) -> SparkPostParser:
    config = SourceConfig(
        name="sparkpost", esp="sparkpost", values={"USERNAME": USER, "PASSWORD": PASSWORD, **values}
    )
    return SparkPostParser(config)


def parse_case(case: str) -> ParseResult:
    body = payload("sparkpost", case)
    parser = make_parser()
    parser.verify(request(body, basic_auth_header(USER, PASSWORD)))
    return parser.parse(body)


def event(**fields: Any) -> dict[str, Any]:
    base = {
        "type": "bounce",
        "bounce_class": "10",
        "rcpt_to": "someone@example.com",
        "timestamp": "1454442600",
        "event_id": "92356927693813856",
        "message_id": "0e0d94b7-9085-4e3c-ab30-e3f2cd9c273e",
    }
    return {**base, **fields}


def parse_one(**fields: Any) -> ParseResult:
    return make_parser().parse(wrap(event(**fields)))


# -- events ------------------------------------------------------------------------------------


def test_batch_yields_hygiene_events_and_counts_the_rest() -> None:
    result = parse_case("batch")
    assert {e.email: e.kind for e in result.events} == {
        "hard.bounce@example.com": Kind.HARD_BOUNCE,
        "full.mailbox@example.com": Kind.SOFT_BOUNCE,
        "spam.block@example.com": Kind.BLOCKED,
        "reply.unsubscribe@example.com": Kind.UNSUBSCRIBE,
        "late.bounce@example.com": Kind.HARD_BOUNCE,
        "suppressed@example.com": Kind.BLOCKED,
        "complainer@example.com": Kind.SPAM_COMPLAINT,
        "list.leaver@example.com": Kind.UNSUBSCRIBE,
        "link.leaver@example.com": Kind.UNSUBSCRIBE,
    }
    assert result.ignored == Counter(bounce=1, delivery=1, delay=1, injection=1, open=1, click=1)
    assert result.quarantined == []


def test_bounce_event_carries_its_details() -> None:
    wrapper = orjson.loads(payload("sparkpost", "batch"))[0]
    [bounce] = [e for e in parse_case("batch").events if e.email == "hard.bounce@example.com"]
    assert (bounce.source, bounce.esp) == ("sparkpost", "sparkpost")
    assert bounce.occurred_at == 1454442601.0  # sent as the string "1454442601"
    assert bounce.message_id == "0e0d94b7-9085-4e3c-ab30-927693813801"
    assert bounce.smtp_code == "550"
    assert bounce.reason is not None and bounce.reason.startswith("550 5.1.1")
    assert bounce.key == "sparkpost:92356927693813801"
    assert bounce.raw == wrapper


@pytest.mark.parametrize(
    ("bounce_class", "kind"),
    [
        ("10", Kind.HARD_BOUNCE),
        ("30", Kind.HARD_BOUNCE),
        ("90", Kind.UNSUBSCRIBE),
        ("1", Kind.SOFT_BOUNCE),
        ("20", Kind.SOFT_BOUNCE),
        ("21", Kind.SOFT_BOUNCE),
        ("22", Kind.SOFT_BOUNCE),
        ("23", Kind.SOFT_BOUNCE),
        ("24", Kind.SOFT_BOUNCE),
        ("40", Kind.SOFT_BOUNCE),
        ("70", Kind.SOFT_BOUNCE),
        ("25", Kind.BLOCKED),
        ("50", Kind.BLOCKED),
        ("51", Kind.BLOCKED),
        ("52", Kind.BLOCKED),
        ("53", Kind.BLOCKED),
        ("54", Kind.BLOCKED),
        ("26", None),
        ("60", None),
        ("80", None),
        ("100", None),
        ("999", None),
    ],
)
def test_bounce_class_table(bounce_class: str, kind: Kind | None) -> None:
    result = parse_one(bounce_class=bounce_class)
    assert [e.kind for e in result.events] == ([kind] if kind else [])
    assert result.ignored == (Counter() if kind else Counter(bounce=1))


def test_every_documented_class_is_decided() -> None:
    """Each class of SparkPost's table is mapped, or deliberately left out as not hygiene."""
    documented = {"1", "10", "20", "21", "22", "23", "24", "25", "26", "30", "40"}
    documented |= {"50", "51", "52", "53", "54", "60", "70", "80", "90", "100"}
    assert set(BOUNCE_CLASSES) == documented - {"26", "60", "80", "100"}


def test_numeric_bounce_class_is_read_like_the_string() -> None:
    [bounce] = parse_one(bounce_class=10).events
    assert bounce.kind == Kind.HARD_BOUNCE


@pytest.mark.parametrize(
    ("fields", "kind"),
    [
        ({"type": "out_of_band", "bounce_class": "10"}, Kind.HARD_BOUNCE),
        ({"type": "policy_rejection", "bounce_class": "25"}, Kind.BLOCKED),
        ({"type": "generation_rejection", "bounce_class": "25"}, Kind.BLOCKED),
        ({"type": "spam_complaint", "fbtype": "abuse"}, Kind.SPAM_COMPLAINT),
        ({"type": "list_unsubscribe"}, Kind.UNSUBSCRIBE),
        ({"type": "link_unsubscribe"}, Kind.UNSUBSCRIBE),
        ({"type": "delay", "bounce_class": "21"}, None),
        ({"type": "generation_failure"}, None),
        ({"type": "delivery"}, None),
        ({"type": "initial_open"}, None),
        ({"type": "amp_click"}, None),
    ],
)
def test_event_type_table(fields: dict[str, Any], kind: Kind | None) -> None:
    result = parse_one(**fields)
    assert [e.kind for e in result.events] == ([kind] if kind else [])
    assert result.ignored == (Counter() if kind else Counter({fields["type"]: 1}))


def test_delay_is_not_a_bounce() -> None:
    """SparkPost retries a delay and reports the end of retrying as a soft-class bounce."""
    result = parse_one(type="delay", bounce_class="21", num_retries="3")
    assert result.events == [] and result.ignored == Counter(delay=1)


def test_unsubscribe_event_class_is_read() -> None:
    body = wrap(event(type="list_unsubscribe"), "unsubscribe_event")
    [leaver] = make_parser().parse(body).events
    assert leaver.kind == Kind.UNSUBSCRIBE


# -- pings and envelopes -----------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"[]", b'[{"msys": {}}]', b'{"msys": {}}'])
def test_pings_are_answered_with_nothing_to_do(body: bytes) -> None:
    result = make_parser().parse(body)
    assert (result.events, result.ignored, result.quarantined) == ([], Counter(), [])


def test_stored_ping_case() -> None:
    result = parse_case("ping")
    assert (result.events, result.quarantined) == ([], [])


def test_bare_wrapper_is_one_event() -> None:
    """The validate endpoint posts the sample it is given, which may be a bare wrapper object."""
    body = orjson.dumps({"msys": {"message_event": event()}})
    [bounce] = make_parser().parse(body).events
    assert bounce.email == "someone@example.com"


@pytest.mark.parametrize(
    "body", [b"", b"not json", b"[", b"null", b"{}", b'"msys"', b'{"message_event": {}}', b"\xff"]
)
def test_malformed_body_is_400(body: bytes) -> None:
    with pytest.raises(PayloadInvalid) as exc:
        make_parser().parse(body)
    assert exc.value.status == 400


def test_invalid_events_are_quarantined_with_a_reason() -> None:
    result = parse_case("invalid_events")
    assert [e.email for e in result.events] == ["fine@example.com"]
    reasons = [q.reason for q in result.quarantined]
    assert len(reasons) == 9
    assert "rcpt_to" in reasons[0] and "Missing data" in reasons[0]
    assert "Not a valid email address" in reasons[1]
    assert "timestamp" in reasons[2]
    assert "bounce_class" in reasons[3]
    assert reasons[4:] == [
        "event type missing",
        "more than one event class in a wrapper",
        "not an msys wrapper",
        "not an msys wrapper",
        "event is not an object",
    ]
    # the whole wrapper is kept, so the event class is not lost
    assert result.quarantined[1].raw["msys"]["message_event"]["rcpt_to"] == "not an email address"


@pytest.mark.parametrize("timestamp", [True, "soon", "1e20", -5, None, "nan"])
def test_event_with_an_unusable_timestamp_is_quarantined(timestamp: Any) -> None:
    result = parse_one(timestamp=timestamp)
    assert result.events == [] and len(result.quarantined) == 1


def test_metadata_of_an_unexpected_type_does_not_lose_the_event() -> None:
    [bounce] = parse_one(error_code=550, message_id=["x"], raw_reason={}, reason=5).events
    assert (bounce.smtp_code, bounce.message_id, bounce.reason) == ("550", None, "5")


# -- dedupe keys -------------------------------------------------------------------------------


def test_keys_are_stable_across_redeliveries_of_a_batch() -> None:
    first = parse_case("batch").events
    retry = parse_case("batch").events
    keys = [e.key for e in first]
    assert keys == [e.key for e in retry]
    assert len(set(keys)) == len(keys)


def test_event_without_an_id_gets_a_content_key() -> None:
    body = wrap({k: v for k, v in event().items() if k != "event_id"})
    [bounce] = make_parser().parse(body).events
    assert bounce.key == content_key(
        "sparkpost",
        "someone@example.com",
        Kind.HARD_BOUNCE,
        1454442600.0,
        "0e0d94b7-9085-4e3c-ab30-e3f2cd9c273e",
    )
    assert [e.key for e in make_parser().parse(body).events] == [bounce.key]


# -- verification ------------------------------------------------------------------------------


def test_current_and_previous_password_are_accepted() -> None:
    body = payload("sparkpost", "ping")
    parser = make_parser(PASSWORD_PREVIOUS=OLD_PASSWORD)
    parser.verify(request(body, basic_auth_header(USER, PASSWORD)))
    parser.verify(request(body, basic_auth_header(USER, OLD_PASSWORD)))


@pytest.mark.parametrize(
    "headers",
    [
        {},
        basic_auth_header(USER, "wrong"),
        basic_auth_header("someone-else", PASSWORD),
        basic_auth_header(USER, OLD_PASSWORD),  # no rotation configured
        {"Authorization": "Basic %%%"},
        {"Authorization": "Bearer " + PASSWORD},
        {"Authorization": "Basic \udcff"},
    ],
)
def test_wrong_or_malformed_credentials_are_401(headers: dict[str, str]) -> None:
    with pytest.raises(SignatureInvalid) as exc:
        make_parser().verify(request(payload("sparkpost", "ping"), headers))
    assert exc.value.status == 401


def test_a_refusal_by_a_suppression_list_suppresses_as_its_source() -> None:
    """SparkPost names why it refused to send to a suppressed address: the source decides the
    kind (system policy, its global list, is a hard bounce), and the reason is kept."""
    result = parse_case("suppressed")
    assert [(e.email, e.kind) for e in result.events] == [
        ("bounced.before@example.com", Kind.HARD_BOUNCE),
        ("complained.before@example.com", Kind.SPAM_COMPLAINT),
        ("unsubscribed.before@example.com", Kind.UNSUBSCRIBE),
        ("global.list@example.com", Kind.HARD_BOUNCE),
        ("reputation.block@example.com", Kind.BLOCKED),
    ]
    assert result.events[1].reason == (
        "554 5.7.1 recipient address was suppressed due to customer policy (Spam Complaint)"
    )


@pytest.mark.parametrize(
    ("reason", "kind"),
    [
        ("554 5.7.1 recipient address suppressed due to customer policy", Kind.HARD_BOUNCE),
        (
            "554 5.7.1 recipient address was suppressed due to customer policy (FBL)",
            Kind.SPAM_COMPLAINT,
        ),
        (
            "554 5.7.1 recipient address was suppressed due to customer policy (unsubscribe)",
            Kind.UNSUBSCRIBE,
        ),
        (
            "554 5.7.1 recipient address was suppressed due to customer policy (New Rule)",
            Kind.HARD_BOUNCE,
        ),
        ("550 5.7.1 [internal] recipient blackholed", Kind.BLOCKED),  # another admin policy
    ],
)
def test_admin_failure_table(reason: str, kind: Kind) -> None:
    wrapper = orjson.loads(payload("sparkpost", "suppressed"))[0]
    wrapper["msys"]["message_event"].update(raw_reason=reason, reason=reason)
    [event] = make_parser().parse(orjson.dumps([wrapper])).events
    assert event.kind == kind
