"""mappings/salesforce.py against the Salesforce emulator."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from mappings.salesforce import Salesforce
from syncworker.destinations import (
    MANUAL,
    BadCredentials,
    ContactChange,
    ContactState,
    DestinationConfig,
    HttpClient,
    Kind,
    NotConfigured,
    OutcomeStatus,
    PermanentError,
    ReasonEntry,
    Throttled,
)
from syncworker.devkit.emulators.salesforce import SalesforceEmulator
from tests.mappings.contract import T0, StateContract, addresses, state_change

APPLIED, ALREADY = OutcomeStatus.APPLIED, OutcomeStatus.ALREADY
NOT_FOUND, RETRY, FAILED = OutcomeStatus.NOT_FOUND, OutcomeStatus.RETRY, OutcomeStatus.FAILED
TOKEN = "/services/oauth2/token"
QUERY = "/services/data/v62.0/query"
UPDATE = "/services/data/v62.0/composite/sobjects"
COMPLAINT = "Spam_Complaint__c"


@pytest.fixture()
def salesforce() -> Iterator[SalesforceEmulator]:
    with SalesforceEmulator(custom_fields=[COMPLAINT]) as emulator:
        yield emulator


def settings(emulator: SalesforceEmulator) -> dict[str, str]:
    return {
        "CLIENT_ID": emulator.client_id,
        "CLIENT_SECRET": emulator.client_secret,
        "REFRESH_TOKEN": emulator.refresh_token,
        "BASE_URL": emulator.url,
    }


def make(emulator: SalesforceEmulator, session: requests.Session, **extra: str) -> Salesforce:
    http = HttpClient("salesforce", emulator.url, session=session, timeout=5.0)
    return Salesforce(DestinationConfig("salesforce", {**settings(emulator), **extra}), http)


def statuses(destination: Salesforce, *changes: ContactChange) -> list[OutcomeStatus]:
    return [o.status for o in destination.sync(list(changes))]


def bounced(email: str, *reasons: str, detail: str | None = None) -> ContactChange:
    """A suppressed state whose hard bounce carries the ESP's ``detail``."""
    entries = {r: ReasonEntry(r, T0, "postmark", detail) for r in reasons}
    return ContactChange(email, email, ContactState(email, True, entries, T0, 1))


class TestSalesforceContract(StateContract):
    destination = "salesforce"

    @pytest.fixture()
    def emulator(self) -> Iterator[SalesforceEmulator]:
        with SalesforceEmulator() as emulator:
            yield emulator

    def expected_retry_after(self, emulator: Any, window: float) -> tuple[float, float]:
        """REQUEST_LIMIT_EXCEEDED comes without Retry-After: the mapping pauses LIMIT_PAUSE."""
        return 3600, 3600

    def settings(self, emulator: SalesforceEmulator) -> dict[str, str]:
        return settings(emulator)

    def bad_credentials(self, emulator: SalesforceEmulator) -> dict[str, str]:
        return {"REFRESH_TOKEN": "revoked-refresh-token"}

    def changes(self, emulator: SalesforceEmulator, n: int) -> list[ContactChange]:
        emails = addresses(n)
        for email in emails:
            emulator.seed(email)
        return [state_change(e, Kind.UNSUBSCRIBE) for e in emails]

    def snapshot(self, emulator: SalesforceEmulator) -> Any:
        return emulator.state, dict(emulator.saves)

    def partial(
        self, emulator: SalesforceEmulator
    ) -> tuple[list[ContactChange], dict[str, str], list[OutcomeStatus]]:
        emulator.seed("new@example.com")
        emulator.seed("done@example.com", HasOptedOutOfEmail=True)
        emulator.fail_record(emulator.seed("locked@example.com"), "UNABLE_TO_LOCK_ROW")
        emails = ["new@example.com", "done@example.com", "locked@example.com", "ghost@example.com"]
        return (
            [state_change(e, Kind.UNSUBSCRIBE) for e in emails],
            {},
            [
                APPLIED,
                ALREADY,
                RETRY,
                NOT_FOUND,
            ],
        )

    def unknown_changes(self, emulator: SalesforceEmulator, n: int) -> list[ContactChange]:
        return [state_change(e, Kind.HARD_BOUNCE) for e in addresses(n, "unknown")]

    def contacts(self, emulator: SalesforceEmulator) -> set[str]:
        return emulator.emails


