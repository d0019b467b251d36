"""mappings/mailchimp.py against the Mailchimp emulator."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from mappings.mailchimp import Mailchimp
from syncworker.destinations import (
    MANUAL,
    BadCredentials,
    ContactChange,
    DestinationConfig,
    HttpClient,
    Kind,
    NotConfigured,
    OutcomeStatus,
    Throttled,
)
from syncworker.devkit.emulators.mailchimp import MailchimpEmulator
from tests.mappings.contract import StateContract, addresses, state_change

APPLIED, ALREADY = OutcomeStatus.APPLIED, OutcomeStatus.ALREADY
NOT_FOUND, RETRY, FAILED = OutcomeStatus.NOT_FOUND, OutcomeStatus.RETRY, OutcomeStatus.FAILED


def md5(email: str) -> str:
    return hashlib.md5(email.lower().encode()).hexdigest()


@pytest.fixture()
def mailchimp() -> Iterator[MailchimpEmulator]:
    with MailchimpEmulator(lists=("list1", "list2")) as emulator:
        yield emulator


def make(
    emulator: MailchimpEmulator, session: requests.Session, *, dry_run: bool = False, **extra: str
) -> Mailchimp:
    values = {"API_KEY": emulator.api_key, "LIST_ID": "list1", "BASE_URL": emulator.url + "/3.0"}
    config = DestinationConfig("mailchimp", {**values, **extra})
    http = HttpClient(
        "mailchimp", Mailchimp.effective_base_url(config), session=session, dry_run=dry_run
    )
    return Mailchimp(config, http)


def statuses(outcomes: list[Any]) -> list[OutcomeStatus]:
    return [o.status for o in outcomes]


class TestMailchimpContract(StateContract):
    destination = "mailchimp"

    @pytest.fixture()
    def emulator(self) -> Iterator[MailchimpEmulator]:
        with MailchimpEmulator() as emulator:
            yield emulator

    def expected_retry_after(self, emulator: Any, window: float) -> tuple[float, float]:
        """Mailchimp sends no hint: the mapping waits 10 s."""
        return 10, 10

    def settings(self, emulator: MailchimpEmulator) -> dict[str, str]:
        return {"API_KEY": emulator.api_key, "LIST_ID": "list1", "BASE_URL": emulator.url + "/3.0"}

    def bad_credentials(self, emulator: MailchimpEmulator) -> dict[str, str]:
        return {"API_KEY": "ffffffffffffffffffffffffffffffff-us6"}

    def changes(self, emulator: MailchimpEmulator, n: int) -> list[ContactChange]:
        emails = addresses(n)
        emulator.seed("list1", *emails)
        return [state_change(e, Kind.UNSUBSCRIBE) for e in emails]

    def snapshot(self, emulator: MailchimpEmulator) -> Any:
        return emulator.statuses(), emulator.tags()

    def partial(
        self, emulator: MailchimpEmulator
    ) -> tuple[list[ContactChange], dict[str, str], list[OutcomeStatus]]:
        emulator.seed("list1", "new@example.com")
        emulator.seed("list1", "done@example.com", status="unsubscribed")
        changes = [
            state_change(e, Kind.UNSUBSCRIBE)
            for e in ("new@example.com", "ghost@example.com", "done@example.com")
        ]
        return changes, {}, [APPLIED, NOT_FOUND, ALREADY]

    def unknown_changes(self, emulator: MailchimpEmulator, n: int) -> list[ContactChange]:
        return [state_change(e, Kind.HARD_BOUNCE) for e in addresses(n, "unknown")]

    def contacts(self, emulator: MailchimpEmulator) -> set[str]:
        return emulator.contacts


# -- what each hygiene kind becomes ------------------------------------------------------------


def test_an_unsubscribe_sets_the_status_by_the_md5_of_the_lowercased_address(
    mailchimp: MailchimpEmulator, session: requests.Session
) -> None:
    mailchimp.seed("list1", "Jane.Doe@Example.com")
    outcomes = make(mailchimp, session).sync([state_change("Jane.Doe@Example.com", MANUAL)])
    assert statuses(outcomes) == [APPLIED]
    assert mailchimp.statuses() == {"jane.doe@example.com": "unsubscribed"}
    assert mailchimp.tags() == {}
    get, patch = mailchimp.requests
    path = f"/3.0/lists/list1/members/{md5('jane.doe@example.com')}"
    assert (get.method, get.path, get.query) == ("GET", path, {"fields": "status,tags"})
    assert (patch.method, patch.path, patch.json) == ("PATCH", path, {"status": "unsubscribed"})


@pytest.mark.parametrize(
    ("kind", "tag"),
    [
        (Kind.SPAM_COMPLAINT, "syncworker:spam_complaint"),
        (Kind.HARD_BOUNCE, "syncworker:hard_bounce"),
        (Kind.SOFT_BOUNCE, "syncworker:soft_bounce"),
        (Kind.BLOCKED, "syncworker:blocked"),
    ],
)
def test_a_complaint_or_bounce_unsubscribes_and_tags_the_reason(
    mailchimp: MailchimpEmulator, session: requests.Session, kind: Kind, tag: str
) -> None:
    mailchimp.seed("list1", "a@example.com", tags=("VIP",))
    outcomes = make(mailchimp, session).sync([state_change("a@example.com", kind)])
    assert statuses(outcomes) == [APPLIED]
    assert outcomes[0].detail == "status unsubscribed, tags"
    assert mailchimp.statuses() == {"a@example.com": "unsubscribed"}
    assert mailchimp.tags() == {"a@example.com": sorted(["VIP", tag])}
    (tags,) = mailchimp.calls(method="POST")
    assert tags.json == {"tags": [{"name": tag, "status": "active"}]}


def test_a_second_sync_only_reads(mailchimp: MailchimpEmulator, session: requests.Session) -> None:
    mailchimp.seed("list1", "a@example.com")
    change = [state_change("a@example.com", Kind.SPAM_COMPLAINT, Kind.UNSUBSCRIBE)]
    make(mailchimp, session).sync(change)
    mailchimp.clear_journal()
    outcomes = make(mailchimp, session).sync(change)
    assert statuses(outcomes) == [ALREADY]
    assert [r.method for r in mailchimp.requests] == ["GET"]


def test_hard_bounce_becomes_cleaned_when_configured_and_accepted(
    session: requests.Session,
) -> None:
    with MailchimpEmulator(client_cleaned=True) as mailchimp:
        mailchimp.seed("list1", "a@example.com")
        destination = make(mailchimp, session, HARD_BOUNCE_STATUS="cleaned")
        outcomes = destination.sync([state_change("a@example.com", Kind.HARD_BOUNCE)])
        assert statuses(outcomes) == [APPLIED]
        assert mailchimp.statuses() == {"a@example.com": "cleaned"}
        assert mailchimp.tags() == {"a@example.com": ["syncworker:hard_bounce"]}


@pytest.mark.parametrize("title", ["Invalid Resource", "Forbidden", "Some Title Added Later"])
def test_a_refused_cleaned_falls_back_to_unsubscribed_and_is_not_asked_again(
    session: requests.Session, title: str
) -> None:
    """Whether Mailchimp takes ``cleaned`` from a client, and how it refuses, is undocumented:
    any 400 refusal leaves the member unsubscribed rather than still subscribed."""
    with MailchimpEmulator(cleaned_refusal=title) as mailchimp:
        refused_cleaned_falls_back(mailchimp, session)


def refused_cleaned_falls_back(mailchimp: MailchimpEmulator, session: requests.Session) -> None:
    emails = ["a@example.com", "b@example.com"]
    mailchimp.seed("list1", *emails)
    destination = make(mailchimp, session, HARD_BOUNCE_STATUS="cleaned")
    outcomes = destination.sync([state_change(e, Kind.HARD_BOUNCE) for e in emails])
    assert statuses(outcomes) == [APPLIED, APPLIED]
    assert mailchimp.statuses() == dict.fromkeys(emails, "unsubscribed")
    patches = [r.json["status"] for r in mailchimp.calls(method="PATCH")]
    assert patches == ["cleaned", "unsubscribed", "unsubscribed"]
    assert {r.status for r in mailchimp.calls(method="PATCH")} == {200, 400}
    again = make(mailchimp, session, HARD_BOUNCE_STATUS="cleaned")
    assert statuses(again.sync([state_change(e, Kind.HARD_BOUNCE) for e in emails])) == [
        ALREADY,
        ALREADY,
    ]


def test_a_cleaned_member_is_already_suppressed_and_its_status_never_written(
    mailchimp: MailchimpEmulator, session: requests.Session
) -> None:
    mailchimp.seed("list1", "a@example.com", status="cleaned")
    outcomes = make(mailchimp, session).sync([state_change("a@example.com", Kind.UNSUBSCRIBE)])
    assert statuses(outcomes) == [ALREADY]
    assert mailchimp.calls(method="PATCH") == []


def test_an_archived_member_is_left_archived(
    mailchimp: MailchimpEmulator, session: requests.Session
) -> None:
    """A PATCH with a status would unarchive it: re-adding a contact someone removed."""
    mailchimp.seed("list1", "a@example.com", status="archived")
    outcomes = make(mailchimp, session).sync([state_change("a@example.com", Kind.UNSUBSCRIBE)])
    assert statuses(outcomes) == [NOT_FOUND]
    assert "archived" in outcomes[0].detail
    assert mailchimp.statuses() == {"a@example.com": "archived"}


def test_every_audience_is_brought_to_the_state(
    mailchimp: MailchimpEmulator, session: requests.Session
) -> None:
    mailchimp.seed("list1", "a@example.com", "b@example.com")
    mailchimp.seed("list2", "a@example.com")
    mailchimp.seed("list2", "b@example.com", status="unsubscribed")
    destination = make(mailchimp, session, LIST_ID="list1, list2")
    changes = [state_change(e, Kind.UNSUBSCRIBE) for e in ("a@example.com", "b@example.com")]
    changes.append(state_change("c@example.com", Kind.UNSUBSCRIBE))
    assert statuses(destination.sync(changes)) == [APPLIED, APPLIED, NOT_FOUND]
    assert mailchimp.statuses("list1") == mailchimp.statuses("list2")
    assert set(mailchimp.statuses("list2").values()) == {"unsubscribed"}
    assert statuses(destination.sync(changes)) == [ALREADY, ALREADY, NOT_FOUND]


# -- unsuppress and resubscribe -----------------------------------------------------------------


def test_unsuppressing_removes_only_our_tags_and_keeps_the_status_by_default(
    mailchimp: MailchimpEmulator, session: requests.Session
) -> None:
    mailchimp.seed(
        "list1", "a@example.com", status="unsubscribed", tags=("VIP", "syncworker:hard_bounce")
    )
    outcomes = make(mailchimp, session).sync([state_change("a@example.com")])
    assert statuses(outcomes) == [APPLIED]
    assert mailchimp.statuses() == {"a@example.com": "unsubscribed"}
    assert mailchimp.tags() == {"a@example.com": ["VIP"]}
    again = make(mailchimp, session).sync([state_change("a@example.com")])
    assert statuses(again) == [ALREADY]


def test_resubscribe_pending_sends_mailchimps_opt_in_email(
    mailchimp: MailchimpEmulator, session: requests.Session
) -> None:
    mailchimp.seed("list1", "a@example.com", status="unsubscribed", by="self")
    destination = make(mailchimp, session, RESUBSCRIBE="pending")
    assert statuses(destination.sync([state_change("a@example.com")])) == [APPLIED]
    assert mailchimp.statuses() == {"a@example.com": "pending"}
    assert mailchimp.confirmations == ["a@example.com"]


def test_resubscribe_subscribed_is_refused_for_a_member_who_unsubscribed_themselves(
    mailchimp: MailchimpEmulator, session: requests.Session
) -> None:
    mailchimp.seed("list1", "self@example.com", status="unsubscribed", by="self")
    mailchimp.seed("list1", "admin@example.com", status="unsubscribed", by="admin")
    mailchimp.seed("list1", "bounced@example.com", status="cleaned")
    destination = make(mailchimp, session, RESUBSCRIBE="subscribed")
    emails = ["self@example.com", "admin@example.com", "bounced@example.com"]
    outcomes = destination.sync([state_change(e) for e in emails])
    assert statuses(outcomes) == [FAILED, APPLIED, FAILED]
    assert "Member In Compliance State" in outcomes[0].detail
    assert "cleaned" in outcomes[2].detail
    assert mailchimp.statuses()["admin@example.com"] == "subscribed"
    assert len(mailchimp.calls(method="PATCH")) == 2  # a cleaned member is not even asked


# -- CREATE_MISSING -------------------------------------------------------------------------------


def test_create_missing_adds_suppressed_addresses_in_one_batch_call(
    mailchimp: MailchimpEmulator, session: requests.Session
) -> None:
    mailchimp.forget("list1", "erased@example.com")
    destination = make(mailchimp, session, CREATE_MISSING="true")
    changes = [
        state_change("new@example.com", Kind.HARD_BOUNCE),
        state_change("plain@example.com", Kind.UNSUBSCRIBE),
        state_change("active@example.com"),
        state_change("erased@example.com", Kind.UNSUBSCRIBE),
    ]
    assert statuses(destination.sync(changes)) == [APPLIED, APPLIED, NOT_FOUND, NOT_FOUND]
    assert mailchimp.statuses() == {
        "new@example.com": "unsubscribed",
        "plain@example.com": "unsubscribed",
    }
    assert mailchimp.tags() == {"new@example.com": ["syncworker:hard_bounce"]}
    (batch,) = [r for r in mailchimp.calls(method="POST") if r.path == "/3.0/lists/list1"]
    assert batch.json["update_existing"] is False
    assert [m["email_address"] for m in batch.json["members"]] == [
        "new@example.com",
        "plain@example.com",
        "erased@example.com",
    ]
    assert statuses(destination.sync(changes)) == [ALREADY, ALREADY, NOT_FOUND, NOT_FOUND]


def test_create_missing_retries_a_member_added_since_the_lookup(
    mailchimp: MailchimpEmulator, session: requests.Session
) -> None:
    mailchimp.seed("list1", "a@example.com", status="subscribed")
    destination = make(mailchimp, session, CREATE_MISSING="true")
    outcomes = destination._create("list1", [state_change("a@example.com", Kind.UNSUBSCRIBE)])
    assert statuses(outcomes) == [RETRY]
    assert mailchimp.statuses() == {"a@example.com": "subscribed"}


# -- errors, limits, configuration ---------------------------------------------------------------


def test_a_server_error_stops_the_batch_and_keeps_what_was_done(
    mailchimp: MailchimpEmulator, session: requests.Session
) -> None:
    emails = addresses(3)
    mailchimp.seed("list1", *emails)
    mailchimp.fail_next(1, status=502, after=2)  # the first contact's GET and PATCH pass
    outcomes = make(mailchimp, session).sync([state_change(e, Kind.UNSUBSCRIBE) for e in emails])
    assert statuses(outcomes) == [APPLIED, RETRY, RETRY]
    assert len(mailchimp.requests) == 3


@pytest.mark.slow
def test_the_concurrent_connection_limit_is_throttled(
    mailchimp: MailchimpEmulator, session: requests.Session
) -> None:
    """Ten slow calls from other integrations fill the user's connections: ours gets a 429."""
    mailchimp.seed("list1", "a@example.com")
    mailchimp.slow_next(10, seconds=30.0)  # ended early when the emulator stops
    auth = ("other", mailchimp.api_key)
    url = f"{mailchimp.url}/3.0/lists/list1"
    others = [threading.Thread(target=_quietly, args=(url, auth), daemon=True) for _ in range(10)]
    for thread in others:
        thread.start()
    mailchimp.wait_for(lambda: mailchimp.inflight == 10)
    with pytest.raises(Throttled) as caught:
        make(mailchimp, session).sync([state_change("a@example.com", Kind.UNSUBSCRIBE)])
    assert caught.value.status == 429
    assert caught.value.retry_after == 10.0  # Mailchimp sends no hint
    assert mailchimp.refused_connections == 1
    assert mailchimp.statuses() == {"a@example.com": "subscribed"}
    mailchimp.stop()
    for thread in others:
        thread.join(timeout=5)


