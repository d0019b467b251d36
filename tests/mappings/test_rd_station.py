"""mappings/rd_station.py against the RD Station Marketing emulator."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from mappings.rd_station import RDStation
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
from syncworker.devkit.emulators.rd_station import DAY, RDStationEmulator
from tests.mappings.contract import StateContract, addresses, state_change

APPLIED, ALREADY = OutcomeStatus.APPLIED, OutcomeStatus.ALREADY
NOT_FOUND, RETRY, FAILED = OutcomeStatus.NOT_FOUND, OutcomeStatus.RETRY, OutcomeStatus.FAILED
TOKEN = "/auth/token"
CONTACTS = "/platform/contacts"


def basis(kind: str, status: str) -> dict[str, str]:
    return {"category": "communications", "type": kind, "status": status}


@pytest.fixture()
def rd() -> Iterator[RDStationEmulator]:
    with RDStationEmulator() as emulator:
        yield emulator


def settings(emulator: RDStationEmulator) -> dict[str, str]:
    return {
        "CLIENT_ID": emulator.client_id,
        "CLIENT_SECRET": emulator.client_secret,
        "REFRESH_TOKEN": emulator.refresh_token,
        "BASE_URL": emulator.url,
    }


def make(emulator: RDStationEmulator, session: requests.Session, **extra: str) -> RDStation:
    http = HttpClient("rd_station", emulator.url, session=session, timeout=5.0)
    return RDStation(DestinationConfig("rd_station", {**settings(emulator), **extra}), http)


def statuses(destination: RDStation, *changes: ContactChange) -> list[OutcomeStatus]:
    return [o.status for o in destination.sync(list(changes))]


def calls(emulator: RDStationEmulator) -> list[tuple[str, str]]:
    """The journal as (method, path) with each contact's uuid replaced by ``{uuid}``."""
    uuids = {c["uuid"]: "{uuid}" for c in emulator.state.values()}
    found = []
    for request in emulator.requests:
        path = request.path
        for known, placeholder in uuids.items():
            path = path.replace(known, placeholder)
        found.append((request.method, path))
    return found


class TestRDStationContract(StateContract):
    destination = "rd_station"

    @pytest.fixture()
    def emulator(self) -> Iterator[RDStationEmulator]:
        with RDStationEmulator() as emulator:
            yield emulator

    def settings(self, emulator: RDStationEmulator) -> dict[str, str]:
        return settings(emulator)

    def bad_credentials(self, emulator: RDStationEmulator) -> dict[str, str]:
        return {"REFRESH_TOKEN": "revoked-refresh-token"}

    def changes(self, emulator: RDStationEmulator, n: int) -> list[ContactChange]:
        emails = addresses(n)
        for email in emails:
            emulator.seed(email, legal_bases=[basis("consent", "granted")])
        return [state_change(e, Kind.UNSUBSCRIBE) for e in emails]

    def snapshot(self, emulator: RDStationEmulator) -> Any:
        return emulator.state, {e: emulator.patches(e) for e in emulator.contacts}

    def partial(
        self, emulator: RDStationEmulator
    ) -> tuple[list[ContactChange], dict[str, str], list[OutcomeStatus]]:
        emulator.seed("new@example.com")
        emulator.seed("done@example.com", legal_bases=[basis("consent", "declined")])
        emulator.seed("busy@example.com")
        emulator.use_up("busy@example.com")
        emails = ["new@example.com", "done@example.com", "busy@example.com", "ghost@example.com"]
        expected = [APPLIED, ALREADY, RETRY, NOT_FOUND]
        return [state_change(e, Kind.UNSUBSCRIBE) for e in emails], {}, expected

    def unknown_changes(self, emulator: RDStationEmulator, n: int) -> list[ContactChange]:
        return [state_change(e, Kind.HARD_BOUNCE) for e in addresses(n, "unknown")]

    def contacts(self, emulator: RDStationEmulator) -> set[str]:
        return emulator.contacts


# -- what each hygiene kind becomes ---------------------------------------------------------------