# -- what each hygiene kind becomes ---------------------------------------------------------------


def test_a_full_batch_costs_a_token_two_queries_and_one_update(
    salesforce: SalesforceEmulator, session: requests.Session
) -> None:
    emails = addresses(200)
    for email in emails:
        salesforce.seed(email)
    destination = make(salesforce, session)
    assert (
        statuses(destination, *(state_change(e, Kind.UNSUBSCRIBE) for e in emails))
        == [APPLIED] * 200
    )
    assert [r.path for r in salesforce.requests] == [TOKEN, QUERY, QUERY, UPDATE]
    update = salesforce.calls(UPDATE)[0].json
    assert update["allOrNone"] is False
    assert update["records"][0] == {
        "attributes": {"type": "Contact"},
        "id": salesforce.records(emails[0])[0]["Id"],
        "HasOptedOutOfEmail": True,
    }
    queries = [r.query["q"] for r in salesforce.calls(QUERY)]
    assert queries[0].startswith(
        "SELECT Id, Email, HasOptedOutOfEmail, EmailBouncedReason, EmailBouncedDate FROM Contact"
    )
    assert queries[1].endswith(" AND IsConverted = false")


def test_every_record_of_an_address_is_updated_but_not_converted_leads(
    salesforce: SalesforceEmulator, session: requests.Session
) -> None:
    """Email is not unique in Salesforce: a Contact, a duplicate and a Lead all get the opt-out."""
    contact = salesforce.seed("a@example.com")
    duplicate = salesforce.seed("A@Example.com")
    lead = salesforce.seed("a@example.com", "Lead")
    converted = salesforce.seed("a@example.com", "Lead", converted=True)
    outcome = make(salesforce, session).sync([state_change("a@example.com", Kind.UNSUBSCRIBE)])[0]
    assert outcome.status is APPLIED
    assert all(salesforce.record(i)["HasOptedOutOfEmail"] for i in (contact, duplicate, lead))
    assert not salesforce.record(converted)["HasOptedOutOfEmail"]
    types = [r["attributes"]["type"] for r in salesforce.calls(UPDATE)[0].json["records"]]
    assert types == ["Contact", "Contact", "Lead"]  # one type chunk per object


def test_a_hard_bounce_opts_out_and_sets_the_bounce_fields(
    salesforce: SalesforceEmulator, session: requests.Session
) -> None:
    record = salesforce.seed("a@example.com")
    change = bounced("a@example.com", Kind.HARD_BOUNCE, detail="550 5.1.1 user unknown")
    assert statuses(make(salesforce, session), change) == [APPLIED]
    saved = salesforce.record(record)
    assert saved["HasOptedOutOfEmail"] is True
    assert (
        saved["EmailBouncedReason"] == "syncworker: hard_bounce (postmark): 550 5.1.1 user unknown"
    )
    assert saved["EmailBouncedDate"] == "2026-01-01T00:00:00.000+0000"
    assert saved["IsEmailBounced"] is True


def test_a_leads_bounce_fields_are_updated_like_a_contacts(
    salesforce: SalesforceEmulator, session: requests.Session
) -> None:
    """The Object Reference lists both bounce fields as updatable on Lead too."""
    lead = salesforce.seed("a@example.com", "Lead")
    assert statuses(make(salesforce, session), bounced("a@example.com", Kind.HARD_BOUNCE)) == [
        APPLIED
    ]
    saved = salesforce.record(lead)
    assert saved["EmailBouncedReason"] == "syncworker: hard_bounce (postmark)"
    assert saved["EmailBouncedDate"] == "2026-01-01T00:00:00.000+0000"
    assert "IsEmailBounced" not in saved  # a Contact-only field
    (update,) = salesforce.calls(UPDATE)
    assert {"EmailBouncedReason", "EmailBouncedDate"} <= set(update.json["records"][0])


