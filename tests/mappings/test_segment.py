"""mappings/segment.py against the Segment emulator."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from mappings.segment import Segment
from syncworker.destinations import (
    ContactChange,
    DestinationConfig,
    HttpClient,
    Kind,
    NotConfigured,
    OutcomeStatus,
    Throttled,
)
from syncworker.devkit.emulators.segment import SegmentEmulator
from tests.mappings.contract import T0, EventsContract, addresses, event_change, state

NAMES = {
    Kind.UNSUBSCRIBE: "Unsubscribed",
    Kind.HARD_BOUNCE: "Email Bounced",
    Kind.SPAM_COMPLAINT: "Email Marked as Spam",
    Kind.SOFT_BOUNCE: "Email Soft Bounced",
    Kind.BLOCKED: "Email Blocked",
    Kind.RESUBSCRIBE: "Resubscribed",
}


@pytest.fixture()
def segment() -> Iterator[SegmentEmulator]:
    with SegmentEmulator() as emulator:
        yield emulator


def make(emulator: SegmentEmulator, session: requests.Session, **settings: str) -> Segment:
    values = {"WRITE_KEY": emulator.write_key, **settings}
    http = HttpClient("segment", emulator.url, session=session, timeout=5.0)
    return Segment(DestinationConfig("segment", values), http)


class TestSegmentContract(EventsContract):
    destination = "segment"

    @pytest.fixture()
    def emulator(self) -> Iterator[SegmentEmulator]:
        with SegmentEmulator() as emulator:
            yield emulator

    def settings(self, emulator: SegmentEmulator) -> dict[str, str]:
        return {"WRITE_KEY": emulator.write_key, "BASE_URL": emulator.url}

    def bad_credentials(self, emulator: SegmentEmulator) -> dict[str, str]:
        return {"WRITE_KEY": "revoked-key"}

    def changes(self, emulator: SegmentEmulator, n: int) -> list[ContactChange]:
        return [event_change(e, Kind.HARD_BOUNCE) for e in addresses(n)]

    def snapshot(self, emulator: SegmentEmulator) -> Any:
        return emulator.message_ids

    def partial(
        self, emulator: SegmentEmulator
    ) -> tuple[list[ContactChange], dict[str, str], list[OutcomeStatus]]:
        """4000 bytes hold two of these ~1.9 KB changes: 2 requests, the second gets a 503."""
        emulator.fail_next(1, status=503, after=1)
        changes = [event_change(e, Kind.UNSUBSCRIBE, reason="x" * 1000) for e in addresses(3)]
        expected = [OutcomeStatus.APPLIED, OutcomeStatus.APPLIED, OutcomeStatus.RETRY]
        return changes, {"MAX_BATCH_BYTES": "4000"}, expected

    def received_ids(self, emulator: SegmentEmulator) -> set[str]:
        return emulator.message_ids

    def duplicates(self, emulator: SegmentEmulator) -> int:
        return emulator.duplicates


@pytest.mark.parametrize("kind", list(Kind))
def test_each_kind_is_one_track_and_one_identify(
    segment: SegmentEmulator, session: requests.Session, kind: Kind
) -> None:
    change = event_change("a@example.com", kind, reason="550 5.1.1 mailbox unknown")
    outcomes = make(segment, session).sync([change])
    assert [o.status for o in outcomes] == [OutcomeStatus.APPLIED]
    (track,) = segment.tracks
    assert track["event"] == NAMES[kind]
    assert track["userId"] == "a@example.com"
    assert track["timestamp"] == "2026-01-01T00:00:00.000Z"
    assert track["properties"]["kind"] == kind.value
    assert track["properties"]["reason"] == "550 5.1.1 mailbox unknown"
    assert track["properties"]["event_key"] == change.key
    (identify,) = segment.identifies
    assert identify["traits"]["email"] == "a@example.com"
    assert identify["traits"]["email_suppressed"] is change.state.suppressed
    assert segment.dropped == []


def test_identify_carries_the_hygiene_traits(
    segment: SegmentEmulator, session: requests.Session
) -> None:
    change = event_change(
        "a@example.com", Kind.SPAM_COMPLAINT, reasons=("hard_bounce", "spam_complaint")
    )
    make(segment, session).sync([change])
    traits = segment.identifies[0]["traits"]
    assert traits == {
        "email": "a@example.com",
        "email_suppressed": True,
        "email_unsubscribed": False,
        "email_bounced": True,
        "email_complained": True,
        "email_suppression_reasons": ["hard_bounce", "spam_complaint"],
    }


def test_message_ids_derive_from_the_event_key(
    segment: SegmentEmulator, session: requests.Session
) -> None:
    first = event_change("a@example.com", Kind.UNSUBSCRIBE, key="postmark:1")
    same = event_change("a@example.com", Kind.UNSUBSCRIBE, key="postmark:1", at=T0 + 5)
    other = event_change("a@example.com", Kind.UNSUBSCRIBE, key="postmark:2")
    make(segment, session).sync([first])
    make(segment, session).sync([same])
    assert len(segment.message_ids) == 2
    make(segment, session).sync([other])
    assert len(segment.message_ids) == 4
    assert all(m.startswith("syncworker-") for m in segment.message_ids)


def test_a_retry_replays_the_same_message_ids(
    segment: SegmentEmulator, session: requests.Session
) -> None:
    """A 5xx leaves the batch to be retried; the replay is deduplicated, nothing is lost."""
    changes = [event_change(e, Kind.HARD_BOUNCE) for e in addresses(5)]
    make(segment, session).sync(changes)
    segment.fail_next(1, status=500)
    retried = make(segment, session).sync(changes)
    assert {o.status for o in retried} == {OutcomeStatus.RETRY}
    make(segment, session).sync(changes)
    assert len(segment.message_ids) == 10
    assert segment.duplicates == 10
    assert len(segment.received) == 20


def test_a_newer_state_sends_a_fresh_identify(
    segment: SegmentEmulator, session: requests.Session
) -> None:
    change = event_change("a@example.com", Kind.UNSUBSCRIBE, key="k1")
    active = state("a@example.com", at=T0 + 9, version=2)
    newer = ContactChange(change.key, change.email, active, change.event)
    make(segment, session).sync([change])
    make(segment, session).sync([newer])
    assert len(segment.tracks) == 1
    assert [i["traits"]["email_suppressed"] for i in segment.identifies] == [True, False]


def test_anonymous_ids_instead_of_the_address(
    segment: SegmentEmulator, session: requests.Session
) -> None:
    make(segment, session, USER_ID="anonymous").sync(
        [event_change("a@example.com", Kind.UNSUBSCRIBE)]
    )
    ids = {m.get("anonymousId") for m in segment.messages}
    assert len(ids) == 1 and None not in ids
    assert "a@example.com" not in ids
    assert all("userId" not in m for m in segment.messages)


def test_requests_use_basic_auth_with_the_write_key(
    segment: SegmentEmulator, session: requests.Session
) -> None:
    make(segment, session).sync([event_change("a@example.com", Kind.UNSUBSCRIBE)])
    (request,) = segment.requests
    assert request.path == "/v1/batch"
    user_pass = base64.b64decode(request.headers["authorization"].removeprefix("Basic "))
    assert user_pass == f"{segment.write_key}:".encode()
    assert request.headers["content-type"] == "application/json"


def test_a_batch_of_long_reasons_is_split_under_500_kb(
    segment: SegmentEmulator, session: requests.Session
) -> None:
    reason = "x" * 20_000
    changes = [event_change(e, Kind.SOFT_BOUNCE, reason=reason) for e in addresses(100)]
    segment.max_request_bytes = 100_000
    outcomes = make(segment, session, MAX_BATCH_BYTES="100000").sync(changes)
    assert {o.status for o in outcomes} == {OutcomeStatus.APPLIED}
    assert len(segment.requests) > 1
    assert all(len(r.body) <= 100_000 for r in segment.requests)
    assert len(segment.tracks) == 100
    assert all(len(t["properties"]["reason"]) == 1000 for t in segment.tracks)


def test_a_429_carries_retry_after(segment: SegmentEmulator, session: requests.Session) -> None:
    segment.rate_limit(1, per_seconds=20)
    destination = make(segment, session)
    destination.sync([event_change("a@example.com", Kind.UNSUBSCRIBE)])
    with pytest.raises(Throttled) as caught:
        destination.sync([event_change("b@example.com", Kind.UNSUBSCRIBE)])
    assert 1 <= caught.value.retry_after <= 20
    response = segment.requests[-1]
    assert response.status == 429


@pytest.mark.parametrize(
    "settings", [{"USER_ID": "phone"}, {"MAX_BATCH_BYTES": "600000"}, {"MAX_BATCH_BYTES": "big"}]
)
def test_bad_settings_are_a_configuration_error(
    segment: SegmentEmulator, session: requests.Session, settings: dict[str, str]
) -> None:
    with pytest.raises(NotConfigured):
        make(segment, session, **settings)


# -- the emulator itself ------------------------------------------------------------------------


def post(segment: SegmentEmulator, session: requests.Session, body: bytes) -> requests.Response:
    return session.post(
        segment.url + "/v1/batch",
        data=body,
        auth=(segment.write_key, ""),
        headers={"Content-Type": "application/json"},
    )


def test_emulator_rejects_oversized_and_malformed_requests(
    segment: SegmentEmulator, session: requests.Session
) -> None:
    big_event = {"type": "track", "userId": "u", "event": "E", "properties": {"x": "y" * 33_000}}
    assert post(segment, session, json.dumps({"batch": [big_event]}).encode()).status_code == 400
    small = {"type": "track", "userId": "u", "event": "E", "properties": {"x": "y" * 30_000}}
    too_big = json.dumps({"batch": [small] * 18}).encode()
    assert post(segment, session, too_big).status_code == 400
    assert post(segment, session, b"{not json").status_code == 400
    assert segment.received == []


def test_emulator_accepts_but_drops_messages_without_an_id(
    segment: SegmentEmulator, session: requests.Session
) -> None:
    batch = [{"type": "track", "event": "E"}, {"type": "track", "userId": "u"}]
    assert post(segment, session, json.dumps({"batch": batch}).encode()).status_code == 200
    assert len(segment.dropped) == 2
    assert segment.messages == []


def test_emulator_429_has_retry_after_and_rate_limit_reset(
    segment: SegmentEmulator, session: requests.Session
) -> None:
    segment.rate_limit(0, per_seconds=3)
    response = post(segment, session, b'{"batch": []}')
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "3"
    assert response.headers["X-RateLimit-Reset"] == "3"


def test_emulator_checks_the_write_key(segment: SegmentEmulator, session: requests.Session) -> None:
    response = session.post(segment.url + "/v1/batch", json={"batch": []}, auth=("wrong", ""))
    assert response.status_code == 401
    body = {"batch": [], "writeKey": segment.write_key}
    assert session.post(segment.url + "/v1/batch", json=body).status_code == 200
