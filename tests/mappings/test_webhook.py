"""mappings/webhook.py against a Standard Webhooks receiver."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from mappings.webhook import Webhook
from syncworker.destinations import (
    BadCredentials,
    ContactChange,
    DestinationConfig,
    HttpClient,
    Kind,
    NotConfigured,
    OutcomeStatus,
)
from syncworker.devkit.emulators.webhook_receiver import WebhookReceiver, new_secret, sign
from tests.mappings.contract import EventsContract, addresses, event_change

SECRET = new_secret()


@pytest.fixture()
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(SECRET) as emulator:
        yield emulator


def make(receiver: WebhookReceiver, session: requests.Session, **settings: str) -> Webhook:
    values = {"URL": receiver.endpoint, "SECRET": SECRET, **settings}
    http = HttpClient("webhook", "", session=session, timeout=5.0)
    return Webhook(DestinationConfig("webhook", values), http)


class TestWebhookContract(EventsContract):
    destination = "webhook"

    @pytest.fixture()
    def emulator(self) -> Iterator[WebhookReceiver]:
        with WebhookReceiver(SECRET) as emulator:
            yield emulator

    def settings(self, emulator: WebhookReceiver) -> dict[str, str]:
        return {"URL": emulator.endpoint, "SECRET": SECRET}

    def bad_credentials(self, emulator: WebhookReceiver) -> dict[str, str]:
        return {"SECRET": new_secret()}

    def changes(self, emulator: WebhookReceiver, n: int) -> list[ContactChange]:
        return [event_change(e, Kind.SPAM_COMPLAINT) for e in addresses(n)]

    def snapshot(self, emulator: WebhookReceiver) -> Any:
        return emulator.webhook_ids

    def partial(
        self, emulator: WebhookReceiver
    ) -> tuple[list[ContactChange], dict[str, str], list[OutcomeStatus]]:
        """2000 bytes hold one of these changes per body; the second body gets a 503."""
        emulator.fail_next(1, status=503, after=1)
        changes = [event_change(e, Kind.UNSUBSCRIBE, reason="x" * 1200) for e in addresses(3)]
        expected = [OutcomeStatus.APPLIED, OutcomeStatus.RETRY, OutcomeStatus.APPLIED]
        return changes, {"MAX_BATCH_BYTES": "2000"}, expected

    def received_ids(self, emulator: WebhookReceiver) -> set[str]:
        return emulator.webhook_ids

    def duplicates(self, emulator: WebhookReceiver) -> int:
        return emulator.duplicates


def test_a_batch_is_one_signed_body_with_every_event(
    receiver: WebhookReceiver, session: requests.Session
) -> None:
    changes = [
        event_change("a@example.com", Kind.HARD_BOUNCE, reason="mailbox unknown"),
        event_change("b@example.com", Kind.UNSUBSCRIBE),
    ]
    outcomes = make(receiver, session).sync(changes)
    assert [o.status for o in outcomes] == [OutcomeStatus.APPLIED] * 2
    (delivery,) = receiver.deliveries
    assert delivery.payload["type"] == "syncworker.hygiene.batch"
    assert delivery.payload["timestamp"] == "2026-01-01T00:00:00.000Z"
    first = delivery.payload["data"]["events"][0]
    assert first["key"] == changes[0].key
    assert first["email"] == "a@example.com"
    assert first["kind"] == "hard_bounce"
    assert first["occurred_at"] == "2026-01-01T00:00:00.000Z"
    assert first["reason"] == "mailbox unknown"
    assert first["state"]["suppressed"] is True
    assert set(first["state"]["reasons"]) == {"hard_bounce"}
    assert [e["email"] for e in receiver.events] == ["a@example.com", "b@example.com"]


def test_the_signature_follows_standard_webhooks(
    receiver: WebhookReceiver, session: requests.Session
) -> None:
    """Checked here with the receiver's own signer over the raw bytes, not the mapping's code."""
    make(receiver, session).sync([event_change("a@example.com", Kind.UNSUBSCRIBE)])
    (request,) = receiver.requests
    webhook_id = request.headers["webhook-id"]
    timestamp = request.headers["webhook-timestamp"]
    assert webhook_id.startswith("msg_")
    assert abs(int(timestamp) - time.time()) < 60
    expected = sign(SECRET, webhook_id, timestamp, request.body)
    assert request.headers["webhook-signature"] == expected
    assert request.headers["content-type"] == "application/json"


def test_a_retry_keeps_the_webhook_id_and_the_receiver_dedupes_it(
    receiver: WebhookReceiver, session: requests.Session
) -> None:
    changes = [event_change(e, Kind.HARD_BOUNCE) for e in addresses(3)]
    receiver.fail_next(1, status=503)
    first = make(receiver, session).sync(changes)
    assert {o.status for o in first} == {OutcomeStatus.RETRY}
    make(receiver, session).sync(changes)
    make(receiver, session).sync(changes)
    ids = [r.headers["webhook-id"] for r in receiver.requests]
    assert len(ids) == 3 and len(set(ids)) == 1
    assert [r.status for r in receiver.requests] == [503, 200, 200]
    assert len(receiver.deliveries) == 1
    assert receiver.duplicates == 1


def test_the_webhook_id_depends_on_the_events_not_their_order(
    receiver: WebhookReceiver, session: requests.Session
) -> None:
    changes = [event_change(e, Kind.HARD_BOUNCE) for e in addresses(3)]
    make(receiver, session).sync(changes)
    make(receiver, session).sync(list(reversed(changes)))
    make(receiver, session).sync(changes[:2])
    ids = [r.headers["webhook-id"] for r in receiver.requests]
    assert ids[0] == ids[1] != ids[2]


def test_a_wrong_secret_is_rejected_as_bad_credentials(
    receiver: WebhookReceiver, session: requests.Session
) -> None:
    with pytest.raises(BadCredentials):
        make(receiver, session, SECRET=new_secret()).sync(
            [event_change("a@example.com", Kind.UNSUBSCRIBE)]
        )
    assert receiver.rejected == 1
    assert receiver.deliveries == []


def test_while_rotating_both_secrets_sign_and_either_receiver_accepts(
    session: requests.Session,
) -> None:
    old, new = new_secret(), new_secret()
    for known in (old, new):
        with WebhookReceiver(known) as receiver:
            destination = make(receiver, session, SECRET=new, SECRET_PREVIOUS=old)
            outcomes = destination.sync([event_change("a@example.com", Kind.UNSUBSCRIBE)])
            assert outcomes[0].status is OutcomeStatus.APPLIED
            signatures = receiver.requests[0].headers["webhook-signature"].split()
            assert len(signatures) == 2 and all(s.startswith("v1,") for s in signatures)


def test_a_receiver_with_two_secrets_accepts_a_sender_with_one(session: requests.Session) -> None:
    """Rotation is the receiver's business too: it may hold old and new while the sender moves."""
    old, new = new_secret(), new_secret()
    with WebhookReceiver([old, new]) as receiver:
        for secret in (old, new):
            change = event_change("a@example.com", Kind.UNSUBSCRIBE, key=f"k-{secret}")
            assert make(receiver, session, SECRET=secret).sync([change])[0].ok
        assert len(receiver.deliveries) == 2