def test_repeating_a_sync_sends_no_update_and_saves_nothing(
    salesforce: SalesforceEmulator, session: requests.Session
) -> None:
    """Salesforce runs triggers and flows on every save: a no-op is not sent at all."""
    record = salesforce.seed("a@example.com")
    change = bounced("a@example.com", Kind.HARD_BOUNCE, Kind.UNSUBSCRIBE)
    destination = make(salesforce, session)
    destination.sync([change])
    salesforce.clear_journal()
    outcome = destination.sync([change])[0]
    assert outcome.status is ALREADY
    assert "nothing to change" in outcome.detail
    assert salesforce.calls(UPDATE) == []
    assert salesforce.saves == {record: 1}


def test_a_soft_bounce_suppression_records_the_bounce_without_opting_out(
    salesforce: SalesforceEmulator, session: requests.Session
) -> None:
    record = salesforce.seed("a@example.com")
    assert statuses(make(salesforce, session), bounced("a@example.com", Kind.SOFT_BOUNCE)) == [
        APPLIED
    ]
    saved = salesforce.record(record)
    assert saved["HasOptedOutOfEmail"] is False
    assert saved["EmailBouncedReason"] == "syncworker: soft_bounce (postmark)"


def test_a_spam_complaint_opts_out_and_checks_the_complaint_field(
    salesforce: SalesforceEmulator, session: requests.Session
) -> None:
    record = salesforce.seed("a@example.com")
    destination = make(salesforce, session, COMPLAINT_FIELD=COMPLAINT)
    assert statuses(destination, state_change("a@example.com", Kind.SPAM_COMPLAINT)) == [APPLIED]
    saved = salesforce.record(record)
    assert (saved["HasOptedOutOfEmail"], saved[COMPLAINT]) == (True, True)
    assert saved["EmailBouncedReason"] is None
    assert COMPLAINT in salesforce.calls(QUERY)[0].query["q"]


def test_manual_suppression_opts_out(
    salesforce: SalesforceEmulator, session: requests.Session
) -> None:
    record = salesforce.seed("a@example.com", "Lead")
    assert statuses(make(salesforce, session), state_change("a@example.com", MANUAL)) == [APPLIED]
    assert salesforce.record(record)["HasOptedOutOfEmail"] is True


def test_opt_out_reasons_are_configurable(
    salesforce: SalesforceEmulator, session: requests.Session
) -> None:
    record = salesforce.seed("a@example.com")
    destination = make(salesforce, session, OPT_OUT_REASONS="unsubscribe")
    assert statuses(destination, bounced("a@example.com", Kind.HARD_BOUNCE)) == [APPLIED]
    assert salesforce.record(record)["HasOptedOutOfEmail"] is False
    assert salesforce.record(record)["EmailBouncedReason"].startswith("syncworker: hard_bounce")


