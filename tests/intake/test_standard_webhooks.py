"""The generic Standard Webhooks source, and the verifier it shares with Resend."""

from __future__ import annotations

import base64
import os
from collections import Counter
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncworker.config import SourceConfig
from syncworker.devkit.emulators.webhook_receiver import new_secret
from syncworker.errors import ConfigError, PayloadInvalid, SignatureInvalid
from syncworker.events import Kind, content_key
from syncworker.intake.contract import MAX_TS
from syncworker.intake.esps.standard_webhooks import StandardWebhooksParser
from tests.intake.signers.standard_webhooks import signed_headers
from tests.intake.signing import payload, request

NOW = 1_740_830_000
SECRET = new_secret()
OLD_SECRET = new_secret()


def make_parser(
    secret: str = SECRET, previous: str | None = None, name: str = "standard_webhooks"
) -> StandardWebhooksParser:
    values = {"SECRET": secret, **({"SECRET_PREVIOUS": previous} if previous else {})}
    config = SourceConfig(name=name, esp="standard_webhooks", values=values)
    return StandardWebhooksParser(config, clock=lambda: NOW)


def signed(body: bytes, *secrets: str, **kwargs: Any) -> dict[str, str]:
    return signed_headers(body, *(secrets or (SECRET,)), **{"timestamp": NOW, **kwargs})


def body_of(*events: Any) -> bytes:
    return orjson.dumps({"events": list(events)})


def event(**fields: Any) -> dict[str, Any]:
    return {
        "email": "alice@example.com",
        "kind": "hard_bounce",
        "occurred_at": "2025-03-01T10:00:00Z",
        **fields,
    }


# -- verification (syncworker/intake/auth/standard_webhooks.py) ---------------------------------


def test_signed_request_is_accepted() -> None:
    body = payload("standard_webhooks", "batch")
    make_parser().verify(request(body, signed(body)))


def test_svix_header_names_are_accepted() -> None:
    body = payload("standard_webhooks", "single")
    make_parser().verify(request(body, signed(body, prefix="svix-")))


def test_one_matching_signature_among_several_is_enough() -> None:
    """A sender rotating its secret signs with both, space-separated; either may be ours."""
    body = payload("standard_webhooks", "single")
    headers = signed(body, new_secret(), SECRET, new_secret())
    make_parser().verify(request(body, headers))


def test_previous_secret_is_accepted_during_rotation() -> None:
    body = payload("standard_webhooks", "single")
    parser = make_parser(SECRET, OLD_SECRET)
    parser.verify(request(body, signed(body, SECRET)))
    parser.verify(request(body, signed(body, OLD_SECRET)))


def test_secret_without_prefix_or_padding_is_accepted() -> None:
    """The spec's reference library takes bare and unpadded base64 secrets as well."""
    key = os.urandom(25)  # 25 bytes: base64 with padding
    bare = base64.b64encode(key).decode().rstrip("=")
    body = payload("standard_webhooks", "single")
    make_parser(bare).verify(request(body, signed(body, "whsec_" + base64.b64encode(key).decode())))


@pytest.mark.parametrize("secret", ["whsec_not base64!", "whsec_", "whsec_====", "%%%"])
def test_a_secret_that_is_not_base64_stops_startup(secret: str) -> None:
    with pytest.raises(ConfigError) as exc:
        make_parser(SECRET, secret)
    [problem] = exc.value.problems
    assert problem.startswith("SYNCWORKER_STANDARD_WEBHOOKS_SECRET_PREVIOUS: ")
    assert secret not in problem  # the value of a secret is never echoed


def test_other_secret_is_refused() -> None:
    body = payload("standard_webhooks", "single")
    with pytest.raises(SignatureInvalid) as exc:
        make_parser().verify(request(body, signed(body, new_secret())))
    assert exc.value.status == 401


def test_signature_covers_the_raw_bytes() -> None:
    body = payload("standard_webhooks", "single")
    reformatted = orjson.dumps(orjson.loads(body))
    assert reformatted != body
    with pytest.raises(SignatureInvalid):
        make_parser().verify(request(reformatted, signed(body)))


def test_signature_covers_the_id_and_the_timestamp() -> None:
    body = payload("standard_webhooks", "single")
    headers = signed(body)
    for name, value in (("webhook-id", "msg_other"), ("webhook-timestamp", str(NOW + 1))):
        with pytest.raises(SignatureInvalid):
            make_parser().verify(request(body, {**headers, name: value}))


@pytest.mark.parametrize("skew", [-301, 301, -10_000_000])
def test_timestamp_outside_the_tolerance_is_refused(skew: int) -> None:
    body = payload("standard_webhooks", "single")
    with pytest.raises(SignatureInvalid, match="skew"):
        make_parser().verify(request(body, signed(body, timestamp=NOW + skew)))