def test_an_unsubscribe_declines_the_consent_legal_basis(
    rd: RDStationEmulator, session: requests.Session
) -> None:
    rd.seed("a@example.com", legal_bases=[basis("consent", "granted")], tags=["customer"])
    assert statuses(make(rd, session), state_change("a@example.com", Kind.UNSUBSCRIBE)) == [APPLIED]
    assert calls(rd) == [
        ("POST", TOKEN),
        ("GET", f"{CONTACTS}/email:a@example.com"),
        ("PATCH", f"{CONTACTS}/{{uuid}}"),
    ]
    assert rd.calls(CONTACTS, "PATCH")[0].json == {"legal_bases": [basis("consent", "declined")]}
    contact = rd.contact("a@example.com")
    assert contact is not None
    assert contact["legal_bases"] == [basis("consent", "declined")]
    assert contact["tags"] == ["customer"]


def test_every_granted_communications_basis_is_declined(
    rd: RDStationEmulator, session: requests.Session
) -> None:
    """A legitimate-interest basis left granted would keep the contact mailable."""
    rd.seed("a@example.com", legal_bases=[basis("legitimate_interest", "granted")])
    make(rd, session).sync([state_change("a@example.com", MANUAL)])
    assert rd.calls(CONTACTS, "PATCH")[0].json == {
        "legal_bases": [basis("consent", "declined"), basis("legitimate_interest", "declined")]
    }


@pytest.mark.parametrize("replace", [False, True], ids=["merged", "replaced"])
def test_no_basis_stays_granted_whether_rd_merges_or_replaces_legal_bases(
    session: requests.Session, replace: bool
) -> None:
    """RD Station does not document how a PATCH's legal_bases combine with the contact's."""
    with RDStationEmulator(legal_bases_replace=replace) as rd:
        bases = [basis(t, "granted") for t in ("consent", "legitimate_interest")]
        rd.seed("a@example.com", legal_bases=[*bases, basis("vital_interest", "declined")])
        destination = make(rd, session)
        assert statuses(destination, state_change("a@example.com", MANUAL)) == [APPLIED]
        contact = rd.contact("a@example.com")
        assert contact is not None
        assert {b["type"] for b in contact["legal_bases"]} >= {"consent", "legitimate_interest"}
        assert all(b["status"] == "declined" for b in contact["legal_bases"])
        assert statuses(destination, state_change("a@example.com", MANUAL)) == [ALREADY]
        assert len(rd.calls(CONTACTS, "PATCH")) == 1


def test_a_hard_bounce_declines_and_tags_the_contact(
    rd: RDStationEmulator, session: requests.Session
) -> None:
    rd.seed("a@example.com", tags=["customer"])
    assert statuses(make(rd, session), state_change("a@example.com", Kind.HARD_BOUNCE)) == [APPLIED]
    assert calls(rd)[2:] == [
        ("PATCH", f"{CONTACTS}/{{uuid}}"),
        ("POST", f"{CONTACTS}/uuid:{{uuid}}/tag"),
    ]
    assert rd.calls(CONTACTS, "POST")[0].json == {"tags": ["syncworker-hard-bounce"]}
    contact = rd.contact("a@example.com")
    assert contact is not None
    assert contact["tags"] == ["customer", "syncworker-hard-bounce"]
    assert contact["legal_bases"] == [basis("consent", "declined")]


def test_a_soft_bounce_suppression_only_tags_and_spends_no_update(
    rd: RDStationEmulator, session: requests.Session
) -> None:
    rd.seed("a@example.com", legal_bases=[basis("consent", "granted")])
    change = state_change("a@example.com", Kind.SOFT_BOUNCE, Kind.BLOCKED)
    assert statuses(make(rd, session), change) == [APPLIED]
    assert rd.patches("a@example.com") == 0
    contact = rd.contact("a@example.com")
    assert contact is not None
    assert contact["tags"] == ["syncworker-blocked", "syncworker-soft-bounce"]
    assert contact["legal_bases"] == [basis("consent", "granted")]


def test_a_spam_complaint_declines_and_tags(
    rd: RDStationEmulator, session: requests.Session
) -> None:
    rd.seed("a@example.com")
    make(rd, session).sync([state_change("a@example.com", Kind.SPAM_COMPLAINT)])
    contact = rd.contact("a@example.com")
    assert contact is not None
    assert contact["tags"] == ["syncworker-spam-complaint"]
    assert contact["legal_bases"] == [basis("consent", "declined")]