def test_unsuppressing_clears_what_syncworker_wrote_and_keeps_the_opt_out(
    salesforce: SalesforceEmulator, session: requests.Session
) -> None:
    """Bounces Salesforce recorded itself stay; an opt-out stays unless RESUBSCRIBE is set."""
    ours = salesforce.seed("a@example.com")
    native = salesforce.seed(
        "a@example.com",
        "Lead",
        EmailBouncedReason="550 mailbox unavailable",
        EmailBouncedDate="2025-06-01T10:00:00.000+0000",
    )
    destination = make(salesforce, session, COMPLAINT_FIELD=COMPLAINT)
    destination.sync([bounced("a@example.com", Kind.HARD_BOUNCE, Kind.SPAM_COMPLAINT)])
    assert salesforce.record(native)["EmailBouncedReason"].startswith("syncworker: ")
    salesforce.seed("b@example.com", EmailBouncedReason="550 mailbox unavailable")
    outcomes = destination.sync(
        [state_change("a@example.com", version=2), state_change("b@example.com", version=2)]
    )
    assert [o.status for o in outcomes] == [APPLIED, ALREADY]
    assert "the opt-out stays" in destination.sync([state_change("a@example.com")])[0].detail
    for record in map(salesforce.record, (ours, native)):
        assert record["HasOptedOutOfEmail"] is True
        assert (record["EmailBouncedReason"], record["EmailBouncedDate"], record[COMPLAINT]) == (
            None,
            None,
            False,
        )
    assert salesforce.records("b@example.com")[0]["EmailBouncedReason"] == "550 mailbox unavailable"


def test_unsuppressing_clears_the_opt_out_when_resubscribe_is_set(
    salesforce: SalesforceEmulator, session: requests.Session
) -> None:
    record = salesforce.seed("a@example.com", HasOptedOutOfEmail=True)
    destination = make(salesforce, session, RESUBSCRIBE="true")
    assert statuses(destination, state_change("a@example.com", version=2)) == [APPLIED]
    assert salesforce.record(record)["HasOptedOutOfEmail"] is False


def test_bounce_fields_can_be_left_alone(
    salesforce: SalesforceEmulator, session: requests.Session
) -> None:
    record = salesforce.seed("a@example.com")
    destination = make(salesforce, session, BOUNCE_FIELDS="false")
    assert statuses(destination, bounced("a@example.com", Kind.HARD_BOUNCE)) == [APPLIED]
    assert salesforce.record(record)["EmailBouncedReason"] is None
    assert "EmailBounced" not in salesforce.calls(QUERY)[0].query["q"]


def test_contacts_only_when_objects_says_so(
    salesforce: SalesforceEmulator, session: requests.Session
) -> None:
    lead = salesforce.seed("a@example.com", "Lead")
    destination = make(salesforce, session, OBJECTS="Contact")
    assert statuses(destination, state_change("a@example.com", Kind.UNSUBSCRIBE)) == [NOT_FOUND]
    assert salesforce.record(lead)["HasOptedOutOfEmail"] is False
    assert len(salesforce.calls(QUERY)) == 1


# -- per-record answers ---------------------------------------------------------------------------


def test_a_field_the_org_keeps_read_only_fails_that_contact(session: requests.Session) -> None:
    """Bounce fields may not be writable in every org: the error names the field to fix."""
    with SalesforceEmulator(read_only=["EmailBouncedReason"]) as salesforce:
        salesforce.seed("a@example.com")
        salesforce.seed("b@example.com")
        outcomes = make(salesforce, session).sync(
            [bounced("a@example.com", Kind.HARD_BOUNCE), state_change("b@example.com", MANUAL)]
        )
        assert [o.status for o in outcomes] == [FAILED, APPLIED]
        assert "INVALID_FIELD_FOR_INSERT_UPDATE" in outcomes[0].detail
        assert "EmailBouncedReason" in outcomes[0].detail
        change = bounced("a@example.com", Kind.HARD_BOUNCE)
        assert statuses(make(salesforce, session, BOUNCE_FIELDS="false"), change) == [APPLIED]


def test_a_record_deleted_since_the_query_is_not_found(
    salesforce: SalesforceEmulator, session: requests.Session
) -> None:
    salesforce.fail_record(salesforce.seed("a@example.com"), "ENTITY_IS_DELETED")
    assert statuses(make(salesforce, session), state_change("a@example.com", MANUAL)) == [NOT_FOUND]


