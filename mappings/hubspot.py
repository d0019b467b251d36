"""HubSpot: opt contacts out of all email on unsubscribe, complaint or hard bounce; flag bounces.

Per batch: one comms-prefs v4 ``batch/unsubscribe-all`` (Enterprise only; SUBSCRIPTION_BATCH=false
calls the per-contact endpoint) for OPT_OUT_REASONS, and one CRM ``contacts/batch/update``
(idProperty=email: never creates a contact) setting two properties for bounces and complaints, or
clearing them once unsuppressed. Pure unsubscribes cost one request per batch. An opt-out is undone
only by resubscribing RESUBSCRIBE_SUBSCRIPTION_IDS with a legal basis; otherwise it stays (ALREADY).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from syncworker.destinations import (
    OPT_OUT_REASONS,
    REASONS,
    ContactChange,
    ContactState,
    Destination,
    DestinationConfig,
    HttpClient,
    Kind,
    Mode,
    Options,
    Outcome,
    OutcomeStatus,
    PermanentError,
    Rate,
    RetryableError,
    Secret,
    Throttled,
    iso_time,
    option,
    scrub_body,
    throttled_rest,
)

PREFS = "/communication-preferences/v4/statuses"
CONTACTS_UPDATE = "/crm/v3/objects/contacts/batch/update"
QUERY = {"channel": "EMAIL", "verbose": "true"}  # verbose: per-contact statuses in the answer
LIMIT = 100  # inputs per HubSpot batch request
FLAGGED = frozenset({Kind.HARD_BOUNCE, Kind.SOFT_BOUNCE, Kind.BLOCKED, Kind.SPAM_COMPLAINT})
BOUNCES = (Kind.HARD_BOUNCE, Kind.SOFT_BOUNCE, Kind.BLOCKED)
CLEARED = Outcome.already("properties cleared")
# worst first: a contact's outcome is the worst of its calls' outcomes
RANK = [OutcomeStatus(s) for s in ("retry", "failed", "not_found", "applied", "already")]
Parts = dict[str, list[Outcome]]  # each address's outcomes, one per call answered


@dataclass(frozen=True)
class HubSpotOptions(Options):
    token: Secret = option(required=True)
    subscription_batch: bool = option(True)
    opt_out_reasons: tuple[str, ...] = option(OPT_OUT_REASONS, choices=REASONS)
    status_property: str = option("syncworker_hygiene_status")
    bounced_at_property: str = option("syncworker_bounced_at")
    resubscribe_subscription_ids: tuple[int, ...] = option()
    legal_basis: str = option("CONSENT_WITH_NOTICE")
    legal_basis_explanation: str = option("Resubscribed at the contact's request (syncworker)")


class HubSpot(Destination):
    name = "hubspot"
    options: HubSpotOptions
    base_url = "https://api.hubapi.com"
    batch_size = LIMIT
    rate = Rate(100, per_seconds=10)
    concurrency = 4  # limited by rate, not concurrency; a contact is never in two batches at once
    mode = Mode.STATE

    def __init__(self, config: DestinationConfig, http: HttpClient) -> None:
        super().__init__(config, http)
        self.headers = {"Authorization": f"Bearer {self.options.token}"}

    def sync(self, changes: list[ContactChange]) -> list[Outcome]:
        """Bring each contact to ``change.state``. Repeating a call changes nothing more."""
        parts: Parts = {c.email.lower(): [] for c in changes}
        states = {c.email.lower(): c.state for c in changes}
        held = {e: set(s.reasons) if s.suppressed else set() for e, s in states.items()}
        opt_out = [e for e in states if held[e].intersection(self.options.opt_out_reasons)]
        active = [e for e, s in states.items() if not s.suppressed]
        # flags are written for contacts that have one, and cleared where one was set before
        before = {c.email.lower(): c.synced_reasons for c in changes}
        flag = [e for e in states if e in active or FLAGGED & (held[e] | before[e])]
        calls = {e: (e in opt_out) + (e in flag) + (e in active) for e in states}  # to answer
        try:
            if opt_out and self.options.subscription_batch:
                _merge(parts, self._unsubscribe_batch(opt_out))
            elif opt_out:
                self._each(opt_out, self._unsubscribe_one, parts)
            if flag:
                _merge(parts, self._set_properties({e: states[e] for e in flag}))
            if active and self.options.resubscribe_subscription_ids:
                self._resubscribe(active, parts)
            elif active:
                kept = "the HubSpot opt-out stays (set RESUBSCRIBE_SUBSCRIPTION_IDS to resubscribe)"
                _merge(parts, {e: Outcome.already(kept) for e in active})
        except Throttled as exc:  # contacts whose every call was answered keep their outcome
            done = {e: _worst(p) for e, p in parts.items() if len(p) == calls[e]}
            return throttled_rest([done.get(c.email.lower()) for c in changes], exc)
        return [_worst(parts[c.email.lower()]) for c in changes]

    def _unsubscribe_batch(self, emails: list[str]) -> dict[str, Outcome]:
        outcomes = {e: Outcome.applied("opted out") for e in emails}  # a 2xx without details
        for chunk in _chunks(emails):
            _, body = self._post(f"{PREFS}/batch/unsubscribe-all", {"inputs": chunk}, QUERY)
            for result in _list(body.get("results")):
                email = str(result.get("subscriberIdString", "")).lower()
                outcomes[email] = _status_outcome(_list(result.get("statuses")), "opted out")
            outcomes.update(_errors(body))
        return outcomes

    def _unsubscribe_one(self, email: str) -> Outcome:
        path = f"{PREFS}/{quote(email, safe='@')}/unsubscribe-all"
        status, body = self._post(path, None, QUERY, allow=(404,))
        if status == 404:
            return _error(body)
        return _status_outcome(_list(body.get("results")), "opted out")

    def _set_properties(self, states: dict[str, ContactState]) -> dict[str, Outcome]:
        outcomes: dict[str, Outcome] = {}
        for chunk in _chunks(list(states)):
            inputs = [
                {"id": e, "idProperty": "email", "properties": self._properties(states[e])}
                for e in chunk
            ]
            errors = _errors(self._post(CONTACTS_UPDATE, {"inputs": inputs})[1])
            for email in chunk:
                done = Outcome.applied("flagged") if states[email].suppressed else CLEARED
                outcomes[email] = errors.get(email, done)
        return outcomes

    def _properties(self, state: ContactState) -> dict[str, str]:
        if not state.suppressed:
            return {self.options.status_property: "", self.options.bounced_at_property: ""}
        bounced = [r.at for name, r in state.reasons.items() if name in BOUNCES]
        return {
            self.options.status_property: ";".join(sorted(str(name) for name in state.reasons)),
            self.options.bounced_at_property: iso_time(max(bounced)) if bounced else "",
        }

    def _resubscribe(self, emails: list[str], parts: Parts) -> None:
        opt = self.options
        basis = {"statusState": "SUBSCRIBED", "channel": "EMAIL", "legalBasis": opt.legal_basis}
        basis["legalBasisExplanation"] = opt.legal_basis_explanation
        if not opt.subscription_batch:
            return self._each(emails, lambda e: self._resubscribe_one(e, basis), parts)
        inputs = [
            {**basis, "subscriberIdString": e, "subscriptionId": sub}
            for e in emails
            for sub in self.options.resubscribe_subscription_ids
        ]
        statuses: dict[str, list[dict[str, Any]]] = {e: [] for e in emails}
        errors: dict[str, Outcome] = {}
        for chunk in _chunks(inputs):
            _, body = self._post(f"{PREFS}/batch/write", {"inputs": chunk})
            for result in _list(body.get("results")):
                email = str(result.get("subscriberIdString", "")).lower()
                statuses.setdefault(email, []).append(result)
            errors.update(_errors(body))
        done = {e: errors.get(e) or _status_outcome(statuses[e], "resubscribed") for e in emails}
        _merge(parts, done)

    def _resubscribe_one(self, email: str, basis: dict[str, Any]) -> Outcome:
        results: list[dict[str, Any]] = []
        for sub in self.options.resubscribe_subscription_ids:
            path = f"{PREFS}/{quote(email, safe='@')}"
            status, body = self._post(path, {**basis, "subscriptionId": sub}, allow=(404,))
            if status == 404:
                return _error(body)
            results.extend(_list(body.get("results")))
        return _status_outcome(results, "resubscribed")

    def _post(
        self, path: str, payload: Any, params: Any = None, allow: tuple[int, ...] = ()
    ) -> tuple[int, dict[str, Any]]:
        response = self.http.post(
            path, json=payload, params=params, headers=self.headers, allow=allow
        )
        try:
            body = response.json()
        except ValueError:
            body = {}
        return response.status_code, body if isinstance(body, dict) else {}

    def _each(self, emails: list[str], call: Callable[[str], Outcome], parts: Parts) -> None:
        """Per-contact calls, each outcome kept as it comes: a 5xx or a refusal is that one's."""
        for email in emails:
            try:
                outcome = call(email)
            except RetryableError as exc:
                outcome = Outcome.retry(str(exc))
            except PermanentError as exc:
                outcome = Outcome.failed(f"{exc} {exc.body}".strip())
            parts.setdefault(email, []).append(outcome)


