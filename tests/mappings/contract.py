"""The contract every mapping module's tests run, against that destination's emulator.

``tests/mappings/test_<name>.py`` defines ``Test<Name>Contract(StateContract)`` (CRMs) or
``(EventsContract)`` (event streams) and implements the hooks; the tests below then run for it.
``tests/mappings/test_contract.py`` checks that every module in ``mappings/`` has such a class.
Also here: builders of the values a mapping receives (``state``, ``event``, ``state_change``,
``event_change``), so tests never need a ledger.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
import requests

from syncworker.destinations import (
    BadCredentials,
    ContactChange,
    ContactState,
    Destination,
    DestinationConfig,
    HttpClient,
    HygieneEvent,
    Kind,
    Mode,
    Outcome,
    OutcomeStatus,
    ReasonEntry,
    RetryableError,
    Throttled,
    destination_class,
)
from syncworker.devkit.emulators.base import Emulator

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
SUPPRESSING = {Kind.HARD_BOUNCE, Kind.SPAM_COMPLAINT, Kind.UNSUBSCRIBE}


def state(
    email: str, *reasons: str, at: float = T0, version: int = 1, source: str = "postmark"
) -> ContactState:
    """A ledger state suppressed for ``reasons`` (none: active), each recorded at ``at``."""
    entries = {str(r): ReasonEntry(str(r), at, source) for r in reasons}
    return ContactState(email, bool(entries), entries, updated_at=at, version=version)


def event(
    email: str,
    kind: Kind,
    *,
    key: str | None = None,
    at: float = T0,
    reason: str | None = None,
    smtp_code: str | None = None,
) -> HygieneEvent:
    return HygieneEvent(
        key=key or f"postmark:{kind.value}:{email}:{at:.0f}",
        source="postmark",
        esp="postmark",
        email=email,
        kind=kind,
        occurred_at=at,
        message_id=f"msg-{email}",
        reason=reason,
        smtp_code=smtp_code,
    )


def state_change(email: str, *reasons: str, at: float = T0, version: int = 1) -> ContactChange:
    """What a ``Mode.STATE`` destination receives: the key is the address, no event."""
    return ContactChange(
        key=email, email=email, state=state(email, *reasons, at=at, version=version)
    )


def event_change(
    email: str,
    kind: Kind,
    *,
    key: str | None = None,
    at: float = T0,
    reasons: tuple[str, ...] | None = None,
    reason: str | None = None,
) -> ContactChange:
    """What a ``Mode.EVENTS`` destination receives: the event, its key, the state after it."""
    ev = event(email, kind, key=key, at=at, reason=reason)
    held = reasons if reasons is not None else ((kind.value,) if kind in SUPPRESSING else ())
    return ContactChange(key=ev.key, email=email, state=state(email, *held, at=at), event=ev)


def addresses(n: int, prefix: str = "contact") -> list[str]:
    return [f"{prefix}{i:03d}@example.com" for i in range(n)]


class MappingContract:
    """Behaviour every mapping shows against its emulator. Hooks are marked ``hook``."""

    destination: ClassVar[str]  # the mapping module's name

    # -- hooks ----------------------------------------------------------------------------------

    @pytest.fixture()
    def emulator(self) -> Iterator[Emulator]:
        """hook: the destination's emulator, started, accepting ``settings()``'s credentials."""
        raise TypeError(f"{type(self).__name__} must implement this hook")

    def settings(self, emulator: Any) -> dict[str, str]:
        """hook: the mapping's settings (BASE_URL or URL pointing at the emulator)."""
        raise TypeError(f"{type(self).__name__} must implement this hook")

    def bad_credentials(self, emulator: Any) -> dict[str, str]:
        """hook: settings overrides the emulator rejects as bad credentials."""
        raise TypeError(f"{type(self).__name__} must implement this hook")

    def changes(self, emulator: Any, n: int) -> list[ContactChange]:
        """hook: ``n`` changes the destination applies in one request (seeding as needed)."""
        raise TypeError(f"{type(self).__name__} must implement this hook")

    def snapshot(self, emulator: Any) -> Any:
        """hook: the far side's state, compared before and after a repeated sync."""
        raise TypeError(f"{type(self).__name__} must implement this hook")

    def partial(
        self, emulator: Any
    ) -> tuple[list[ContactChange], dict[str, str], list[OutcomeStatus]]:
        """hook: a batch the destination answers differently per contact (arranging faults as
        needed): the changes, extra settings, and the status expected for each change."""
        raise TypeError(f"{type(self).__name__} must implement this hook")

    def expected_retry_after(self, emulator: Any, window: float) -> tuple[float, float]:
        """hook: the pause (lowest, highest) a 429 with a ``window``-second limit leads to.

        The default is the vendor's Retry-After, exactly. A vendor that sends none, or another
        header (X-RateLimit-Reset), overrides this with what the mapping does instead.
        """
        return window, window

    # -- helpers --------------------------------------------------------------------------------

    @pytest.fixture()
    def session(self) -> Iterator[requests.Session]:
        with requests.Session() as session:
            yield session

    def make(
        self,
        emulator: Any,
        session: requests.Session,
        extra: dict[str, str] | None = None,
        *,
        timeout: float = 5.0,
    ) -> Destination:
        """The mapping under test, with ``settings()`` plus ``extra``, over a real HttpClient."""
        cls = destination_class(self.destination)
        config = DestinationConfig(self.destination, {**self.settings(emulator), **(extra or {})})
        base = cls.effective_base_url(config)
        http = HttpClient(
            self.destination, base, session=session, timeout=timeout, dry_run=config.flag("DRY_RUN")
        )
        return cls(config, http)

    # -- the contract ---------------------------------------------------------------------------

    def test_a_dry_run_sends_nothing_and_completes(
        self, emulator: Any, session: requests.Session, caplog: pytest.LogCaptureFixture
    ) -> None:
        """DRY_RUN: every request is logged (addresses masked), none reaches the destination."""
        changes = self.changes(emulator, 3)
        emulator.clear_journal()
        caplog.set_level("INFO", logger="syncworker.destinations")
        outcomes = self.make(emulator, session, {"DRY_RUN": "true"}).sync(changes)
        assert len(outcomes) == len(changes)
        assert emulator.requests == []
        assert f"dry-run dest={self.destination} request=" in caplog.text
        for change in changes:
            assert change.email not in caplog.text

    def test_sync_gives_one_ok_outcome_per_change_in_order(
        self, emulator: Any, session: requests.Session
    ) -> None:
        changes = self.changes(emulator, 3)
        outcomes = self.make(emulator, session).sync(changes)
        assert len(outcomes) == len(changes)
        assert all(isinstance(o, Outcome) and o.ok for o in outcomes), outcomes

    def test_a_full_batch_is_accepted(self, emulator: Any, session: requests.Session) -> None:
        cls = destination_class(self.destination)
        outcomes = self.make(emulator, session).sync(self.changes(emulator, cls.batch_size))
        assert all(o.ok for o in outcomes), {o.detail for o in outcomes if not o.ok}

    def test_repeating_a_sync_changes_nothing_more_and_succeeds(
        self, emulator: Any, session: requests.Session
    ) -> None:
        changes = self.changes(emulator, 3)
        self.make(emulator, session).sync(changes)
        before = self.snapshot(emulator)
        again = self.make(emulator, session).sync(changes)
        assert all(o.ok for o in again), again
        assert self.snapshot(emulator) == before

    def test_a_429_raises_throttled_with_retry_after(
        self, emulator: Any, session: requests.Session
    ) -> None:
        changes = self.changes(emulator, 2)
        before = self.snapshot(emulator)
        emulator.rate_limit(0, per_seconds=7)
        with pytest.raises(Throttled) as caught:
            self.make(emulator, session).sync(changes)
        lowest, highest = self.expected_retry_after(emulator, 7)
        assert lowest <= caught.value.retry_after <= highest
        assert emulator.throttled == 1
        assert self.snapshot(emulator) == before

    def test_rejected_credentials_raise_bad_credentials(
        self, emulator: Any, session: requests.Session
    ) -> None:
        changes = self.changes(emulator, 2)
        before = self.snapshot(emulator)
        with pytest.raises(BadCredentials):
            self.make(emulator, session, self.bad_credentials(emulator)).sync(changes)
        assert self.snapshot(emulator) == before

    def test_a_server_error_is_retryable_then_succeeds(
        self, emulator: Any, session: requests.Session
    ) -> None:
        changes = self.changes(emulator, 2)
        emulator.fail_next(1, status=503)
        _assert_retry(lambda: self.make(emulator, session).sync(changes))
        assert emulator.injected == 1
        assert all(o.ok for o in self.make(emulator, session).sync(changes))

    def test_an_outage_is_retryable_then_recovers(
        self, emulator: Any, session: requests.Session
    ) -> None:
        changes = self.changes(emulator, 2)
        emulator.down()
        _assert_retry(lambda: self.make(emulator, session).sync(changes))
        emulator.up()
        assert all(o.ok for o in self.make(emulator, session).sync(changes))

    def test_a_timeout_is_retryable(self, emulator: Any, session: requests.Session) -> None:
        changes = self.changes(emulator, 2)
        emulator.slow_next(1, seconds=2.0)
        _assert_retry(lambda: self.make(emulator, session, timeout=0.2).sync(changes))

    def test_a_partial_failure_gives_per_contact_outcomes(
        self, emulator: Any, session: requests.Session
    ) -> None:
        changes, extra, expected = self.partial(emulator)
        outcomes = self.make(emulator, session, extra).sync(changes)
        assert [o.status for o in outcomes] == expected, outcomes
        assert len(set(expected)) > 1