def test_a_contact_is_as_bad_as_its_worst_record(
    salesforce: SalesforceEmulator, session: requests.Session
) -> None:
    salesforce.seed("a@example.com")
    salesforce.fail_record(salesforce.seed("a@example.com", "Lead"), "UNABLE_TO_LOCK_ROW")
    salesforce.seed("b@example.com")
    salesforce.fail_record(
        salesforce.seed("b@example.com", "Lead"), "FIELD_CUSTOM_VALIDATION_EXCEPTION"
    )
    outcomes = make(salesforce, session).sync(
        [state_change("a@example.com", MANUAL), state_change("b@example.com", MANUAL)]
    )
    assert [o.status for o in outcomes] == [RETRY, FAILED]
    assert "FIELD_CUSTOM_VALIDATION_EXCEPTION" in outcomes[1].detail


def test_more_than_200_records_take_two_updates(
    salesforce: SalesforceEmulator, session: requests.Session
) -> None:
    emails = addresses(150)
    for email in emails:
        salesforce.seed(email)
        salesforce.seed(email, "Lead")
    outcomes = make(salesforce, session).sync([state_change(e, MANUAL) for e in emails])
    assert {o.status for o in outcomes} == {APPLIED}
    assert [len(r.json["records"]) for r in salesforce.calls(UPDATE)] == [200, 100]
    assert len(salesforce.saves) == 300


def test_query_pages_are_followed(session: requests.Session) -> None:
    with SalesforceEmulator(page_size=2) as salesforce:
        emails = addresses(5)
        for email in emails:
            salesforce.seed(email)
        outcomes = make(salesforce, session).sync([state_change(e, MANUAL) for e in emails])
        assert {o.status for o in outcomes} == {APPLIED}
        assert len(salesforce.calls(QUERY + "/")) == 2


def test_long_addresses_split_the_query_and_quotes_are_escaped(
    salesforce: SalesforceEmulator, session: requests.Session
) -> None:
    emails = [f"o'brien.{'x' * 60}.{i}@example.com" for i in range(120)]
    for email in emails:
        salesforce.seed(email)
    outcomes = make(salesforce, session).sync([state_change(e, MANUAL) for e in emails])
    assert {o.status for o in outcomes} == {APPLIED}
    queries = salesforce.calls(QUERY)
    assert len(queries) == 4  # two chunks of addresses, for Contact and for Lead
    assert all(len(r.query["q"]) < 7000 for r in queries)
    assert "'o\\'brien." in queries[0].query["q"]


# -- auth and limits ------------------------------------------------------------------------------


def test_an_expired_session_is_refreshed_and_the_call_repeated_once(
    salesforce: SalesforceEmulator, session: requests.Session
) -> None:
    """The batch in flight survives: only the rejected call is sent again."""
    emails = addresses(3)
    for email in emails:
        salesforce.seed(email)
    salesforce.expire_tokens(after=1)
    outcomes = make(salesforce, session).sync([state_change(e, MANUAL) for e in emails])
    assert [o.status for o in outcomes] == [APPLIED] * 3
    assert [(r.path, r.status) for r in salesforce.requests] == [
        (TOKEN, 200),
        (QUERY, 200),
        (QUERY, 401),
        (TOKEN, 200),
        (QUERY, 200),
        (UPDATE, 200),
    ]
    assert salesforce.refreshes == 2


def test_a_session_past_its_timeout_is_renewed(
    salesforce: SalesforceEmulator, session: requests.Session
) -> None:
    salesforce.seed("a@example.com")
    destination = make(salesforce, session)
    destination.sync([state_change("a@example.com", MANUAL)])
    salesforce.advance(7201)
    assert statuses(destination, state_change("a@example.com", MANUAL)) == [ALREADY]
    assert [(r.path, r.status) for r in salesforce.requests[-4:]] == [
        (QUERY, 401),
        (TOKEN, 200),
        (QUERY, 200),
        (QUERY, 200),
    ]