@pytest.mark.parametrize(
    "settings",
    [
        {"SECRET": "not base64!"},
        {"SECRET": ""},
        {"SECRET_PREVIOUS": "whsec_%%%"},
        {"URL": "ftp://example.com/hook"},
        {"MAX_BATCH_BYTES": "10"},
    ],
)
def test_bad_settings_are_a_configuration_error(
    receiver: WebhookReceiver, session: requests.Session, settings: dict[str, str]
) -> None:
    with pytest.raises(NotConfigured):
        make(receiver, session, **settings)


# -- the receiver itself ------------------------------------------------------------------------


def deliver(
    receiver: WebhookReceiver,
    session: requests.Session,
    *,
    secret: str = SECRET,
    timestamp: int | None = None,
    body: bytes = b'{"type":"t","data":{"events":[]}}',
    signature: str | None = None,
) -> requests.Response:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    headers = {
        "webhook-id": "msg_test",
        "webhook-timestamp": ts,
        "webhook-signature": signature or sign(secret, "msg_test", ts, body),
        "Content-Type": "application/json",
    }
    return session.post(receiver.endpoint, data=body, headers=headers)


def test_receiver_verifies_signature_timestamp_and_headers(
    receiver: WebhookReceiver, session: requests.Session
) -> None:
    assert deliver(receiver, session, secret=new_secret()).status_code == 401
    assert deliver(receiver, session, timestamp=int(time.time()) - 600).status_code == 401
    assert deliver(receiver, session, signature="v1,AAAA").status_code == 401
    assert session.post(receiver.endpoint, json={"type": "t"}).status_code == 401
    assert receiver.rejected == 4
    assert deliver(receiver, session).status_code == 200
    assert json.loads(receiver.deliveries[0].body) == {"type": "t", "data": {"events": []}}


def test_receiver_accepts_one_good_signature_among_several(
    receiver: WebhookReceiver, session: requests.Session
) -> None:
    now = int(time.time())
    body = b'{"data":{}}'
    good = sign(SECRET, "msg_test", now, body)
    response = deliver(receiver, session, body=body, timestamp=now, signature=f"v1,AAAA {good}")
    assert response.status_code == 200