def _status_outcome(statuses: list[dict[str, Any]], what: str) -> Outcome:
    reasons = {str(s.get("setStatusSuccessReason")) for s in statuses}
    if reasons == {"NO_STATUS_CHANGE"}:
        return Outcome.already("NO_STATUS_CHANGE")
    return Outcome.applied(what)


def _errors(body: dict[str, Any]) -> dict[str, Outcome]:
    """Per-input errors of a batch answer (200 or 207), by lower-cased address."""
    outcomes: dict[str, Outcome] = {}
    for error in _list(body.get("errors")):
        context = error.get("context")
        ids = context.get("ids") if isinstance(context, dict) else None
        for email in ids if isinstance(ids, list) else []:
            outcomes[str(email).lower()] = _error(error)
    return outcomes


def _error(error: dict[str, Any]) -> Outcome:
    """OBJECT_NOT_FOUND: no such contact (a 404 of another kind, e.g. a bad path, is a failure)."""
    detail = scrub_body(f"{error.get('category')}: {error.get('message', '')}", 300)
    if error.get("category") == "OBJECT_NOT_FOUND":
        return Outcome.not_found(detail)
    return Outcome.failed(detail)


def _merge(parts: dict[str, list[Outcome]], outcomes: dict[str, Outcome]) -> None:
    for email, outcome in outcomes.items():
        parts.setdefault(email, []).append(outcome)


def _worst(outcomes: list[Outcome]) -> Outcome:
    worst = min(outcomes, key=lambda o: RANK.index(o.status), default=None)
    if worst is None or worst.status is OutcomeStatus.ALREADY:
        return Outcome.already("; ".join(o.detail for o in outcomes) or "nothing to change")
    return worst


def _list(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _chunks(items: list[Any]) -> Iterator[list[Any]]:
    for start in range(0, len(items), LIMIT):
        yield items[start : start + LIMIT]