def test_a_session_rejected_after_a_refresh_is_bad_credentials(
    salesforce: SalesforceEmulator, session: requests.Session
) -> None:
    salesforce.seed("a@example.com")
    salesforce.fail_next(1, status=401, after=1)
    salesforce.fail_next(1, status=401, after=1)
    with pytest.raises(BadCredentials) as caught:
        make(salesforce, session).sync([state_change("a@example.com", MANUAL)])
    assert "INVALID_SESSION_ID" in caught.value.body
    assert salesforce.refreshes == 2


def test_a_forbidden_answer_other_than_the_limit_is_bad_credentials(
    salesforce: SalesforceEmulator, session: requests.Session
) -> None:
    salesforce.fail_next(1, status=403, after=1)
    with pytest.raises(BadCredentials):
        make(salesforce, session).sync([state_change("a@example.com", MANUAL)])


def test_the_spent_api_allocation_pauses_for_limit_pause(session: requests.Session) -> None:
    """403 REQUEST_LIMIT_EXCEEDED carries no Retry-After: the pause comes from LIMIT_PAUSE."""
    with SalesforceEmulator(api_limit=1) as salesforce:
        salesforce.seed("a@example.com")
        change = state_change("a@example.com", MANUAL)
        with pytest.raises(Throttled) as caught:
            make(salesforce, session).sync([change])
        assert caught.value.retry_after == 3600
        assert caught.value.status == 403
        assert "api-usage=1/1" in str(caught.value)
        assert salesforce.records("a@example.com")[0]["HasOptedOutOfEmail"] is False
        with pytest.raises(Throttled) as caught:
            make(salesforce, session, LIMIT_PAUSE="900").sync([change])
        assert caught.value.retry_after == 900


def test_every_data_answer_reports_the_api_usage(
    salesforce: SalesforceEmulator, session: requests.Session
) -> None:
    salesforce.seed("a@example.com")
    destination = make(salesforce, session)
    destination.sync([state_change("a@example.com", MANUAL)])
    assert destination.api_usage == "api-usage=3/15000"


def test_data_calls_go_to_the_instance_url_of_the_token_answer(session: requests.Session) -> None:
    with SalesforceEmulator() as instance, SalesforceEmulator(instance=instance) as login:
        record = instance.seed("a@example.com")
        outcome = make(login, session).sync([state_change("a@example.com", MANUAL)])[0]
        assert outcome.status is APPLIED
        assert [r.path for r in login.requests] == [TOKEN]
        assert instance.record(record)["HasOptedOutOfEmail"] is True


def test_the_api_version_is_configurable(
    salesforce: SalesforceEmulator, session: requests.Session
) -> None:
    salesforce.seed("a@example.com")
    make(salesforce, session, API_VERSION="v58.0").sync([state_change("a@example.com", MANUAL)])
    assert salesforce.requests[1].path == "/services/data/v58.0/query"


def test_an_undefined_complaint_field_is_a_permanent_error(
    salesforce: SalesforceEmulator, session: requests.Session
) -> None:
    salesforce.seed("a@example.com")
    with pytest.raises(PermanentError) as caught:
        make(salesforce, session, COMPLAINT_FIELD="Missing__c").sync(
            [state_change("a@example.com", MANUAL)]
        )
    assert "INVALID_FIELD" in caught.value.body


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("API_VERSION", "latest"),
        ("OBJECTS", "Contact,Account"),
        ("COMPLAINT_FIELD", "Spam; DROP"),
        ("LIMIT_PAUSE", "soon"),
    ],
)
def test_bad_settings_are_a_configuration_error(
    salesforce: SalesforceEmulator, session: requests.Session, key: str, value: str
) -> None:
    with pytest.raises(NotConfigured) as caught:
        make(salesforce, session, **{key: value})
    assert f"SYNCWORKER_SALESFORCE_{key}" in str(caught.value)


# -- the emulator itself --------------------------------------------------------------------------