def test_a_contact_already_in_its_state_costs_one_get(
    rd: RDStationEmulator, session: requests.Session
) -> None:
    """RD Station allows 24 updates per contact a day: no-op repeats must not spend them."""
    rd.seed("a@example.com")
    destination = make(rd, session)
    change = state_change("a@example.com", Kind.HARD_BOUNCE, Kind.UNSUBSCRIBE)
    destination.sync([change])
    rd.clear_journal()
    for _ in range(30):
        outcome = destination.sync([change])[0]
        assert (outcome.status, outcome.detail) == (ALREADY, "nothing to change")
    assert {method for method, _ in calls(rd)} == {"GET"}
    assert rd.patches("a@example.com") == 1


def test_unsuppressing_removes_our_tags_and_keeps_the_declined_basis(
    rd: RDStationEmulator, session: requests.Session
) -> None:
    rd.seed("a@example.com", tags=["customer"])
    destination = make(rd, session)
    destination.sync([state_change("a@example.com", Kind.HARD_BOUNCE)])
    rd.clear_journal()
    assert statuses(destination, state_change("a@example.com", version=2)) == [APPLIED]
    assert rd.calls(CONTACTS, "PATCH")[0].json == {"tags": ["customer"]}
    contact = rd.contact("a@example.com")
    assert contact is not None
    assert contact["tags"] == ["customer"]
    assert contact["legal_bases"] == [basis("consent", "declined")]
    outcome = destination.sync([state_change("a@example.com", version=2)])[0]
    assert outcome.status is ALREADY
    assert "declined legal basis stays" in outcome.detail


def test_unsuppressing_grants_the_basis_again_when_resubscribe_is_set(
    rd: RDStationEmulator, session: requests.Session
) -> None:
    rd.seed("a@example.com", legal_bases=[basis("consent", "declined")])
    destination = make(rd, session, RESUBSCRIBE="true")
    assert statuses(destination, state_change("a@example.com")) == [APPLIED]
    contact = rd.contact("a@example.com")
    assert contact is not None
    assert contact["legal_bases"] == [basis("consent", "granted")]


def test_the_legal_basis_type_and_tag_prefix_are_configurable(
    rd: RDStationEmulator, session: requests.Session
) -> None:
    rd.seed("a@example.com")
    destination = make(rd, session, LEGAL_BASIS_TYPE="legitimate_interest", TAG_PREFIX="bounce-")
    destination.sync([state_change("a@example.com", Kind.HARD_BOUNCE)])
    contact = rd.contact("a@example.com")
    assert contact is not None
    assert contact["legal_bases"] == [basis("legitimate_interest", "declined")]
    assert contact["tags"] == ["bounce-hard-bounce"]


def test_an_empty_tag_prefix_sends_no_tags(
    rd: RDStationEmulator, session: requests.Session
) -> None:
    rd.seed("a@example.com", tags=["syncworker-hard-bounce"])
    destination = make(rd, session, TAG_PREFIX="")
    assert statuses(destination, state_change("a@example.com", Kind.SOFT_BOUNCE)) == [ALREADY]
    assert statuses(destination, state_change("a@example.com", Kind.HARD_BOUNCE)) == [APPLIED]
    assert rd.calls(CONTACTS, "POST") == []


def test_the_email_upsert_is_never_used(rd: RDStationEmulator, session: requests.Session) -> None:
    """PATCH /platform/contacts/email:… creates missing contacts: only the uuid update is used."""
    rd.seed("known@example.com")
    changes = [state_change(e, Kind.HARD_BOUNCE) for e in ("known@example.com", "new@example.com")]
    assert statuses(make(rd, session), *changes) == [APPLIED, NOT_FOUND]
    assert rd.created == []
    assert all("email:" not in r.path for r in rd.requests if r.method != "GET")


def test_addresses_are_quoted_in_the_path(rd: RDStationEmulator, session: requests.Session) -> None:
    rd.seed("a+tag@example.com")
    assert statuses(make(rd, session), state_change("a+tag@example.com", MANUAL)) == [APPLIED]
    assert rd.requests[1].path == f"{CONTACTS}/email:a%2Btag@example.com"


# -- limits and failures --------------------------------------------------------------------------


