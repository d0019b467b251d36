"""mappings/amplitude.py against the Amplitude emulator."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from mappings import amplitude as amplitude_mapping
from mappings import segment
from mappings.amplitude import Amplitude
from syncworker.destinations import (
    BadCredentials,
    ContactChange,
    DestinationConfig,
    HttpClient,
    Kind,
    NotConfigured,
    OutcomeStatus,
    Throttled,
)
from syncworker.devkit.emulators.amplitude import AmplitudeEmulator, device_of
from tests.mappings.contract import T0, EventsContract, addresses, event_change

APPLIED, FAILED, RETRY = OutcomeStatus.APPLIED, OutcomeStatus.FAILED, OutcomeStatus.RETRY


@pytest.fixture()
def amplitude() -> Iterator[AmplitudeEmulator]:
    with AmplitudeEmulator() as emulator:
        yield emulator


def make(emulator: AmplitudeEmulator, session: requests.Session, **settings: str) -> Amplitude:
    values = {"API_KEY": emulator.api_key, **settings}
    http = HttpClient("amplitude", emulator.url, session=session, timeout=5.0)
    return Amplitude(DestinationConfig("amplitude", values), http)


class TestAmplitudeContract(EventsContract):
    destination = "amplitude"

    @pytest.fixture()
    def emulator(self) -> Iterator[AmplitudeEmulator]:
        with AmplitudeEmulator() as emulator:
            yield emulator

    def settings(self, emulator: AmplitudeEmulator) -> dict[str, str]:
        return {"API_KEY": emulator.api_key, "BASE_URL": emulator.url}

    def bad_credentials(self, emulator: AmplitudeEmulator) -> dict[str, str]:
        return {"API_KEY": "revoked-key"}

    def changes(self, emulator: AmplitudeEmulator, n: int) -> list[ContactChange]:
        return [event_change(e, Kind.HARD_BOUNCE) for e in addresses(n)]

    def snapshot(self, emulator: AmplitudeEmulator) -> Any:
        return emulator.insert_ids, emulator.users

    def partial(
        self, emulator: AmplitudeEmulator
    ) -> tuple[list[ContactChange], dict[str, str], list[OutcomeStatus]]:
        """A user id under Amplitude's 5-character minimum: that event fails, the rest go again."""
        changes = [
            event_change("first@example.com", Kind.UNSUBSCRIBE),
            event_change("a@b", Kind.UNSUBSCRIBE),
            event_change("third@example.com", Kind.UNSUBSCRIBE),
        ]
        return changes, {}, [APPLIED, FAILED, APPLIED]

    def received_ids(self, emulator: AmplitudeEmulator) -> set[str]:
        return emulator.insert_ids

    def duplicates(self, emulator: AmplitudeEmulator) -> int:
        return emulator.duplicates


def test_event_names_are_segments() -> None:
    """The same hygiene event carries the same name in every analytics tool."""
    # the names each module uses (both take them from syncworker.destinations)
    assert vars(amplitude_mapping)["EVENT_NAMES"] == vars(segment)["EVENT_NAMES"]


@pytest.mark.parametrize("kind", list(Kind))
def test_each_kind_is_one_event_carrying_the_traits(
    amplitude: AmplitudeEmulator, session: requests.Session, kind: Kind
) -> None:
    change = event_change("a@example.com", kind, reason="550 5.1.1 mailbox unknown")
    assert [o.status for o in make(amplitude, session).sync([change])] == [APPLIED]
    (event,) = amplitude.events
    assert event["event_type"] == vars(segment)["EVENT_NAMES"][kind]
    assert event["user_id"] == "a@example.com"
    assert event["time"] == int(T0 * 1000)
    assert event["insert_id"].startswith("syncworker-")
    props = event["event_properties"]
    assert props["kind"] == kind.value
    assert props["email"] == "a@example.com"
    assert props["reason"] == "550 5.1.1 mailbox unknown"
    assert props["event_key"] == change.key
    assert props["suppressed"] is change.state.suppressed
    traits = amplitude.users["a@example.com"]
    assert traits["email_suppressed"] is change.state.suppressed
    assert traits["email_suppression_reasons"] == sorted(change.state.reasons)


def test_the_request_carries_the_api_key_in_the_body(
    amplitude: AmplitudeEmulator, session: requests.Session
) -> None:
    make(amplitude, session).sync([event_change("a@example.com", Kind.UNSUBSCRIBE)])
    (request,) = amplitude.requests
    assert request.path == "/2/httpapi"
    assert request.headers["content-type"] == "application/json"
    assert request.json["api_key"] == amplitude.api_key
    assert "authorization" not in request.headers