def token(salesforce: SalesforceEmulator, session: requests.Session) -> dict[str, str]:
    form = {
        "grant_type": "refresh_token",
        "client_id": salesforce.client_id,
        "client_secret": salesforce.client_secret,
        "refresh_token": salesforce.refresh_token,
    }
    answer = session.post(salesforce.url + TOKEN, data=form).json()
    return {"Authorization": f"Bearer {answer['access_token']}"}


def test_emulator_rejects_more_than_200_records(
    salesforce: SalesforceEmulator, session: requests.Session
) -> None:
    record = {"attributes": {"type": "Contact"}, "id": salesforce.seed("a@example.com")}
    body = {"allOrNone": False, "records": [record] * 201}
    response = session.patch(salesforce.url + UPDATE, json=body, headers=token(salesforce, session))
    assert response.status_code == 400
    assert response.json()[0]["errorCode"] == "EXCEEDED_ID_LIMIT"


def test_emulator_keeps_is_email_bounced_read_only_and_on_contacts(
    salesforce: SalesforceEmulator, session: requests.Session
) -> None:
    contact = salesforce.seed("a@example.com")
    headers = token(salesforce, session)
    for sobject, status in (("Contact", 200), ("Lead", 400)):
        soql = f"SELECT Id, IsEmailBounced FROM {sobject} WHERE Email IN ('a@example.com')"
        response = session.get(salesforce.url + QUERY, params={"q": soql}, headers=headers)
        assert response.status_code == status, sobject
    record = {"attributes": {"type": "Contact"}, "id": contact, "IsEmailBounced": True}
    body = {"allOrNone": False, "records": [record]}
    response = session.patch(salesforce.url + UPDATE, json=body, headers=headers)
    assert response.json()[0]["errors"][0]["statusCode"] == "INVALID_FIELD_FOR_INSERT_UPDATE"


def test_emulator_rolls_back_everything_when_all_or_none(
    salesforce: SalesforceEmulator, session: requests.Session
) -> None:
    good = salesforce.seed("a@example.com")
    bad = salesforce.seed("b@example.com")
    salesforce.fail_record(bad, "FIELD_CUSTOM_VALIDATION_EXCEPTION")
    records = [
        {"attributes": {"type": "Contact"}, "id": i, "HasOptedOutOfEmail": True}
        for i in (good, bad)
    ]
    response = session.patch(
        salesforce.url + UPDATE,
        json={"allOrNone": True, "records": records},
        headers=token(salesforce, session),
    )
    assert response.status_code == 200
    codes = [r["errors"][0]["statusCode"] for r in response.json()]
    assert codes == ["ALL_OR_NONE_OPERATION_ROLLED_BACK", "FIELD_CUSTOM_VALIDATION_EXCEPTION"]
    assert salesforce.record(good)["HasOptedOutOfEmail"] is False


def test_emulator_answers_salesforce_shapes_for_auth_and_limits(
    salesforce: SalesforceEmulator, session: requests.Session
) -> None:
    response = session.get(salesforce.url + QUERY, params={"q": "SELECT Id FROM Contact"})
    assert (response.status_code, response.json()[0]["errorCode"]) == (401, "INVALID_SESSION_ID")
    form = {"grant_type": "refresh_token", "refresh_token": "x"}
    response = session.post(salesforce.url + TOKEN, data=form)
    assert (response.status_code, response.json()["error"]) == (400, "invalid_client_id")
    headers = token(salesforce, session)
    response = session.get(
        salesforce.url + QUERY, params={"q": "SELECT Id FROM Task"}, headers=headers
    )
    assert response.json()[0]["errorCode"] == "MALFORMED_QUERY"
    assert response.headers["Sforce-Limit-Info"] == "api-usage=1/15000"
    salesforce.rate_limit(0, per_seconds=60)
    response = session.get(salesforce.url + QUERY, headers=headers)
    assert (response.status_code, response.json()[0]["errorCode"]) == (
        403,
        "REQUEST_LIMIT_EXCEEDED",
    )
    assert "Retry-After" not in response.headers
