"""Property tests: whatever arrives, every ESP module answers with a ParseResult or an IntakeError
(a clear 4xx), never another exception (a 500)."""

from __future__ import annotations

import base64
import math
from functools import cache
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncworker import codec
from syncworker.errors import PayloadInvalid, SignatureInvalid
from syncworker.events import Kind, normalize_email
from syncworker.intake.contract import EspParser, ParseResult
from syncworker.intake.registry import ESP_PARSERS
from tests.intake.signing import (
    PAYLOADS,
    SENDGRID_SIGNATURE,
    SENDGRID_TIMESTAMP,
    EspSigner,
    request,
)
from tests.intake.signing import signer_for as new_signer

pytestmark = pytest.mark.slow  # property searches over every ESP

ESPS = sorted(ESP_PARSERS)
FUZZ = settings(max_examples=200, deadline=None)

HEADER_NAMES = st.sampled_from(
    [
        "Authorization",
        SENDGRID_SIGNATURE,
        SENDGRID_TIMESTAMP,
        "Content-Type",
        "X-Other",
        # every verifier's headers, so fuzzed values reach each of them
        "Mailtrap-Signature",
        "X-Postal-Signature",
        "X-Postal-Signature-256",
        "X-Mandrill-Signature",
        "Signature",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "svix-id",
        "svix-timestamp",
        "svix-signature",
        "X-Webhook-Checksum",
        "X-Webhook-Date",
        "x-amz-sns-message-type",
    ]
)
HEADER_VALUES = st.one_of(
    st.text(),
    st.text(alphabet="0123456789").map(lambda s: s[:12]),
    st.binary(max_size=80).map(lambda b: "Basic " + base64.b64encode(b).decode()),
)
JSON_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
# what the ESP modules look at, so generated events reach the schemas and the code tables
CODES = [
    "bounce", "dropped", "deferred", "spamreport", "unsubscribe", "group_unsubscribe",
    "group_resubscribe", "processed", "failed", "rejected", "unsubscribed", "complained",
    "delivered", "blocked", "spam", "unsub", "sent", "Bounce", "SpamComplaint",
    "SubscriptionChange", "Delivery", "HardBounce", "SoftBounce", "preblocked", "permanent",
    "temporary", "suppress-unsubscribe", "expired", "Bounced Address", "Invalid",
]  # fmt: skip
FIELDS = [
    "event", "email", "timestamp", "type", "reason", "status", "sg_message_id", "asm_group_id",
    "recipient", "severity", "message", "delivery-status", "time", "MessageID", "hard_bounce",
    "error", "source", "mj_list_id", "RecordType", "Type", "ID", "Email", "Recipient",
    "BouncedAt", "ChangedAt", "SuppressSending", "SuppressionReason", "Details", "MessageStream",
]  # fmt: skip
PLAUSIBLE = st.one_of(
    st.sampled_from(CODES),
    st.sampled_from(["a@example.com", "B@Example.COM ", "x", "", "<c@example.com>"]),
    st.integers(min_value=0, max_value=2**40),
    st.sampled_from(["2019-11-05T16:33:54.9070259Z", "2019-11-05T16:33:54+01:00", "1700000000"]),
    st.booleans(),
    JSON_VALUES,
)
EVENTS = st.dictionaries(st.sampled_from(FIELDS), PLAUSIBLE, max_size=12)


def templates(esp: str) -> list[dict[str, Any]]:
    """The native events of tests/payloads/<esp>/, to be mutated into near-valid events."""
    found: list[dict[str, Any]] = []
    for path in sorted((PAYLOADS / esp).glob("*.json")):
        doc = orjson.loads(path.read_bytes())
        items = doc if isinstance(doc, list) else [doc.get("event-data", doc)]
        found += [item for item in items if isinstance(item, dict)]
    return found


def mutated(esp: str) -> st.SearchStrategy[dict[str, Any]]:
    """A stored event with a few fields replaced or removed: most reach the code tables."""
    return st.builds(
        lambda template, changes, drop: {
            k: v for k, v in {**template, **changes}.items() if k not in drop
        },
        st.sampled_from(templates(esp)),
        st.dictionaries(st.sampled_from(FIELDS), PLAUSIBLE, max_size=3),
        st.sets(st.sampled_from(FIELDS), max_size=2),
    )


@cache
def signer_for(esp: str) -> EspSigner:
    """One signer (and so one key pair) per ESP for the whole run: examples must be cheap."""
    return new_signer(esp)


def check_result(result: ParseResult, esp: str) -> int:
    """Every event is well formed and queueable; returns how many outcomes the request had."""
    for event in result.events:
        assert event.esp == esp and event.source == esp
        assert isinstance(event.kind, Kind)
        assert event.email == normalize_email(event.email) and "@" in event.email
        assert math.isfinite(event.occurred_at) and event.occurred_at >= 0
        assert event.key.startswith(f"{esp}:")
        orjson.dumps(codec.dump(event, raw=True))  # raw too: it goes to quarantine as JSON
    return len(result.events) + sum(result.ignored.values()) + len(result.quarantined)


def parse_or_payload_invalid(parser: EspParser, body: bytes) -> ParseResult | None:
    try:
        return parser.parse(body)
    except PayloadInvalid:
        return None


@pytest.mark.parametrize("esp", ESPS)
@FUZZ
@given(body=st.binary(max_size=400), headers=st.dictionaries(HEADER_NAMES, HEADER_VALUES))
def test_arbitrary_requests_get_a_clear_answer(
    esp: str, body: bytes, headers: dict[str, str]
) -> None:
    parser = signer_for(esp).parser()
    try:
        parser.verify(request(body, headers))
    except SignatureInvalid:
        pass
    result = parse_or_payload_invalid(parser, body)
    if result is not None:
        check_result(result, esp)


@pytest.mark.parametrize("esp", ESPS)
@FUZZ
@given(body=st.binary(max_size=400) | JSON_VALUES.map(orjson.dumps))
def test_signed_arbitrary_bodies_parse_or_are_payload_invalid(esp: str, body: bytes) -> None:
    signer = signer_for(esp)
    parser = signer.parser()
    req = signer.sign(body)
    if signer.signs_any_bytes:
        parser.verify(req)  # authenticated: from here only PayloadInvalid may be raised
    result = parse_or_payload_invalid(parser, req.body)
    if result is not None:
        check_result(result, esp)


@pytest.mark.parametrize("esp", ESPS)
@FUZZ
@given(data=st.data())
def test_signed_odd_events_become_exactly_one_outcome(esp: str, data: st.DataObject) -> None:
    """Each event of a verified request is an event, an ignored count or quarantined: none lost."""
    event = data.draw(mutated(esp) | EVENTS | JSON_VALUES, label="event")
    signer = signer_for(esp)
    parser = signer.parser()
    req = signer.sign(signer.envelope(event))
    parser.verify(req)
    result = parse_or_payload_invalid(parser, req.body)
    if result is not None:
        assert check_result(result, esp) == 1