class StateContract(MappingContract):
    """CRMs and marketing tools (``Mode.STATE``): they never create a contact."""

    def unknown_changes(self, emulator: Any, n: int) -> list[ContactChange]:
        """hook: ``n`` suppressing changes for addresses the destination does not know."""
        raise TypeError(f"{type(self).__name__} must implement this hook")

    def contacts(self, emulator: Any) -> set[str]:
        """hook: the addresses the destination holds."""
        raise TypeError(f"{type(self).__name__} must implement this hook")

    def test_mode_is_state(self) -> None:
        assert destination_class(self.destination).mode is Mode.STATE

    def test_unknown_contacts_are_not_found_and_never_created(
        self, emulator: Any, session: requests.Session
    ) -> None:
        known = self.contacts(emulator)
        outcomes = self.make(emulator, session).sync(self.unknown_changes(emulator, 3))
        assert [o.status for o in outcomes] == [OutcomeStatus.NOT_FOUND] * 3
        assert self.contacts(emulator) == known


class EventsContract(MappingContract):
    """Event streams (``Mode.EVENTS``): each event once, with an id the far side dedupes on."""

    def received_ids(self, emulator: Any) -> set[str]:
        """hook: the distinct dedupe ids the far side has accepted."""
        raise TypeError(f"{type(self).__name__} must implement this hook")

    def duplicates(self, emulator: Any) -> int:
        """hook: how many deliveries the far side recognised as replays."""
        raise TypeError(f"{type(self).__name__} must implement this hook")

    def test_mode_is_events(self) -> None:
        assert destination_class(self.destination).mode is Mode.EVENTS

    def test_a_retried_batch_is_deduplicated_by_the_far_side(
        self, emulator: Any, session: requests.Session
    ) -> None:
        changes = self.changes(emulator, 3)
        self.make(emulator, session).sync(changes)
        ids = self.received_ids(emulator)
        outcomes = self.make(emulator, session).sync(changes)
        assert all(o.ok for o in outcomes)
        assert self.received_ids(emulator) == ids
        assert self.duplicates(emulator) > 0

    def test_a_change_without_an_event_fails_alone(
        self, emulator: Any, session: requests.Session
    ) -> None:
        changes = self.changes(emulator, 2)
        broken = ContactChange(key="k", email=changes[0].email, state=changes[0].state)
        outcomes = self.make(emulator, session).sync([broken, *changes])
        assert [o.status for o in outcomes][0] is OutcomeStatus.FAILED
        assert all(o.ok for o in outcomes[1:])


def _assert_retry(call: Any) -> None:
    """The call raised RetryableError, or reported every contact as RETRY."""
    try:
        outcomes = call()
    except RetryableError:
        return
    assert outcomes and all(o.status is OutcomeStatus.RETRY for o in outcomes), outcomes