def test_a_bare_403_is_mailchimps_overload_signal_not_bad_credentials(
    session: requests.Session,
) -> None:
    with MailchimpEmulator(max_connections=0, bare_403=True) as mailchimp:
        with pytest.raises(Throttled) as caught:
            make(mailchimp, session).sync([state_change("a@example.com", Kind.UNSUBSCRIBE)])
        assert caught.value.status == 403


def test_a_403_with_a_problem_body_is_bad_credentials(
    mailchimp: MailchimpEmulator, session: requests.Session
) -> None:
    mailchimp.fail_next(1, status=403)
    with pytest.raises(BadCredentials):
        make(mailchimp, session).sync([state_change("a@example.com", Kind.UNSUBSCRIBE)])


def test_a_wrong_audience_id_pauses_instead_of_reporting_everyone_not_found(
    mailchimp: MailchimpEmulator, session: requests.Session
) -> None:
    with pytest.raises(BadCredentials, match="audience nope not found"):
        make(mailchimp, session, LIST_ID="nope").sync(
            [state_change("a@example.com", Kind.UNSUBSCRIBE)]
        )


def test_a_dry_run_sends_nothing_and_shows_the_writes(
    mailchimp: MailchimpEmulator, session: requests.Session
) -> None:
    destination = make(mailchimp, session, dry_run=True)
    outcomes = destination.sync([state_change("a@example.com", Kind.SPAM_COMPLAINT)])
    assert statuses(outcomes) == [APPLIED]
    assert destination.http.requests_made == 3  # GET, PATCH, tags
    assert mailchimp.requests == []


def test_the_base_url_comes_from_the_api_keys_data_center() -> None:
    config = DestinationConfig("mailchimp", {"API_KEY": "abc-us21", "LIST_ID": "l"})
    assert Mailchimp.effective_base_url(config) == "https://us21.api.mailchimp.com/3.0"
    custom = DestinationConfig("mailchimp", {"API_KEY": "abc", "BASE_URL": "http://x/3.0"})
    assert Mailchimp.effective_base_url(custom) == "http://x/3.0"


def test_bad_settings_are_all_reported() -> None:
    values = {"API_KEY": "nodatacenter", "LIST_ID": " , ", "RESUBSCRIBE": "always"}
    config = DestinationConfig("mailchimp", values)
    with pytest.raises(NotConfigured) as caught:
        Mailchimp(config, HttpClient("mailchimp", Mailchimp.effective_base_url(config)))
    assert len(caught.value.problems) == 3


def _quietly(url: str, auth: tuple[str, str]) -> None:
    try:
        requests.get(url, auth=auth, timeout=60)
    except requests.RequestException:
        pass  # the emulator stopped under it