def test_insert_ids_derive_from_the_event_key(
    amplitude: AmplitudeEmulator, session: requests.Session
) -> None:
    first = event_change("a@example.com", Kind.UNSUBSCRIBE, key="postmark:1")
    later = event_change("a@example.com", Kind.UNSUBSCRIBE, key="postmark:1", at=T0 + 9)
    other = event_change("a@example.com", Kind.UNSUBSCRIBE, key="postmark:2")
    make(amplitude, session).sync([first])
    make(amplitude, session).sync([later, other])
    digest = hashlib.sha256(b"amplitude\x1fpostmark:1").hexdigest()[:40]
    assert amplitude.insert_ids == {
        f"syncworker-{digest}",
        next(iter(amplitude.insert_ids - {f"syncworker-{digest}"})),
    }
    assert len(amplitude.insert_ids) == 2
    assert amplitude.duplicates == 1


def test_a_retry_after_a_server_error_is_deduplicated(
    amplitude: AmplitudeEmulator, session: requests.Session
) -> None:
    changes = [event_change(e, Kind.HARD_BOUNCE) for e in addresses(5)]
    make(amplitude, session).sync(changes)
    amplitude.fail_next(1, status=500)
    assert {o.status for o in make(amplitude, session).sync(changes)} == {RETRY}
    make(amplitude, session).sync(changes)
    assert len(amplitude.insert_ids) == 5
    assert amplitude.duplicates == 5


def test_rejected_events_fail_and_the_rest_are_sent_again_at_once(
    amplitude: AmplitudeEmulator, session: requests.Session
) -> None:
    """A 400 ingests nothing: the events it names fail, the others go in a second request."""
    changes = [event_change(e, Kind.HARD_BOUNCE) for e in addresses(4)]
    changes[1] = event_change("x@yz", Kind.HARD_BOUNCE)
    outcomes = make(amplitude, session).sync(changes)
    assert [o.status for o in outcomes] == [APPLIED, FAILED, APPLIED, APPLIED]
    assert [r.status for r in amplitude.requests] == [400, 200]
    assert len(amplitude.requests[1].json["events"]) == 3
    assert len(amplitude.insert_ids) == 3


def test_events_of_a_silenced_device_fail_and_the_rest_go_through(
    amplitude: AmplitudeEmulator, session: requests.Session
) -> None:
    """Amplitude's SilencedDeviceID 400 names ``silenced_events``; it ingests nothing."""
    amplitude.silenced.add(device_of("muted@example.com"))
    changes = [event_change(e, Kind.UNSUBSCRIBE) for e in ("ok@example.com", "muted@example.com")]
    outcomes = make(amplitude, session).sync(changes)
    assert [o.status for o in outcomes] == [APPLIED, FAILED]
    assert "Events silenced for device_id" in outcomes[1].detail
    assert [r.status for r in amplitude.requests] == [400, 200]
    assert [e["user_id"] for e in amplitude.events] == ["ok@example.com"]


def test_an_invalid_api_key_is_bad_credentials(
    amplitude: AmplitudeEmulator, session: requests.Session
) -> None:
    with pytest.raises(BadCredentials) as caught:
        make(amplitude, session, API_KEY="wrong").sync([event_change("a@b.co", Kind.UNSUBSCRIBE)])
    assert amplitude.requests[0].status == 400
    assert "wrong" not in f"{caught.value} {caught.value.body}"  # logged and sent to Sentry


def test_a_throttled_user_retries_after_30_s_and_the_others_go_through(
    amplitude: AmplitudeEmulator, session: requests.Session
) -> None:
    """A per-user 429 must not pause the destination for every other contact."""
    amplitude.user_limit = (2, 30.0)
    hot = [event_change("hot@example.com", Kind.SOFT_BOUNCE, key=f"k{i}") for i in range(3)]
    cold = event_change("cold@example.com", Kind.SOFT_BOUNCE)
    outcomes = make(amplitude, session).sync([hot[0], cold, hot[1], hot[2]])
    assert [o.status for o in outcomes] == [RETRY, APPLIED, RETRY, RETRY]
    assert {o.retry_after for o in outcomes if o.status is RETRY} == {30.0}
    assert [r.status for r in amplitude.requests] == [429, 200]
    assert [e["user_id"] for e in amplitude.events] == ["cold@example.com"]


def test_a_user_over_the_daily_quota_retries_in_an_hour(
    amplitude: AmplitudeEmulator, session: requests.Session
) -> None:
    amplitude.over_quota.add("busy@example.com")
    changes = [event_change(e, Kind.UNSUBSCRIBE) for e in ("busy@example.com", "ok@example.com")]
    outcomes = make(amplitude, session).sync(changes)
    assert [(o.status, o.retry_after) for o in outcomes] == [(RETRY, 3600.0), (APPLIED, None)]


