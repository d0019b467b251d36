"""mappings/hubspot.py against the HubSpot emulator."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from mappings.hubspot import HubSpot
from syncworker.destinations import (
    MANUAL,
    BadCredentials,
    ContactChange,
    DestinationConfig,
    HttpClient,
    Kind,
    NotConfigured,
    OutcomeStatus,
)
from syncworker.devkit.emulators.hubspot import HubSpotEmulator
from tests.mappings.contract import T0, StateContract, addresses, state_change

APPLIED, ALREADY = OutcomeStatus.APPLIED, OutcomeStatus.ALREADY
NOT_FOUND, RETRY = OutcomeStatus.NOT_FOUND, OutcomeStatus.RETRY
UNSUBSCRIBE_BATCH = "/communication-preferences/v4/statuses/batch/unsubscribe-all"
CONTACTS_UPDATE = "/crm/v3/objects/contacts/batch/update"


@pytest.fixture()
def hubspot() -> Iterator[HubSpotEmulator]:
    with HubSpotEmulator() as emulator:
        yield emulator


def make(emulator: HubSpotEmulator, session: requests.Session, **settings: str) -> HubSpot:
    values = {"TOKEN": emulator.token, "BASE_URL": emulator.url, **settings}
    http = HttpClient("hubspot", emulator.url, session=session, timeout=5.0)
    return HubSpot(DestinationConfig("hubspot", values), http)


class TestHubSpotContract(StateContract):
    destination = "hubspot"

    @pytest.fixture()
    def emulator(self) -> Iterator[HubSpotEmulator]:
        with HubSpotEmulator() as emulator:
            yield emulator

    def settings(self, emulator: HubSpotEmulator) -> dict[str, str]:
        return {"TOKEN": emulator.token, "BASE_URL": emulator.url}

    def bad_credentials(self, emulator: HubSpotEmulator) -> dict[str, str]:
        return {"TOKEN": "expired-token"}

    def changes(self, emulator: HubSpotEmulator, n: int) -> list[ContactChange]:
        emails = addresses(n)
        emulator.seed(*emails)
        return [state_change(e, Kind.UNSUBSCRIBE) for e in emails]

    def snapshot(self, emulator: HubSpotEmulator) -> Any:
        return emulator.opted_out, emulator.properties

    def partial(
        self, emulator: HubSpotEmulator
    ) -> tuple[list[ContactChange], dict[str, str], list[OutcomeStatus]]:
        emulator.seed("new@example.com")
        emulator.seed("done@example.com", opted_out=True)
        changes = [
            state_change(e, Kind.UNSUBSCRIBE)
            for e in ("new@example.com", "ghost@example.com", "done@example.com")
        ]
        return changes, {}, [APPLIED, NOT_FOUND, ALREADY]

    def unknown_changes(self, emulator: HubSpotEmulator, n: int) -> list[ContactChange]:
        return [state_change(e, Kind.HARD_BOUNCE) for e in addresses(n, "unknown")]

    def contacts(self, emulator: HubSpotEmulator) -> set[str]:
        return emulator.contacts


def test_a_batch_of_100_unsubscribes_costs_one_request(
    hubspot: HubSpotEmulator, session: requests.Session
) -> None:
    emails = addresses(100)
    hubspot.seed(*emails)
    destination = make(hubspot, session)
    outcomes = destination.sync([state_change(e, Kind.UNSUBSCRIBE) for e in emails])
    assert [o.status for o in outcomes] == [APPLIED] * 100
    assert destination.http.requests_made == 1
    (request,) = hubspot.requests
    assert request.path == UNSUBSCRIBE_BATCH
    assert request.query == {"channel": "EMAIL", "verbose": "true"}
    assert request.json == {"inputs": emails}
    assert hubspot.opted_out == set(emails)


def test_a_batch_answer_without_per_contact_statuses_counts_as_applied(
    hubspot: HubSpotEmulator, session: requests.Session
) -> None:
    hubspot.seed("a@example.com")
    hubspot.status_details = False
    outcomes = make(hubspot, session).sync([state_change("a@example.com", Kind.UNSUBSCRIBE)])
    assert [o.status for o in outcomes] == [APPLIED]
    assert hubspot.opted_out == {"a@example.com"}


def test_manual_suppression_is_a_pure_opt_out(
    hubspot: HubSpotEmulator, session: requests.Session
) -> None:
    hubspot.seed("a@example.com")
    outcomes = make(hubspot, session).sync([state_change("a@example.com", MANUAL)])
    assert [o.status for o in outcomes] == [APPLIED]
    assert [r.path for r in hubspot.requests] == [UNSUBSCRIBE_BATCH]


def test_a_repeated_unsubscribe_is_already(
    hubspot: HubSpotEmulator, session: requests.Session
) -> None:
    hubspot.seed("a@example.com")
    changes = [state_change("a@example.com", Kind.UNSUBSCRIBE)]
    assert make(hubspot, session).sync(changes)[0].status is APPLIED
    again = make(hubspot, session).sync(changes)[0]
    assert again.status is ALREADY
    assert "NO_STATUS_CHANGE" in again.detail


@pytest.mark.parametrize("kind", [Kind.HARD_BOUNCE, Kind.SPAM_COMPLAINT])
def test_a_bounce_or_complaint_opts_out_and_sets_the_properties(
    hubspot: HubSpotEmulator, session: requests.Session, kind: Kind
) -> None:
    hubspot.seed("a@example.com")
    destination = make(hubspot, session)
    outcomes = destination.sync([state_change("a@example.com", kind, Kind.UNSUBSCRIBE)])
    assert [o.status for o in outcomes] == [APPLIED]
    assert destination.http.requests_made == 2
    assert hubspot.opted_out == {"a@example.com"}
    properties = hubspot.properties["a@example.com"]
    assert properties["syncworker_hygiene_status"] == ";".join(sorted([kind, "unsubscribe"]))
    bounced_at = properties.get("syncworker_bounced_at")
    assert bounced_at == ("2026-01-01T00:00:00.000Z" if kind is Kind.HARD_BOUNCE else None)
    update = hubspot.calls(CONTACTS_UPDATE)[0].json["inputs"][0]
    assert update["id"] == "a@example.com"
    assert update["idProperty"] == "email"


def test_bounced_at_is_the_newest_bounce(
    hubspot: HubSpotEmulator, session: requests.Session
) -> None:
    hubspot.seed("a@example.com")
    change = state_change("a@example.com", Kind.HARD_BOUNCE)
    newer = dict(change.state.reasons)
    newer[Kind.BLOCKED] = type(newer[Kind.HARD_BOUNCE])(Kind.BLOCKED, T0 + 3600.5, "postmark")
    state = type(change.state)("a@example.com", True, newer, T0, 2)
    make(hubspot, session).sync([ContactChange("a@example.com", "a@example.com", state)])
    props = hubspot.properties["a@example.com"]
    assert props["syncworker_bounced_at"] == "2026-01-01T01:00:00.500Z"
    assert props["syncworker_hygiene_status"] == "blocked;hard_bounce"


def test_soft_bounce_suppression_flags_without_opting_out(
    hubspot: HubSpotEmulator, session: requests.Session
) -> None:
    """Soft bounces and blocks are not in OPT_OUT_REASONS by default: flag only."""
    hubspot.seed("a@example.com")
    outcomes = make(hubspot, session).sync([state_change("a@example.com", Kind.SOFT_BOUNCE)])
    assert [o.status for o in outcomes] == [APPLIED]
    assert hubspot.opted_out == set()
    assert [r.path for r in hubspot.requests] == [CONTACTS_UPDATE]
    assert hubspot.properties["a@example.com"]["syncworker_hygiene_status"] == "soft_bounce"


def test_opt_out_reasons_are_configurable(
    hubspot: HubSpotEmulator, session: requests.Session
) -> None:
    hubspot.seed("a@example.com")
    destination = make(hubspot, session, OPT_OUT_REASONS="soft_bounce")
    destination.sync([state_change("a@example.com", Kind.SOFT_BOUNCE)])
    assert hubspot.opted_out == {"a@example.com"}


def test_property_names_are_configurable(session: requests.Session) -> None:
    names = {"email", "hygiene", "hygiene_bounced"}
    with HubSpotEmulator(defined_properties=names) as hubspot:
        hubspot.seed("a@example.com")
        destination = make(
            hubspot, session, STATUS_PROPERTY="hygiene", BOUNCED_AT_PROPERTY="hygiene_bounced"
        )
        outcomes = destination.sync([state_change("a@example.com", Kind.HARD_BOUNCE)])
        assert [o.status for o in outcomes] == [APPLIED]
        assert hubspot.properties["a@example.com"]["hygiene"] == "hard_bounce"


def test_unknown_contacts_mixed_with_known_ones_are_not_found(
    hubspot: HubSpotEmulator, session: requests.Session
) -> None:
    hubspot.seed("known@example.com")
    changes = [
        state_change("known@example.com", Kind.HARD_BOUNCE),
        state_change("ghost@example.com", Kind.HARD_BOUNCE),
    ]
    outcomes = make(hubspot, session).sync(changes)
    assert [o.status for o in outcomes] == [APPLIED, NOT_FOUND]
    assert "OBJECT_NOT_FOUND" in outcomes[1].detail
    assert hubspot.contacts == {"known@example.com"}
    assert all(r.status == 207 for r in hubspot.requests)


def test_an_unsuppressed_contact_is_cleared_and_keeps_its_opt_out(
    hubspot: HubSpotEmulator, session: requests.Session
) -> None:
    """v4 cannot undo an opt-out without a legal basis: without resubscription ids it stays."""
    hubspot.seed("a@example.com")
    destination = make(hubspot, session)
    destination.sync([state_change("a@example.com", Kind.HARD_BOUNCE)])
    outcome = destination.sync([state_change("a@example.com", version=2)])[0]
    assert outcome.status is ALREADY
    assert "opt-out stays" in outcome.detail
    assert hubspot.opted_out == {"a@example.com"}
    assert hubspot.properties["a@example.com"] == {"email": "a@example.com"}


def test_an_unsuppressed_contact_is_resubscribed_when_configured(
    hubspot: HubSpotEmulator, session: requests.Session
) -> None:
    hubspot.seed("a@example.com", opted_out=True)
    destination = make(hubspot, session, RESUBSCRIBE_SUBSCRIPTION_IDS="1, 2")
    outcome = destination.sync([state_change("a@example.com", version=2)])[0]
    assert outcome.status is APPLIED
    assert hubspot.opted_out == set()
    assert hubspot.subscriptions("a@example.com") == {1: "SUBSCRIBED", 2: "SUBSCRIBED"}
    write = hubspot.calls("/communication-preferences/v4/statuses/batch/write")[0]
    assert {i["legalBasis"] for i in write.json["inputs"]} == {"CONSENT_WITH_NOTICE"}
    assert destination.sync([state_change("a@example.com", version=2)])[0].status is ALREADY


def test_resubscribing_an_unknown_contact_is_not_found(
    hubspot: HubSpotEmulator, session: requests.Session
) -> None:
    destination = make(hubspot, session, RESUBSCRIBE_SUBSCRIPTION_IDS="1")
    assert destination.sync([state_change("ghost@example.com")])[0].status is NOT_FOUND
    assert hubspot.contacts == set()


def test_single_contact_endpoints_when_subscription_batch_is_off(
    hubspot: HubSpotEmulator, session: requests.Session
) -> None:
    hubspot.seed("a+tag@example.com", "b@example.com")
    hubspot.seed("c@example.com", opted_out=True)
    destination = make(hubspot, session, SUBSCRIPTION_BATCH="false")
    emails = ["a+tag@example.com", "ghost@example.com", "c@example.com", "b@example.com"]
    outcomes = destination.sync([state_change(e, Kind.UNSUBSCRIBE) for e in emails])
    assert [o.status for o in outcomes] == [APPLIED, NOT_FOUND, ALREADY, APPLIED]
    paths = [r.path for r in hubspot.requests]
    assert paths[0] == "/communication-preferences/v4/statuses/a%2Btag@example.com/unsubscribe-all"
    assert len(paths) == 4
    assert hubspot.opted_out == {"a+tag@example.com", "b@example.com", "c@example.com"}


def test_single_contact_mode_reports_a_5xx_for_that_contact_only(
    hubspot: HubSpotEmulator, session: requests.Session
) -> None:
    hubspot.seed(*addresses(3))
    hubspot.fail_next(1, status=502, after=1)
    destination = make(hubspot, session, SUBSCRIPTION_BATCH="false")
    outcomes = destination.sync([state_change(e, Kind.UNSUBSCRIBE) for e in addresses(3)])
    assert [o.status for o in outcomes] == [APPLIED, RETRY, APPLIED]


def test_single_contact_resubscribe(hubspot: HubSpotEmulator, session: requests.Session) -> None:
    hubspot.seed("a@example.com", opted_out=True)
    settings = {"SUBSCRIPTION_BATCH": "false", "RESUBSCRIBE_SUBSCRIPTION_IDS": "2"}
    outcome = make(hubspot, session, **settings).sync([state_change("a@example.com")])[0]
    assert outcome.status is APPLIED
    assert hubspot.subscriptions("a@example.com")[2] == "SUBSCRIBED"
    assert hubspot.opted_out == set()


def test_an_account_without_enterprise_answers_403_bad_credentials(
    session: requests.Session,
) -> None:
    """Batch comms-prefs scopes need Marketing Hub Enterprise; else SUBSCRIPTION_BATCH=false."""
    with HubSpotEmulator(enterprise=False) as hubspot:
        hubspot.seed("a@example.com")
        change = state_change("a@example.com", Kind.UNSUBSCRIBE)
        with pytest.raises(BadCredentials) as caught:
            make(hubspot, session).sync([change])
        assert "MISSING_SCOPES" in caught.value.body
        outcome = make(hubspot, session, SUBSCRIPTION_BATCH="false").sync([change])[0]
        assert outcome.status is APPLIED


def test_bad_resubscription_ids_are_a_configuration_error(
    hubspot: HubSpotEmulator, session: requests.Session
) -> None:
    with pytest.raises(NotConfigured):
        make(hubspot, session, RESUBSCRIBE_SUBSCRIPTION_IDS="newsletter")


# -- the emulator itself ------------------------------------------------------------------------


def test_emulator_rejects_more_than_100_inputs(
    hubspot: HubSpotEmulator, session: requests.Session
) -> None:
    headers = {"Authorization": f"Bearer {hubspot.token}"}
    url = hubspot.url + UNSUBSCRIBE_BATCH + "?channel=EMAIL"
    response = session.post(url, json={"inputs": addresses(101)}, headers=headers)
    assert response.status_code == 400
    assert response.json()["category"] == "VALIDATION_ERROR"
    update = [{"id": e, "idProperty": "email", "properties": {}} for e in addresses(101)]
    response = session.post(hubspot.url + CONTACTS_UPDATE, json={"inputs": update}, headers=headers)
    assert response.status_code == 400


def test_emulator_answers_401_json_to_a_bad_token(
    hubspot: HubSpotEmulator, session: requests.Session
) -> None:
    response = session.post(hubspot.url + CONTACTS_UPDATE, json={"inputs": []})
    assert response.status_code == 401
    assert response.json()["category"] == "INVALID_AUTHENTICATION"


def test_emulator_rate_limit_is_a_sliding_window_with_hubspots_429(
    hubspot: HubSpotEmulator, session: requests.Session
) -> None:
    hubspot.rate_limit(2, per_seconds=30)
    headers = {"Authorization": f"Bearer {hubspot.token}"}
    url = hubspot.url + UNSUBSCRIBE_BATCH + "?channel=EMAIL&verbose=true"
    hubspot.seed("a@example.com")
    statuses = [
        session.post(url, json={"inputs": ["a@example.com"]}, headers=headers) for _ in range(3)
    ]
    assert [r.status_code for r in statuses] == [200, 200, 429]
    body = statuses[2].json()
    assert (body["errorType"], body["policyName"]) == ("RATE_LIMIT", "TEN_SECONDLY_ROLLING")
    assert 1 <= int(statuses[2].headers["Retry-After"]) <= 30
    assert statuses[2].headers["X-HubSpot-RateLimit-Max"] == "2"
    assert hubspot.throttled == 1
    reasons = {s["setStatusSuccessReason"] for s in statuses[1].json()["results"][0]["statuses"]}
    assert reasons == {"NO_STATUS_CHANGE"}


def test_emulator_rejects_duplicate_ids_in_a_crm_batch(
    hubspot: HubSpotEmulator, session: requests.Session
) -> None:
    hubspot.seed("a@example.com")
    headers = {"Authorization": f"Bearer {hubspot.token}"}
    item = {"id": "a@example.com", "idProperty": "email", "properties": {"x": "1"}}
    response = session.post(
        hubspot.url + CONTACTS_UPDATE, json={"inputs": [item, item]}, headers=headers
    )
    assert response.status_code == 400
    assert hubspot.properties["a@example.com"] == {"email": "a@example.com"}


def test_emulator_counts_opted_out_contacts_as_they_change(
    hubspot: HubSpotEmulator, session: requests.Session
) -> None:
    """``opted_out_count`` (what benchmarks poll) follows unsubscribes, resubscribes and seeds."""
    headers = {"Authorization": f"Bearer {hubspot.token}"}
    hubspot.seed("a@example.com", "b@example.com", "c@example.com")
    hubspot.seed("d@example.com", opted_out=True)
    url = hubspot.url + UNSUBSCRIBE_BATCH + "?channel=EMAIL"
    session.post(url, json={"inputs": ["a@example.com", "b@example.com"]}, headers=headers)
    assert hubspot.opted_out_count == len(hubspot.opted_out) == 3
    write = {
        "inputs": [
            {
                "subscriberIdString": "a@example.com",
                "channel": "EMAIL",
                "statusState": "SUBSCRIBED",
                "subscriptionId": 1,
                "legalBasis": "LEGITIMATE_INTEREST_CLIENT",
                "legalBasisExplanation": "asked",
            }
        ]
    }
    response = session.post(
        hubspot.url + "/communication-preferences/v4/statuses/batch/write",
        json=write,
        headers=headers,
    )
    assert response.status_code == 200, response.text
    assert hubspot.opted_out == {"b@example.com", "d@example.com"}
    assert hubspot.opted_out_count == 2
    hubspot.seed("d@example.com")  # seeded again, subscribed
    assert hubspot.opted_out_count == len(hubspot.opted_out) == 1
