"""mappings/braze.py against the Braze emulator."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from mappings.braze import Braze
from syncworker.destinations import (
    MANUAL,
    ContactChange,
    DestinationConfig,
    HttpClient,
    Kind,
    OutcomeStatus,
    Throttled,
)
from syncworker.devkit.emulators.braze import BrazeEmulator
from tests.mappings.contract import T0, StateContract, addresses, state_change

APPLIED, ALREADY = OutcomeStatus.APPLIED, OutcomeStatus.ALREADY
NOT_FOUND, RETRY, FAILED = OutcomeStatus.NOT_FOUND, OutcomeStatus.RETRY, OutcomeStatus.FAILED


@pytest.fixture()
def braze() -> Iterator[BrazeEmulator]:
    with BrazeEmulator() as emulator:
        yield emulator


def make(
    emulator: BrazeEmulator, session: requests.Session, *, dry_run: bool = False, **extra: str
) -> Braze:
    values = {"API_KEY": emulator.api_key, "BASE_URL": emulator.url, **extra}
    http = HttpClient("braze", emulator.url, session=session, timeout=5.0, dry_run=dry_run)
    return Braze(DestinationConfig("braze", values), http)


def statuses(outcomes: list[Any]) -> list[OutcomeStatus]:
    return [o.status for o in outcomes]


def paths(emulator: BrazeEmulator) -> list[str]:
    return [r.path for r in emulator.requests]


class TestBrazeContract(StateContract):
    destination = "braze"

    @pytest.fixture()
    def emulator(self) -> Iterator[BrazeEmulator]:
        with BrazeEmulator() as emulator:
            yield emulator

    def expected_retry_after(self, emulator: Any, window: float) -> tuple[float, float]:
        """Braze sends X-RateLimit-Reset (an epoch second), not Retry-After."""
        return window - 1, window

    def settings(self, emulator: BrazeEmulator) -> dict[str, str]:
        return {"API_KEY": emulator.api_key, "BASE_URL": emulator.url}

    def bad_credentials(self, emulator: BrazeEmulator) -> dict[str, str]:
        return {"API_KEY": "revoked-key"}

    def changes(self, emulator: BrazeEmulator, n: int) -> list[ContactChange]:
        emails = addresses(n)
        emulator.seed(*emails)
        return [state_change(e, Kind.UNSUBSCRIBE) for e in emails]

    def snapshot(self, emulator: BrazeEmulator) -> Any:
        state = dict(emulator.address_state)
        return emulator.profiles(), state, sorted(emulator.hard_bounced), sorted(emulator.spam)

    def partial(
        self, emulator: BrazeEmulator
    ) -> tuple[list[ContactChange], dict[str, str], list[OutcomeStatus]]:
        emulator.seed("new@example.com")
        emulator.seed("done@example.com", email_subscribe="unsubscribed")
        changes = [
            state_change(e, Kind.UNSUBSCRIBE)
            for e in ("new@example.com", "ghost@example.com", "done@example.com")
        ]
        return changes, {}, [APPLIED, NOT_FOUND, ALREADY]

    def unknown_changes(self, emulator: BrazeEmulator, n: int) -> list[ContactChange]:
        return [state_change(e, Kind.HARD_BOUNCE) for e in addresses(n, "unknown")]

    def contacts(self, emulator: BrazeEmulator) -> set[str]:
        return emulator.contacts


# -- what each hygiene kind becomes ------------------------------------------------------------


def test_unsubscribes_cost_one_export_per_address_and_one_status_call(
    braze: BrazeEmulator, session: requests.Session
) -> None:
    emails = addresses(3)
    braze.seed(*emails)
    outcomes = make(braze, session).sync([state_change(e, MANUAL) for e in emails])
    assert statuses(outcomes) == [APPLIED] * 3
    assert paths(braze) == ["/users/export/ids"] * 3 + ["/email/status"]
    export = braze.requests[0].json
    assert export == {
        "email_address": emails[0],
        "fields_to_export": ["braze_id", "email_subscribe"],
    }
    assert braze.requests[-1].json == {"email": emails, "subscription_state": "unsubscribed"}
    assert {e: braze.profiles()[e][0] for e in emails} == dict.fromkeys(emails, "unsubscribed")


def test_without_lookup_a_full_batch_is_one_request(
    braze: BrazeEmulator, session: requests.Session
) -> None:
    emails = addresses(50)
    braze.seed(*emails)
    destination = make(braze, session, LOOKUP="false")
    outcomes = destination.sync([state_change(e, Kind.UNSUBSCRIBE) for e in emails])
    assert statuses(outcomes) == [APPLIED] * 50
    assert destination.http.requests_made == 1
    assert braze.requests[0].json["email"] == emails


def test_a_hard_bounce_is_blocklisted(braze: BrazeEmulator, session: requests.Session) -> None:
    braze.seed("a@example.com")
    changes = [state_change("a@example.com", Kind.HARD_BOUNCE, Kind.UNSUBSCRIBE)]
    assert statuses(make(braze, session).sync(changes)) == [APPLIED]
    assert paths(braze) == ["/users/export/ids", "/email/blocklist"]
    assert braze.requests[-1].json == {"email": ["a@example.com"]}
    assert braze.profiles()["a@example.com"] == ("unsubscribed", True, None)


@pytest.mark.parametrize("kind", [Kind.SOFT_BOUNCE, Kind.BLOCKED, Kind.UNSUBSCRIBE])
def test_other_suppressions_unsubscribe_without_a_bounce_mark(
    braze: BrazeEmulator, session: requests.Session, kind: Kind
) -> None:
    braze.seed("a@example.com")
    assert statuses(make(braze, session).sync([state_change("a@example.com", kind)])) == [APPLIED]
    assert braze.profiles()["a@example.com"] == ("unsubscribed", False, None)


def test_a_spam_complaint_unsubscribes_and_marks_the_profile(
    braze: BrazeEmulator, session: requests.Session
) -> None:
    braze.seed("a@example.com")
    changes = [state_change("a@example.com", Kind.SPAM_COMPLAINT)]
    assert statuses(make(braze, session).sync(changes)) == [APPLIED]
    assert paths(braze) == ["/users/export/ids", "/users/track", "/email/status"]
    (attribute,) = braze.requests[1].json["attributes"]
    assert attribute == {
        "email": "a@example.com",
        "marked_email_as_spam_at": "2026-01-01T00:00:00Z",
        "_update_existing_only": True,
    }
    assert braze.profiles()["a@example.com"] == ("unsubscribed", False, "2026-01-01T00:00:00Z")


def test_without_lookup_unknown_addresses_are_kept_by_braze_for_later_users(
    braze: BrazeEmulator, session: requests.Session
) -> None:
    """``/email/status`` takes an address no user has; ``/users/track`` update-only creates none."""
    destination = make(braze, session, LOOKUP="false")
    changes = [state_change("later@example.com", Kind.SPAM_COMPLAINT)]
    assert statuses(destination.sync(changes)) == [APPLIED]
    assert braze.contacts == set()
    braze.seed("later@example.com")
    assert braze.profiles()["later@example.com"][0] == "unsubscribed"


def test_a_repeated_unsubscribe_is_already_and_writes_nothing(
    braze: BrazeEmulator, session: requests.Session
) -> None:
    braze.seed("a@example.com")
    change = [state_change("a@example.com", Kind.UNSUBSCRIBE)]
    make(braze, session).sync(change)
    braze.clear_journal()
    again = make(braze, session).sync(change)
    assert statuses(again) == [ALREADY]
    assert again[0].detail == "email_subscribe unsubscribed"
    assert paths(braze) == ["/users/export/ids"]


# -- unsuppress -------------------------------------------------------------------------------


def test_unsuppress_resubscribes_and_clears_bounce_and_spam(
    braze: BrazeEmulator, session: requests.Session
) -> None:
    braze.seed("a@example.com", email_subscribe="unsubscribed", hard_bounced=True, spam_at="x")
    assert statuses(make(braze, session).sync([state_change("a@example.com")])) == [APPLIED]
    assert paths(braze)[1:] == ["/email/status", "/email/bounce/remove", "/email/spam/remove"]
    assert braze.requests[1].json == {
        "email": ["a@example.com"],
        "subscription_state": "subscribed",
    }
    assert braze.profiles()["a@example.com"] == ("subscribed", False, None)


def test_unsuppress_leaves_an_opted_in_user_opted_in(
    braze: BrazeEmulator, session: requests.Session
) -> None:
    braze.seed("a@example.com", email_subscribe="opted_in")
    destination = make(braze, session, CLEAR_ON_UNSUPPRESS="false")
    assert statuses(destination.sync([state_change("a@example.com")])) == [ALREADY]
    assert paths(braze) == ["/users/export/ids"]
    assert braze.profiles()["a@example.com"][0] == "opted_in"


# -- errors, limits, configuration ---------------------------------------------------------------


def test_a_429_waits_until_x_ratelimit_reset(
    braze: BrazeEmulator, session: requests.Session
) -> None:
    braze.seed("a@example.com")
    braze.rate_limit(0, per_seconds=7)
    with pytest.raises(Throttled) as caught:
        make(braze, session).sync([state_change("a@example.com", Kind.UNSUBSCRIBE)])
    assert 5.0 < caught.value.retry_after <= 7.0
    answered = requests.post(
        f"{braze.url}/email/status",
        json={"email": "a@example.com", "subscription_state": "unsubscribed"},
        headers={"Authorization": f"Bearer {braze.api_key}"},
        timeout=5,
    )
    assert answered.status_code == 429
    assert "Retry-After" not in answered.headers
    assert int(answered.headers["X-RateLimit-Reset"]) > time.time()


def test_every_answer_carries_the_rate_limit_headers(
    braze: BrazeEmulator, session: requests.Session
) -> None:
    make(braze, session, LOOKUP="false").sync([state_change("a@example.com", Kind.UNSUBSCRIBE)])
    assert len(braze.requests) == 1
    answered = requests.post(
        f"{braze.url}/email/status",
        json={"email": "b@example.com", "subscription_state": "unsubscribed"},
        headers={"Authorization": f"Bearer {braze.api_key}"},
        timeout=5,
    )
    assert answered.headers["X-RateLimit-Limit"] == "250000"
    assert 0 < int(answered.headers["X-RateLimit-Remaining"]) < 250000
    assert int(answered.headers["X-RateLimit-Reset"]) > time.time()


def test_a_queued_answer_during_maintenance_counts_as_applied(session: requests.Session) -> None:
    with BrazeEmulator(queued=True) as braze:
        destination = make(braze, session, LOOKUP="false")
        outcomes = destination.sync([state_change("a@example.com", Kind.UNSUBSCRIBE)])
        assert statuses(outcomes) == [APPLIED]
        assert "queued" in outcomes[0].detail


def test_an_address_braze_rejects_fails_alone(
    braze: BrazeEmulator, session: requests.Session
) -> None:
    changes = [state_change(e, Kind.UNSUBSCRIBE) for e in ("a@example.com", "not-an-address")]
    outcomes = make(braze, session, LOOKUP="false").sync(changes)
    assert statuses(outcomes) == [APPLIED, FAILED]
    assert "Invalid email address" in outcomes[1].detail


def test_a_failed_call_fails_only_the_contacts_it_was_for(
    braze: BrazeEmulator, session: requests.Session
) -> None:
    changes = [
        state_change("bounced@example.com", Kind.HARD_BOUNCE),
        state_change("left@example.com", Kind.UNSUBSCRIBE),
    ]
    braze.fail_next(1, status=500)
    outcomes = make(braze, session, LOOKUP="false").sync(changes)
    assert statuses(outcomes) == [RETRY, APPLIED]
    assert braze.address_state == {"left@example.com": "unsubscribed"}


def test_a_lookup_failure_stops_the_lookups_and_keeps_what_was_done(
    braze: BrazeEmulator, session: requests.Session
) -> None:
    emails = addresses(3)
    braze.seed(*emails)
    braze.fail_next(1, status=502, after=1)
    outcomes = make(braze, session).sync([state_change(e, Kind.UNSUBSCRIBE) for e in emails])
    assert statuses(outcomes) == [APPLIED, RETRY, RETRY]
    assert braze.exports == 1


def test_braze_refuses_more_than_its_batch_limits(braze: BrazeEmulator) -> None:
    auth = {"Authorization": f"Bearer {braze.api_key}"}
    emails = addresses(51)
    status = requests.post(
        f"{braze.url}/email/status",
        json={"email": emails, "subscription_state": "unsubscribed"},
        headers=auth,
        timeout=5,
    )
    track = requests.post(
        f"{braze.url}/users/track",
        json={"attributes": [{"email": e, "_update_existing_only": True} for e in addresses(76)]},
        headers=auth,
        timeout=5,
    )
    assert (status.status_code, track.status_code) == (400, 400)
    assert track.json() == {"message": "Max Input Length Exceeded"}
    config = DestinationConfig("braze", {"BATCH_SIZE": "200"})
    assert Braze.effective_batch_size(config) == 50


def test_users_track_without_update_only_would_create_a_profile(braze: BrazeEmulator) -> None:
    """The emulator keeps Braze's upsert: the mapping's update-only flag is what prevents it."""
    requests.post(
        f"{braze.url}/users/track",
        json={"attributes": [{"email": "new@example.com", "email_subscribe": "unsubscribed"}]},
        headers={"Authorization": f"Bearer {braze.api_key}"},
        timeout=5,
    )
    assert braze.contacts == {"new@example.com"}


def test_a_dry_run_sends_nothing_and_shows_the_writes(
    braze: BrazeEmulator, session: requests.Session
) -> None:
    destination = make(braze, session, dry_run=True)
    changes = [state_change("a@example.com", Kind.SPAM_COMPLAINT, at=T0)]
    assert statuses(destination.sync(changes)) == [APPLIED]
    assert destination.http.requests_made == 3  # export, users/track, email/status
    assert braze.requests == []