def test_a_429_naming_no_event_throttles_the_destination(
    amplitude: AmplitudeEmulator, session: requests.Session
) -> None:
    amplitude.rate_limit(1, per_seconds=20)
    destination = make(amplitude, session)
    destination.sync([event_change("a@example.com", Kind.UNSUBSCRIBE)])
    with pytest.raises(Throttled) as caught:
        destination.sync([event_change("b@example.com", Kind.UNSUBSCRIBE)])
    assert 1 <= caught.value.retry_after <= 20


def test_a_429_without_retry_after_waits_amplitudes_30_s(
    amplitude: AmplitudeEmulator, session: requests.Session
) -> None:
    amplitude.send_retry_after = False
    amplitude.rate_limit(0)
    with pytest.raises(Throttled) as caught:
        make(amplitude, session).sync([event_change("a@example.com", Kind.UNSUBSCRIBE)])
    assert caught.value.retry_after == 30.0


def test_a_413_halves_the_batch_until_it_fits(
    amplitude: AmplitudeEmulator, session: requests.Session
) -> None:
    amplitude.max_request_bytes = 4_000
    changes = [event_change(e, Kind.BLOCKED, reason="x" * 300) for e in addresses(16)]
    outcomes = make(amplitude, session).sync(changes)
    assert {o.status for o in outcomes} == {APPLIED}
    assert 413 in {r.status for r in amplitude.requests}
    assert len(amplitude.insert_ids) == 16


def test_one_event_over_the_cap_fails_alone(
    amplitude: AmplitudeEmulator, session: requests.Session
) -> None:
    amplitude.max_request_bytes = 1_000
    changes = [
        event_change("a@example.com", Kind.BLOCKED),
        event_change("b@example.com", Kind.BLOCKED, reason="y" * 900),
    ]
    outcomes = make(amplitude, session).sync(changes)
    assert [o.status for o in outcomes] == [APPLIED, FAILED]


def test_batches_are_split_under_max_batch_bytes(
    amplitude: AmplitudeEmulator, session: requests.Session
) -> None:
    changes = [event_change(e, Kind.SOFT_BOUNCE, reason="z" * 500) for e in addresses(30)]
    outcomes = make(amplitude, session, MAX_BATCH_BYTES="6000").sync(changes)
    assert {o.status for o in outcomes} == {APPLIED}
    assert len(amplitude.requests) > 2
    assert all(len(r.body) <= 6000 for r in amplitude.requests)


def test_user_properties_can_be_left_out(
    amplitude: AmplitudeEmulator, session: requests.Session
) -> None:
    make(amplitude, session, USER_PROPERTIES="false").sync(
        [event_change("a@example.com", Kind.UNSUBSCRIBE)]
    )
    assert "user_properties" not in amplitude.events[0]
    assert amplitude.users == {}


def test_sha256_user_ids_keep_the_address_out(
    amplitude: AmplitudeEmulator, session: requests.Session
) -> None:
    change = event_change("A@Example.com", Kind.HARD_BOUNCE, reason="550 <a@example.com>: no")
    make(amplitude, session, USER_ID="sha256").sync([change])
    digest = hashlib.sha256(b"a@example.com").hexdigest()
    assert amplitude.events[0]["user_id"] == digest
    assert "example.com" not in json.dumps(amplitude.events).lower()
    assert amplitude.events[0]["event_properties"]["reason"] == "550 <[address]>: no"


def test_a_template_builds_the_user_id(
    amplitude: AmplitudeEmulator, session: requests.Session
) -> None:
    make(amplitude, session, USER_ID="crm-{email}").sync(
        [event_change("a@example.com", Kind.UNSUBSCRIBE)]
    )
    assert amplitude.events[0]["user_id"] == "crm-a@example.com"


def test_the_region_picks_the_residency_host() -> None:
    def url(**values: str) -> str:
        return Amplitude.effective_base_url(DestinationConfig("amplitude", values))

    assert url() == "https://api2.amplitude.com"
    assert url(REGION="eu") == "https://api.eu.amplitude.com"
    assert url(REGION="eu", BASE_URL="http://127.0.0.1:9") == "http://127.0.0.1:9"