def test_a_contact_over_its_daily_limit_is_retried_alone_after_the_window(
    rd: RDStationEmulator, session: requests.Session
) -> None:
    for email in ("busy@example.com", "free@example.com"):
        rd.seed(email)
    rd.use_up("busy@example.com")
    destination = make(rd, session)
    changes = [state_change(e, MANUAL) for e in ("busy@example.com", "free@example.com")]
    outcomes = destination.sync(changes)
    assert [o.status for o in outcomes] == [RETRY, APPLIED]
    assert outcomes[0].retry_after == 3600
    assert "TOO_MANY_REQUESTS" in outcomes[0].detail
    assert rd.limited == 1
    rd.advance(DAY)
    assert statuses(destination, changes[0]) == [APPLIED]


def test_the_limit_answer_honours_retry_after_and_the_setting(session: requests.Session) -> None:
    with RDStationEmulator(limit_retry_after=True) as rd:
        rd.seed("a@example.com")
        rd.use_up("a@example.com")
        outcome = make(rd, session).sync([state_change("a@example.com", MANUAL)])[0]
        assert outcome.status is RETRY
        assert outcome.retry_after is not None and DAY - 5 <= outcome.retry_after <= DAY + 2
    with RDStationEmulator() as rd:
        rd.seed("a@example.com")
        rd.use_up("a@example.com")
        destination = make(rd, session, LIMIT_RETRY_AFTER="7200")
        assert destination.sync([state_change("a@example.com", MANUAL)])[0].retry_after == 7200


def test_the_tag_limit_is_a_per_contact_retry_too(session: requests.Session) -> None:
    with RDStationEmulator(tag_limit=0) as rd:
        rd.seed("a@example.com")
        outcome = make(rd, session).sync([state_change("a@example.com", Kind.SOFT_BOUNCE)])[0]
        assert outcome.status is RETRY
        assert "120 tag requests" in outcome.detail


def test_a_rejected_update_fails_that_contact_only(
    rd: RDStationEmulator, session: requests.Session
) -> None:
    for email in addresses(2):
        rd.seed(email)
    rd.fail_next(1, status=422, after=2)  # token, GET, then the first PATCH
    assert statuses(make(rd, session), *(state_change(e, MANUAL) for e in addresses(2))) == [
        FAILED,
        APPLIED,
    ]


def test_a_contact_deleted_between_read_and_update_is_not_found(
    rd: RDStationEmulator, session: requests.Session
) -> None:
    rd.seed("a@example.com")
    rd.fail_next(1, status=404, after=2)  # the PATCH answers RESOURCE_NOT_FOUND
    assert statuses(make(rd, session), state_change("a@example.com", MANUAL)) == [NOT_FOUND]


# -- auth -----------------------------------------------------------------------------------------


def test_an_expired_token_is_refreshed_and_the_call_repeated_once(
    rd: RDStationEmulator, session: requests.Session
) -> None:
    """The batch in flight survives: only the rejected call is sent again."""
    for email in addresses(2):
        rd.seed(email)
    rd.expire_tokens(after=2)
    outcomes = make(rd, session).sync([state_change(e, MANUAL) for e in addresses(2)])
    assert [o.status for o in outcomes] == [APPLIED, APPLIED]
    assert [(r.method, r.status) for r in rd.requests] == [
        ("POST", 200),
        ("GET", 200),
        ("PATCH", 200),
        ("GET", 401),
        ("POST", 200),
        ("GET", 200),
        ("PATCH", 200),
    ]
    assert rd.refreshes == 2


def test_the_expiry_answer_names_the_expired_token(
    rd: RDStationEmulator, session: requests.Session
) -> None:
    rd.seed("a@example.com")
    destination = make(rd, session)
    destination.sync([state_change("a@example.com", MANUAL)])
    rd.advance(DAY + 1)  # past expires_in on the emulator's clock only
    assert statuses(destination, state_change("a@example.com", version=2)) == [ALREADY]
    assert [(r.path, r.status) for r in rd.requests[-3:]] == [
        (f"{CONTACTS}/email:a@example.com", 401),
        (TOKEN, 200),
        (f"{CONTACTS}/email:a@example.com", 200),
    ]
    headers = auth(rd, session)
    rd.advance(DAY + 1)
    expired = session.get(rd.url + CONTACTS + "/email:a@example.com", headers=headers)
    assert 'error="expired_token"' in expired.headers["WWW-Authenticate"]
    unknown = session.get(
        rd.url + CONTACTS + "/email:a@example.com", headers={"Authorization": "Bearer x"}
    )
    assert (unknown.status_code, unknown.headers.get("WWW-Authenticate")) == (401, None)
    assert unknown.json() == {
        "errors": {"error_type": "UNAUTHORIZED", "error_message": "Invalid token."}
    }