@pytest.mark.parametrize("skew", [-299, 299])
def test_timestamp_inside_the_tolerance_is_accepted(skew: int) -> None:
    body = payload("standard_webhooks", "single")
    make_parser().verify(request(body, signed(body, timestamp=NOW + skew)))


@pytest.mark.parametrize(
    "change",
    [
        {"webhook-timestamp": "1740830000.5"},
        {"webhook-timestamp": "-1740830000"},
        {"webhook-timestamp": "١٧٤٠٨٣٠٠٠٠"},
        {"webhook-timestamp": "9" * 400},
        {"webhook-signature": "v1,not base64!"},
        {"webhook-signature": "v1"},
        {"webhook-signature": "garbage"},
        {"webhook-signature": "v1a,c2lnbmF0dXJl"},
        {"webhook-id": "msg\x00nul"},
        {"webhook-id": "msg_é"},
        {"webhook-id": "m" * 1000},
        {"webhook-id": ""},
        {"webhook-signature": ""},
    ],
)
def test_malformed_headers_are_401(change: dict[str, str]) -> None:
    body = payload("standard_webhooks", "single")
    with pytest.raises(SignatureInvalid) as exc:
        make_parser().verify(request(body, {**signed(body), **change}))
    assert exc.value.status == 401


def test_unknown_signature_versions_are_skipped() -> None:
    body = payload("standard_webhooks", "single")
    headers = signed(body)
    headers["webhook-signature"] = "v1a,c2lnbmF0dXJl v2,abc " + headers["webhook-signature"]
    make_parser().verify(request(body, headers))