@pytest.mark.parametrize(
    "settings",
    [
        {"USER_ID": "phone"},
        {"USER_ID": "{user}"},
        {"REGION": "in"},
        {"MAX_BATCH_BYTES": "2000000"},
        {"MAX_BATCH_BYTES": "-1"},
    ],
)
def test_bad_settings_are_a_configuration_error(
    amplitude: AmplitudeEmulator, session: requests.Session, settings: dict[str, str]
) -> None:
    with pytest.raises(NotConfigured):
        make(amplitude, session, **settings)


# -- the emulator itself ------------------------------------------------------------------------


def post(emulator: AmplitudeEmulator, session: requests.Session, body: Any) -> Any:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return session.post(
        emulator.url + "/2/httpapi", data=raw, headers={"Content-Type": "application/json"}
    )


def test_emulator_answers_amplitudes_400_shapes(
    amplitude: AmplitudeEmulator, session: requests.Session
) -> None:
    assert post(amplitude, session, b"{no").json()["error"] == "Invalid JSON request body"
    missing = post(amplitude, session, {"events": [{}]}).json()
    assert missing["missing_field"] == "api_key"
    wrong = post(amplitude, session, {"api_key": "nope", "events": [{}]}).json()
    assert wrong["error"] == "Invalid API key: nope"
    events = [
        {"user_id": "user-1", "event_type": "E"},
        {"user_id": "user-2"},
        {"user_id": "user-3", "event_type": "E", "time": "noon"},
        {"event_type": "E"},
    ]
    answer = post(amplitude, session, {"api_key": amplitude.api_key, "events": events})
    assert answer.status_code == 400
    body = answer.json()
    assert body["events_with_missing_fields"] == {"event_type": [1], "user_id": [3]}
    assert body["events_with_invalid_fields"] == {"time": [2]}
    assert amplitude.received == []


def test_emulator_silenced_devices_answer_amplitudes_400(
    amplitude: AmplitudeEmulator, session: requests.Session
) -> None:
    amplitude.silenced.add("device-9")
    events = [
        {"user_id": "user-1", "event_type": "E"},
        {"user_id": "user-2", "event_type": "E", "device_id": "device-9"},
    ]
    answer = post(amplitude, session, {"api_key": amplitude.api_key, "events": events})
    assert answer.status_code == 400
    body = answer.json()
    assert body["error"] == "Events silenced for device_id"
    assert (body["silenced_devices"], body["silenced_events"]) == (["device-9"], [1])
    assert amplitude.received == []


def test_emulator_dedupes_on_device_and_insert_id(
    amplitude: AmplitudeEmulator, session: requests.Session
) -> None:
    event = {"user_id": "user-1", "event_type": "E", "insert_id": "i-1"}
    body = {"api_key": amplitude.api_key, "events": [event, event]}
    answer = post(amplitude, session, body).json()
    assert answer["code"] == 200 and answer["events_ingested"] == 2
    assert amplitude.duplicates == 1
    other_device = {**event, "device_id": "device-9"}
    post(amplitude, session, {"api_key": amplitude.api_key, "events": [other_device]})
    assert len(amplitude.events) == 2


def test_emulator_413_over_2000_events_or_the_size_cap(
    amplitude: AmplitudeEmulator, session: requests.Session
) -> None:
    events = [{"user_id": "user-1", "event_type": "E"}] * 2001
    assert (
        post(amplitude, session, {"api_key": amplitude.api_key, "events": events}).status_code
        == 413
    )
    amplitude.max_request_bytes = 50
    events = [{"user_id": "user-1", "event_type": "E"}] * 2
    answer = post(amplitude, session, {"api_key": amplitude.api_key, "events": events})
    assert answer.json() == {"code": 413, "error": "Payload too large"}


def test_emulator_429_names_the_throttled_users_and_events(
    amplitude: AmplitudeEmulator, session: requests.Session
) -> None:
    amplitude.user_limit = (1, 30.0)
    events = [
        {"user_id": "user-1", "event_type": "E"},
        {"user_id": "user-2", "event_type": "E"},
        {"user_id": "user-1", "event_type": "E"},
    ]
    answer = post(amplitude, session, {"api_key": amplitude.api_key, "events": events})
    assert answer.status_code == 429
    body = answer.json()
    assert body["throttled_events"] == [0, 2]
    assert set(body["throttled_users"]) == {"user-1"}
    assert amplitude.received == []


def test_emulator_identify_applies_operations(
    amplitude: AmplitudeEmulator, session: requests.Session
) -> None:
    identification = [{"user_id": "user-1", "user_properties": {"$set": {"plan": "pro"}}}]
    form = {"api_key": amplitude.api_key, "identification": json.dumps(identification)}
    answer = session.post(amplitude.url + "/identify", data=form)
    assert answer.status_code == 200
    assert amplitude.users == {"user-1": {"plan": "pro"}}
