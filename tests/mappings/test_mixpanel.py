"""mappings/mixpanel.py against the Mixpanel emulator."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from mappings import mixpanel as mixpanel_mapping
from mappings import segment
from mappings.mixpanel import Mixpanel
from syncworker.destinations import (
    BadCredentials,
    ContactChange,
    DestinationConfig,
    HttpClient,
    Kind,
    NotConfigured,
    OutcomeStatus,
    Secret,
    Throttled,
)
from syncworker.devkit.emulators.mixpanel import MixpanelEmulator
from tests.mappings.contract import T0, EventsContract, addresses, event_change

APPLIED, FAILED, RETRY = OutcomeStatus.APPLIED, OutcomeStatus.FAILED, OutcomeStatus.RETRY


@pytest.fixture()
def mixpanel() -> Iterator[MixpanelEmulator]:
    with MixpanelEmulator() as emulator:
        yield emulator


def make(emulator: MixpanelEmulator, session: requests.Session, **settings: str) -> Mixpanel:
    values = {"TOKEN": emulator.token, **settings}
    http = HttpClient("mixpanel", emulator.url, session=session, timeout=5.0)
    return Mixpanel(DestinationConfig("mixpanel", values), http)


def basic(request: Any) -> tuple[str, str]:
    user, _, password = (
        base64.b64decode(request.headers["authorization"][6:]).decode().partition(":")
    )
    return user, password


class TestMixpanelContract(EventsContract):
    destination = "mixpanel"

    @pytest.fixture()
    def emulator(self) -> Iterator[MixpanelEmulator]:
        with MixpanelEmulator() as emulator:
            yield emulator

    def settings(self, emulator: MixpanelEmulator) -> dict[str, str]:
        return {"TOKEN": emulator.token, "BASE_URL": emulator.url, "PROFILE_SET": "true"}

    def bad_credentials(self, emulator: MixpanelEmulator) -> dict[str, str]:
        return {"TOKEN": "revoked-token"}

    def changes(self, emulator: MixpanelEmulator, n: int) -> list[ContactChange]:
        return [event_change(e, Kind.HARD_BOUNCE) for e in addresses(n)]

    def snapshot(self, emulator: MixpanelEmulator) -> Any:
        return emulator.insert_ids, emulator.profiles

    def partial(
        self, emulator: MixpanelEmulator
    ) -> tuple[list[ContactChange], dict[str, str], list[OutcomeStatus]]:
        """An ESP clock two hours ahead: Mixpanel rejects that event and imports the others."""
        ahead = time.time() + 7200
        emails = addresses(3)
        changes = [
            event_change(emails[0], Kind.UNSUBSCRIBE),
            event_change(emails[1], Kind.UNSUBSCRIBE, at=ahead),
            event_change(emails[2], Kind.UNSUBSCRIBE),
        ]
        return changes, {}, [APPLIED, FAILED, APPLIED]

    def received_ids(self, emulator: MixpanelEmulator) -> set[str]:
        return emulator.insert_ids

    def duplicates(self, emulator: MixpanelEmulator) -> int:
        return emulator.duplicates

    def expected_retry_after(self, emulator: Any, window: float) -> tuple[float, float]:
        """Mixpanel's 429 carries no Retry-After: the HttpClient's 10 s default applies."""
        return 10.0, 10.0


def test_event_names_are_segments() -> None:
    """The same hygiene event carries the same name in every analytics tool."""
    # the names each module uses (both take them from syncworker.destinations)
    assert vars(mixpanel_mapping)["EVENT_NAMES"] == vars(segment)["EVENT_NAMES"]


@pytest.mark.parametrize("kind", list(Kind))
def test_each_kind_is_one_event_with_the_hygiene_properties(
    mixpanel: MixpanelEmulator, session: requests.Session, kind: Kind
) -> None:
    change = event_change("a@example.com", kind, reason="550 5.1.1 mailbox unknown")
    assert [o.status for o in make(mixpanel, session).sync([change])] == [APPLIED]
    (event,) = mixpanel.events
    assert event["event"] == vars(segment)["EVENT_NAMES"][kind]
    props = event["properties"]
    assert props["distinct_id"] == "a@example.com"
    assert props["time"] == int(T0 * 1000)
    assert re.fullmatch(r"[0-9a-f]{36}", props["$insert_id"])
    assert props["email"] == "a@example.com"
    assert props["kind"] == kind.value
    assert props["reason"] == "550 5.1.1 mailbox unknown"
    assert props["event_key"] == change.key
    assert props["suppressed"] is change.state.suppressed
    bounce_types = {Kind.HARD_BOUNCE: "hard", Kind.SOFT_BOUNCE: "soft", Kind.BLOCKED: "block"}
    assert props.get("bounce_type") == bounce_types.get(kind)


def test_requests_are_strict_gzip_with_the_token_as_basic_user(
    mixpanel: MixpanelEmulator, session: requests.Session
) -> None:
    make(mixpanel, session).sync([event_change("a@example.com", Kind.UNSUBSCRIBE)])
    (request,) = mixpanel.requests
    assert (request.path, request.query) == ("/import", {"strict": "1"})
    assert request.headers["content-encoding"] == "gzip"
    assert json.loads(gzip.decompress(request.body))[0]["event"] == "Unsubscribed"
    assert basic(request) == (mixpanel.token, "")


def test_a_service_account_authenticates_with_the_project_id(
    mixpanel: MixpanelEmulator, session: requests.Session
) -> None:
    user, secret = mixpanel.service_account
    destination = make(
        mixpanel,
        session,
        TOKEN="token-for-engage-only",
        SERVICE_ACCOUNT_USERNAME=user,
        SERVICE_ACCOUNT_SECRET=secret,
        PROJECT_ID=mixpanel.project_id,
    )
    outcomes = destination.sync([event_change("a@example.com", Kind.UNSUBSCRIBE)])
    assert [o.status for o in outcomes] == [APPLIED]
    assert basic(mixpanel.requests[0]) == (user, secret)
    assert mixpanel.requests[0].query["project_id"] == mixpanel.project_id


def test_the_api_secret_authenticates_when_set(
    mixpanel: MixpanelEmulator, session: requests.Session
) -> None:
    destination = make(mixpanel, session, TOKEN="other", API_SECRET=mixpanel.api_secret)
    assert destination.sync([event_change("a@example.com", Kind.UNSUBSCRIBE)])[0].ok
    assert basic(mixpanel.requests[0]) == (mixpanel.api_secret, "")


def test_insert_ids_derive_from_the_event_key(
    mixpanel: MixpanelEmulator, session: requests.Session
) -> None:
    first = event_change("a@example.com", Kind.UNSUBSCRIBE, key="postmark:1")
    other = event_change("a@example.com", Kind.UNSUBSCRIBE, key="postmark:2")
    make(mixpanel, session).sync([first, first, other])
    assert len(mixpanel.received) == 3
    assert len(mixpanel.insert_ids) == 2
    digest = hashlib.sha256(b"mixpanel\x1fpostmark:1").hexdigest()[:36]
    assert digest in mixpanel.insert_ids


def test_a_retry_after_a_server_error_is_deduplicated(
    mixpanel: MixpanelEmulator, session: requests.Session
) -> None:
    changes = [event_change(e, Kind.HARD_BOUNCE) for e in addresses(5)]
    mixpanel.fail_next(1, status=502)
    assert {o.status for o in make(mixpanel, session).sync(changes)} == {RETRY}
    assert mixpanel.received == []
    make(mixpanel, session).sync(changes)
    make(mixpanel, session).sync(changes)
    assert len(mixpanel.insert_ids) == 5
    assert mixpanel.duplicates == 5


def test_failed_records_fail_alone_and_the_rest_is_not_resent(
    mixpanel: MixpanelEmulator, session: requests.Session
) -> None:
    ahead = time.time() + 7200
    changes = [event_change(e, Kind.HARD_BOUNCE) for e in addresses(4)]
    changes[2] = event_change("late@example.com", Kind.HARD_BOUNCE, at=ahead)
    outcomes = make(mixpanel, session).sync(changes)
    assert [o.status for o in outcomes] == [APPLIED, APPLIED, FAILED, APPLIED]
    assert "properties.time" in outcomes[2].detail
    assert len(mixpanel.requests) == 1
    assert mixpanel.requests[0].status == 400
    assert len(mixpanel.insert_ids) == 3


def test_a_413_halves_the_batch_until_it_fits(
    mixpanel: MixpanelEmulator, session: requests.Session
) -> None:
    """The reference says 10 MB but its 413 sample says 2 MiB: a smaller real cap still works."""
    mixpanel.max_request_bytes = 3_000
    changes = [event_change(e, Kind.SOFT_BOUNCE, reason="x" * 200) for e in addresses(12)]
    outcomes = make(mixpanel, session).sync(changes)
    assert {o.status for o in outcomes} == {APPLIED}
    assert 413 in {r.status for r in mixpanel.requests}
    assert len(mixpanel.insert_ids) == 12


def test_one_event_over_the_cap_fails_alone(
    mixpanel: MixpanelEmulator, session: requests.Session
) -> None:
    mixpanel.max_request_bytes = 500  # one event without a reason is ~360 bytes, with ~630
    changes = [event_change(e, Kind.SOFT_BOUNCE) for e in addresses(2)]
    changes[1] = event_change("b@example.com", Kind.SOFT_BOUNCE, reason="y" * 900)
    outcomes = make(mixpanel, session).sync(changes)
    assert [o.status for o in outcomes] == [APPLIED, FAILED]


def test_batches_are_split_under_max_batch_bytes(
    mixpanel: MixpanelEmulator, session: requests.Session
) -> None:
    changes = [event_change(e, Kind.SOFT_BOUNCE, reason="z" * 250) for e in addresses(40)]
    outcomes = make(mixpanel, session, MAX_BATCH_BYTES="8000").sync(changes)
    assert {o.status for o in outcomes} == {APPLIED}
    assert len(mixpanel.requests) > 2
    assert all(len(gzip.decompress(r.body)) <= 8000 for r in mixpanel.requests)
    assert all(len(e["properties"]["reason"]) == 250 for e in mixpanel.events)


def test_long_texts_are_cut_to_mixpanels_255_characters(
    mixpanel: MixpanelEmulator, session: requests.Session
) -> None:
    make(mixpanel, session).sync([event_change("a@example.com", Kind.BLOCKED, reason="r" * 999)])
    assert len(mixpanel.events[0]["properties"]["reason"]) == 255


def test_profiles_are_left_alone_unless_opted_in(
    mixpanel: MixpanelEmulator, session: requests.Session
) -> None:
    """/engage $set creates missing profiles: without PROFILE_SET nothing touches profiles."""
    make(mixpanel, session).sync([event_change("a@example.com", Kind.UNSUBSCRIBE)])
    assert mixpanel.calls("/engage") == []
    assert mixpanel.profiles == {}


def test_opted_in_profiles_get_the_hygiene_traits_once_per_user(
    mixpanel: MixpanelEmulator, session: requests.Session
) -> None:
    mixpanel.seed_profile("a@example.com", plan="pro")
    held = ("hard_bounce", "unsubscribe")
    changes = [
        event_change("a@example.com", Kind.HARD_BOUNCE, key="k1", reasons=held),
        event_change("a@example.com", Kind.UNSUBSCRIBE, key="k2", reasons=held),
    ]
    outcomes = make(mixpanel, session, PROFILE_SET="true").sync(changes)
    assert [o.status for o in outcomes] == [APPLIED, APPLIED]
    (engage,) = mixpanel.calls("/engage")
    assert engage.query == {"verbose": "1", "ip": "0"}
    (update,) = mixpanel.engage_updates
    assert update["$ignore_time"] is True and update["$ip"] == 0
    assert mixpanel.profiles["a@example.com"] == {
        "plan": "pro",
        "email_suppressed": True,
        "email_unsubscribed": True,
        "email_bounced": True,
        "email_complained": False,
        "email_suppression_reasons": ["hard_bounce", "unsubscribe"],
    }


def test_an_unsuppressed_state_clears_the_profile_flags(
    mixpanel: MixpanelEmulator, session: requests.Session
) -> None:
    change = event_change("a@example.com", Kind.RESUBSCRIBE)
    make(mixpanel, session, PROFILE_SET="true").sync([change])
    assert mixpanel.profiles["a@example.com"]["email_suppressed"] is False
    assert mixpanel.profiles["a@example.com"]["email_suppression_reasons"] == []


def test_a_rejected_profile_update_fails_the_changes_it_carried(
    mixpanel: MixpanelEmulator, session: requests.Session
) -> None:
    """/engage answers 200 for a batch it rejects; verbose=1 tells, and the outcome says so."""
    mixpanel.engage_error = "$set: property value too long"
    destination = make(mixpanel, session, PROFILE_SET="true")
    outcomes = destination.sync([event_change("a@example.com", Kind.UNSUBSCRIBE)])
    assert [o.status for o in outcomes] == [FAILED]
    assert "profile update rejected: $set: property value too long" in outcomes[0].detail
    assert len(mixpanel.insert_ids) == 1
    assert mixpanel.calls("/engage")[0].status == 200


def test_a_profile_update_with_a_wrong_token_is_bad_credentials(
    mixpanel: MixpanelEmulator, session: requests.Session
) -> None:
    destination = make(mixpanel, session, PROFILE_SET="true", API_SECRET=mixpanel.api_secret)
    destination.token = Secret("stale-token")
    with pytest.raises(BadCredentials):
        destination.sync([event_change("a@example.com", Kind.UNSUBSCRIBE)])


def test_a_profile_update_outage_retries_and_the_replay_is_deduplicated(
    mixpanel: MixpanelEmulator, session: requests.Session
) -> None:
    change = event_change("a@example.com", Kind.UNSUBSCRIBE)
    mixpanel.fail_next(1, status=503, after=1)
    outcomes = make(mixpanel, session, PROFILE_SET="true").sync([change])
    assert [o.status for o in outcomes] == [RETRY]
    assert make(mixpanel, session, PROFILE_SET="true").sync([change])[0].status is APPLIED
    assert mixpanel.duplicates == 1
    assert mixpanel.profiles["a@example.com"]["email_unsubscribed"] is True


def test_sha256_user_ids_keep_the_address_out(
    mixpanel: MixpanelEmulator, session: requests.Session
) -> None:
    change = event_change("A@Example.com", Kind.HARD_BOUNCE, reason="550 <a@example.com>: no")
    make(mixpanel, session, USER_ID="sha256", PROFILE_SET="true").sync([change])
    digest = hashlib.sha256(b"a@example.com").hexdigest()
    props = mixpanel.events[0]["properties"]
    assert props["distinct_id"] == digest
    assert "email" not in props
    assert "example.com" not in json.dumps(mixpanel.events + mixpanel.engage_updates).lower()
    assert props["reason"] == "550 <[address]>: no"
    assert props["event_key"] == "postmark:hard_bounce:[address]:1767225600"
    assert set(mixpanel.profiles) == {digest}


def test_a_template_builds_the_user_id(
    mixpanel: MixpanelEmulator, session: requests.Session
) -> None:
    make(mixpanel, session, USER_ID="user:{email}").sync(
        [event_change("a@example.com", Kind.UNSUBSCRIBE)]
    )
    assert mixpanel.events[0]["properties"]["distinct_id"] == "user:a@example.com"


def test_a_429_without_retry_after_pauses_the_destination_10_s(
    mixpanel: MixpanelEmulator, session: requests.Session
) -> None:
    """Mixpanel documents no Retry-After (it advises a 2-60 s backoff): the pause is 10 s."""
    mixpanel.rate_limit(1, per_seconds=20)
    destination = make(mixpanel, session)
    destination.sync([event_change("a@example.com", Kind.UNSUBSCRIBE)])
    with pytest.raises(Throttled) as caught:
        destination.sync([event_change("b@example.com", Kind.UNSUBSCRIBE)])
    assert caught.value.retry_after == 10.0


def test_max_batch_bytes_may_go_up_to_mixpanels_10_mb(
    mixpanel: MixpanelEmulator, session: requests.Session
) -> None:
    assert make(mixpanel, session, MAX_BATCH_BYTES="10000000").max_bytes == 10_000_000
    assert make(mixpanel, session).max_bytes == 2_000_000  # under the 2 MiB of the 413 sample


def test_the_region_picks_the_residency_host() -> None:
    def url(**values: str) -> str:
        return Mixpanel.effective_base_url(DestinationConfig("mixpanel", values))

    assert url() == "https://api.mixpanel.com"
    assert url(REGION="eu") == "https://api-eu.mixpanel.com"
    assert url(REGION="in") == "https://api-in.mixpanel.com"
    assert url(REGION="eu", BASE_URL="http://127.0.0.1:9") == "http://127.0.0.1:9"


@pytest.mark.parametrize(
    "settings",
    [
        {"USER_ID": "phone"},
        {"USER_ID": "{name}"},
        {"USER_ID": "{email}-{name}"},
        {"REGION": "mars"},
        {"MAX_BATCH_BYTES": "big"},
        {"MAX_BATCH_BYTES": "10000001"},
        {"SERVICE_ACCOUNT_USERNAME": "sa", "SERVICE_ACCOUNT_SECRET": "s"},
    ],
)
def test_bad_settings_are_a_configuration_error(
    mixpanel: MixpanelEmulator, session: requests.Session, settings: dict[str, str]
) -> None:
    with pytest.raises(NotConfigured):
        make(mixpanel, session, **settings)


# -- the emulator itself ------------------------------------------------------------------------


def post(emulator: MixpanelEmulator, session: requests.Session, events: Any) -> Any:
    return session.post(
        emulator.url + "/import",
        params={"strict": "1"},
        data=json.dumps(events),
        auth=(emulator.token, ""),
        headers={"Content-Type": "application/json"},
    )


def good(insert_id: str = "abc-123", **props: Any) -> dict[str, Any]:
    base = {"time": int(T0), "distinct_id": "u1", "$insert_id": insert_id}
    return {"event": "E", "properties": {**base, **props}}


def test_emulator_validates_each_event_and_imports_the_rest(
    mixpanel: MixpanelEmulator, session: requests.Session
) -> None:
    events = [
        good("ok-1"),
        good("x" * 37),
        good("bad_id"),
        good("ok-2", distinct_id="null"),
        good("ok-3", time="yesterday"),
        good("ok-4", time=10),
        {"properties": good()["properties"]},
        good("ok-5"),
    ]
    answer = post(mixpanel, session, events)
    assert answer.status_code == 400
    body = answer.json()
    assert body["num_records_imported"] == 2
    assert [r["index"] for r in body["failed_records"]] == [1, 2, 3, 4, 5, 6]
    assert mixpanel.insert_ids == {"ok-1", "ok-5"}


def test_emulator_counts_replays_but_reports_them_imported(
    mixpanel: MixpanelEmulator, session: requests.Session
) -> None:
    assert post(mixpanel, session, [good("a1"), good("a1")]).json()["num_records_imported"] == 2
    assert mixpanel.duplicates == 1
    assert post(mixpanel, session, [good("a1", time=int(T0) + 1)]).status_code == 200
    assert len(mixpanel.events) == 2  # another time: another event, whatever the $insert_id


def test_emulator_rejects_oversized_and_malformed_requests(
    mixpanel: MixpanelEmulator, session: requests.Session
) -> None:
    assert post(mixpanel, session, [good(str(i)) for i in range(2001)]).status_code == 400
    mixpanel.max_request_bytes = 100
    answer = post(mixpanel, session, [good("a"), good("b")])
    assert answer.status_code == 413 and "max limit of 100 bytes" in answer.json()["error"]
    mixpanel.max_request_bytes = 10_000
    bad = session.post(mixpanel.url + "/import", data=b"[{", auth=(mixpanel.token, ""))
    assert bad.status_code == 400 and "failed_records" not in bad.json()
    assert mixpanel.received == []


def test_emulator_checks_credentials(mixpanel: MixpanelEmulator, session: requests.Session) -> None:
    events = json.dumps([good()])
    assert session.post(mixpanel.url + "/import", data=events, auth=("x", "")).status_code == 401
    user, secret = mixpanel.service_account
    wrong = session.post(
        mixpanel.url + "/import", params={"project_id": "1"}, data=events, auth=(user, secret)
    )
    assert wrong.status_code == 401 and wrong.json()["error"] == "Invalid credentials"
    right = session.post(
        mixpanel.url + "/import",
        params={"project_id": mixpanel.project_id},
        data=events,
        auth=(user, secret),
    )
    assert right.status_code == 200


def test_emulator_engage_answers_200_even_when_it_rejects(
    mixpanel: MixpanelEmulator, session: requests.Session
) -> None:
    bad = [{"$token": mixpanel.token, "$distinct_id": "u1", "$set": "nope"}]
    plain = session.post(mixpanel.url + "/engage", json=bad)
    assert (plain.status_code, plain.text) == (200, "0")
    verbose = session.post(mixpanel.url + "/engage", params={"verbose": "1"}, json=bad)
    assert verbose.status_code == 200 and verbose.json()["status"] == 0
    good_update = [{"$token": mixpanel.token, "$distinct_id": "u1", "$set": {"a": 1}}]
    assert session.post(mixpanel.url + "/engage", json=good_update).text == "1"
    assert mixpanel.profiles == {"u1": {"a": 1}}  # $set creates the profile


def test_emulator_429_is_mixpanels(mixpanel: MixpanelEmulator, session: requests.Session) -> None:
    mixpanel.rate_limit(0, per_seconds=4)
    answer = post(mixpanel, session, [good()])
    assert answer.status_code == 429 and "Retry-After" not in answer.headers
    assert answer.json()["status"] == "Too Many Requests"


def test_emulator_caps_requests_at_10_mb_and_events_at_1_mb(
    mixpanel: MixpanelEmulator, session: requests.Session
) -> None:
    """An oversized event fails alone in failed_records; the request cap is a 413."""
    assert mixpanel.max_request_bytes == 10 * 1024 * 1024
    assert mixpanel.max_event_bytes == 1024 * 1024
    mixpanel.max_event_bytes = 300
    answer = post(mixpanel, session, [good("small"), good("big", note="n" * 400)])
    assert answer.status_code == 400
    assert [(r["index"], r["field"]) for r in answer.json()["failed_records"]] == [(1, "event")]
    assert mixpanel.insert_ids == {"small"}