def test_the_specs_published_test_vector_verifies() -> None:
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    headers = {
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "webhook-timestamp": "1614265330",
        "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    }
    config = SourceConfig(
        name="standard_webhooks", esp="standard_webhooks", values={"SECRET": secret}
    )
    parser = StandardWebhooksParser(config, clock=lambda: 1614265330)
    parser.verify(request(b'{"test": 2432232314}', headers))


HEADER_NAMES = st.sampled_from(
    [
        f"{prefix}-{part}"
        for prefix in ("webhook", "svix")
        for part in ("id", "timestamp", "signature")
    ]
)
HEADER_VALUES = st.one_of(
    st.text(max_size=60),
    st.integers(min_value=NOW - 400, max_value=NOW + 400).map(str),
    st.from_regex(r"(v1a?,[A-Za-z0-9+/=]{0,50} ?){0,3}", fullmatch=True),
)


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(headers=st.dictionaries(HEADER_NAMES, HEADER_VALUES), body=st.binary(max_size=200))
def test_any_headers_get_a_clear_answer(headers: dict[str, str], body: bytes) -> None:
    """Whatever the headers hold, verify() accepts or raises SignatureInvalid: never a 500."""
    try:
        make_parser().verify(request(body, headers))
    except SignatureInvalid:
        pass


# -- parse: syncworker's own shape -----------------------------------------------------------------


def test_a_batch_yields_each_kind() -> None:
    result = make_parser().parse(payload("standard_webhooks", "batch"))
    assert [(e.email, e.kind) for e in result.events] == [
        ("alice@example.com", Kind.HARD_BOUNCE),
        ("bob@example.com", Kind.SOFT_BOUNCE),
        ("carol@example.com", Kind.BLOCKED),
        ("dave@example.com", Kind.SPAM_COMPLAINT),
        ("erin@example.com", Kind.UNSUBSCRIBE),
        ("frank@example.com", Kind.RESUBSCRIBE),
    ]
    assert result.ignored == Counter(delivered=1) and result.quarantined == []
    assert all(e.source == e.esp == "standard_webhooks" for e in result.events)


def test_times_may_be_iso_with_or_without_offset_or_unix_seconds() -> None:
    times = [
        e.occurred_at for e in make_parser().parse(payload("standard_webhooks", "batch")).events
    ]
    assert times == [
        1740823200.0,  # 2025-03-01T10:00:00Z
        1740823200.0,  # Unix seconds
        1740819900.0,  # 10:05 at +01:00
        1740826800.25,
        1740830400.0,  # no offset: UTC
        1740830400.5,
    ]


def test_event_details_are_kept() -> None:
    first, second, *_ = make_parser().parse(payload("standard_webhooks", "batch")).events
    assert (first.reason, first.smtp_code, first.message_id) == (
        "550 5.1.1 user unknown",
        "550",
        "msg-1",
    )
    assert second.smtp_code == "452"  # a number is taken as text
    assert first.raw == orjson.loads(payload("standard_webhooks", "batch"))["events"][0]


def test_list_id_is_kept_for_subscription_changes() -> None:
    events = make_parser().parse(payload("standard_webhooks", "batch")).events
    assert [e.list_id for e in events if e.list_id] == ["newsletter", "newsletter"]


def test_a_single_event_object_is_accepted() -> None:
    [event_] = make_parser().parse(payload("standard_webhooks", "single")).events
    assert (event_.email, event_.kind, event_.reason) == (
        "heidi@example.com",
        Kind.UNSUBSCRIBE,
        "unsubscribed in the app",
    )


def test_what_syncworkers_webhook_destination_sends_is_accepted() -> None:
    """One syncworker's webhook destination can feed another's standard_webhooks source."""
    result = make_parser().parse(payload("standard_webhooks", "forwarded"))
    assert [(e.email, e.kind, e.key) for e in result.events] == [
        (
            "ivan@example.com",
            Kind.HARD_BOUNCE,
            "standard_webhooks:standard_webhooks:sendgrid:h:0f6f3c1f8a2d4b6e9c1a7e5d3b2f4a6c",
        ),
        (
            "judy@example.com",
            Kind.SPAM_COMPLAINT,
            "standard_webhooks:standard_webhooks:mailgun:"
            "f3c2b6a4d1e5f7a9b8c0d2e4f6a8b0c2d4e6f8a0b2c4d6e8f0",
        ),
    ]
    assert result.events[0].smtp_code == "550"


def test_an_empty_batch_is_a_ping() -> None:
    result = make_parser().parse(payload("standard_webhooks", "empty"))
    assert result.events == [] and result.ignored == Counter() and result.quarantined == []


def test_invalid_events_are_quarantined_and_the_rest_kept() -> None:
    result = make_parser().parse(payload("standard_webhooks", "invalid_events"))
    assert [e.email for e in result.events] == ["olivia@example.com"]
    reasons = [q.reason for q in result.quarantined]
    assert len(reasons) == 4
    assert "email" in reasons[0] and "occurred_at" in reasons[1]
    assert reasons[2:] == ["kind missing", "event is not an object"]


@pytest.mark.parametrize(
    "occurred_at", [-1, MAX_TS + 1, True, None, "", "2025-13-01T00:00:00Z", [1], "1740830000"]
)
def test_times_outside_the_format_or_range_are_quarantined(occurred_at: Any) -> None:
    result = make_parser().parse(body_of(event(occurred_at=occurred_at)))
    assert result.events == [] and len(result.quarantined) == 1


@pytest.mark.parametrize("event_id", [123, "", "x" * 201])
def test_an_id_must_be_a_short_string(event_id: Any) -> None:
    result = make_parser().parse(body_of(event(id=event_id)))
    assert result.events == [] and len(result.quarantined) == 1


@pytest.mark.parametrize(
    "body",
    [b'[{"kind": "hard_bounce"}]', b'{"events": {"kind": "hard_bounce"}}', b'"events"', b"null"],
)
def test_a_body_of_another_shape_is_400(body: bytes) -> None:
    with pytest.raises(PayloadInvalid):
        make_parser().parse(body)


# -- keys ----------------------------------------------------------------------------------------


def test_keys_are_the_senders_ids_scoped_to_the_source() -> None:
    """Two senders choose ids independently, so the same id from each is two events."""
    body = body_of(event(id="evt_1"))
    [mine] = make_parser(name="app_one").parse(body).events
    [theirs] = make_parser(name="app_two").parse(body).events
    assert (mine.key, theirs.key) == (
        "standard_webhooks:app_one:evt_1",
        "standard_webhooks:app_two:evt_1",
    )


def test_keys_without_an_id_are_stable_for_redeliveries() -> None:
    parser = make_parser()
    [first] = parser.parse(body_of(event(message_id="m1"))).events
    [again] = parser.parse(body_of(event(message_id="m1"))).events
    [later] = parser.parse(
        body_of(event(message_id="m1", occurred_at="2025-03-01T10:00:01Z"))
    ).events
    assert first.key == again.key != later.key
    assert first.key == content_key(
        "standard_webhooks", "alice@example.com", Kind.HARD_BOUNCE, 1740823200.0, "m1"
    )


def test_one_event_without_an_id_is_keyed_on_the_webhook_id() -> None:
    parser = make_parser()
    body = body_of(event())
    headers = signed(body, msg_id="msg_abc")
    [keyed] = parser.parse_request(request(body, headers)).events
    assert keyed.key == "standard_webhooks:standard_webhooks:msg:msg_abc"


def test_an_event_id_wins_over_the_webhook_id() -> None:
    parser = make_parser()
    body = body_of(event(id="evt-1"))
    [keyed] = parser.parse_request(request(body, signed(body, msg_id="msg_abc"))).events
    assert keyed.key == "standard_webhooks:standard_webhooks:evt-1"


def test_several_events_keep_their_own_keys() -> None:
    parser = make_parser()
    body = body_of(event(email="a@example.com"), event(email="b@example.com"))
    events = parser.parse_request(request(body, signed(body, msg_id="msg_abc"))).events
    assert len({e.key for e in events}) == 2
    assert all(":msg:" not in e.key for e in events)