def test_a_token_near_its_expiry_is_renewed_before_the_call(
    rd: RDStationEmulator, session: requests.Session
) -> None:
    rd.seed("a@example.com")
    destination = make(rd, session)
    destination.sync([state_change("a@example.com", MANUAL)])
    assert 86_280 < destination.expires_at - time.monotonic() <= 86_340  # expires_in less 60 s
    destination.expires_at = 0.0  # as if expires_in had run out meanwhile
    destination.sync([state_change("a@example.com", MANUAL)])
    assert rd.refreshes == 2
    assert all(r.status != 401 for r in rd.requests)


def test_a_token_rejected_after_a_refresh_is_bad_credentials(
    rd: RDStationEmulator, session: requests.Session
) -> None:
    rd.seed("a@example.com")
    rd.fail_next(1, status=401, after=1)
    rd.fail_next(1, status=401, after=1)
    with pytest.raises(BadCredentials) as caught:
        make(rd, session).sync([state_change("a@example.com", MANUAL)])
    assert caught.value.status == 401
    assert rd.refreshes == 2


def test_wrong_client_credentials_are_bad_credentials(
    rd: RDStationEmulator, session: requests.Session
) -> None:
    with pytest.raises(BadCredentials) as caught:
        make(rd, session, CLIENT_SECRET="wrong").sync([state_change("a@example.com", MANUAL)])
    assert "ACCESS_DENIED" in caught.value.body


@pytest.mark.parametrize(
    ("key", "value"),
    [("LEGAL_BASIS_TYPE", "opt_out"), ("TAG_PREFIX", "Hygiene-"), ("LIMIT_RETRY_AFTER", "0")],
)
def test_bad_settings_are_a_configuration_error(
    rd: RDStationEmulator, session: requests.Session, key: str, value: str
) -> None:
    with pytest.raises(NotConfigured) as caught:
        make(rd, session, **{key: value})
    assert f"SYNCWORKER_RD_STATION_{key}" in str(caught.value)


# -- the emulator itself --------------------------------------------------------------------------


def auth(rd: RDStationEmulator, session: requests.Session) -> dict[str, str]:
    body = {
        "client_id": rd.client_id,
        "client_secret": rd.client_secret,
        "refresh_token": rd.refresh_token,
    }
    answer = session.post(rd.url + TOKEN, json=body).json()
    assert answer["expires_in"] == 86400
    return {"Authorization": f"Bearer {answer['access_token']}"}


def test_emulator_upserts_by_email_as_rd_station_does(
    rd: RDStationEmulator, session: requests.Session
) -> None:
    headers = auth(rd, session)
    url = rd.url + CONTACTS + "/email:new@example.com"
    response = session.patch(url, json={"email": "new@example.com"}, headers=headers)
    assert (response.status_code, response.json()["errors"]["error_type"]) == (
        400,
        "CONFLICTING_FIELD",
    )
    response = session.patch(url, json={"name": "New"}, headers=headers)
    assert response.status_code == 200
    assert rd.created == ["new@example.com"]
    response = session.patch(rd.url + CONTACTS + "/no-such-uuid", json={}, headers=headers)
    assert response.json()["errors"]["error_type"] == "RESOURCE_NOT_FOUND"


def test_emulator_validates_legal_bases_and_tags(
    rd: RDStationEmulator, session: requests.Session
) -> None:
    contact = rd.seed("a@example.com")
    headers = auth(rd, session)
    bad = {"legal_bases": [{"category": "marketing", "type": "consent", "status": "declined"}]}
    response = session.patch(rd.url + f"{CONTACTS}/{contact}", json=bad, headers=headers)
    assert response.json()["errors"]["legal_bases"][0]["error_type"] == "INVALID_OPTION"
    tag = rd.url + f"{CONTACTS}/uuid:{contact}/tag"
    response = session.post(tag, json={"tags": ["Upper"]}, headers=headers)
    assert response.status_code == 400
    response = session.post(tag, json={"tags": ["a", "b"]}, headers=headers)
    assert response.json() == {"tags": ["a", "b"]}
