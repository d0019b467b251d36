"""HubSpot emulator: communication preferences v4 (unsubscribe-all, writes) and CRM batch update.

Contacts exist only when a test seeds them; nothing here creates one. Shapes follow HubSpot's
docs: batch bodies ``{"inputs": [...]}`` answered ``{"status", "results", "errors"?,
"numErrors"?, ...}`` with 207 when some inputs failed; errors ``{"status": "error", "category",
"message", "context": {"ids": [...]}}``; 429 ``{"errorType": "RATE_LIMIT", "policyName":
"TEN_SECONDLY_ROLLING", ...}``. Where HubSpot's behaviour is undocumented (unknown addresses in
unsubscribe-all, the v4 batch input cap) the emulator reports not-found per input and caps at 100.
"""

from __future__ import annotations

import copy
import re
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

from syncworker.devkit.emulators.base import Emulator, Request, Response

PREFS = "/communication-preferences/v4/statuses"
BATCH_UNSUBSCRIBE = re.compile(rf"^{PREFS}/batch/unsubscribe-all$")
BATCH_WRITE = re.compile(rf"^{PREFS}/batch/write$")
ONE_UNSUBSCRIBE = re.compile(rf"^{PREFS}/(?P<email>[^/]+)/unsubscribe-all$")
ONE_WRITE = re.compile(rf"^{PREFS}/(?P<email>[^/]+)$")
CONTACTS_UPDATE = "/crm/v3/objects/contacts/batch/update"

NO_CHANGE = "NO_STATUS_CHANGE"
STATES = ("SUBSCRIBED", "UNSUBSCRIBED", "NOT_SPECIFIED")


@dataclass
class Contact:
    id: str
    email: str
    properties: dict[str, str] = field(default_factory=dict)
    opted_out: bool = False  # opted out of all email
    subscriptions: dict[int, str] = field(default_factory=dict)  # subscription id -> state


class HubSpotEmulator(Emulator):
    """``HubSpotEmulator(token=..., enterprise=True)``; ``seed(*emails)``; inspect ``opted_out``,
    ``properties``, ``contacts``, ``subscriptions(email)``.

    ``enterprise=False`` answers the batch comms-prefs endpoints 403 MISSING_SCOPES, as HubSpot
    does for accounts without Marketing Hub Enterprise. ``defined_properties`` (when given) makes
    a CRM update naming any other property fail with 400, as for a property never created.
    ``refuse`` holds addresses HubSpot finds invalid: a batch naming any of them is refused whole
    with 400 VALIDATION_ERROR, as HubSpot's batch endpoints do when one input is invalid.
    """

    def __init__(
        self,
        token: str = "hubspot-test-token",
        *,
        enterprise: bool = True,
        subscription_types: Mapping[int, str] | None = None,
        defined_properties: Iterable[str] | None = None,
        batch_limit: int = 100,
    ) -> None:
        super().__init__()
        self.token = token
        self.enterprise = enterprise
        self.subscription_types = dict(subscription_types or {1: "Marketing", 2: "Newsletter"})
        self.defined_properties = None if defined_properties is None else set(defined_properties)
        self.batch_limit = batch_limit
        self.require_legal_basis = True
        self.status_details = True  # False: answer as if ``verbose=true`` had not been sent
        self._contacts: dict[str, Contact] = {}
        self._opted: set[str] = set()  # addresses opted out of all email, kept as they change
        self.refuse: set[str] = set()

    # -- seeding and inspection -----------------------------------------------------------------

    def seed(
        self, *emails: str, opted_out: bool = False, properties: Mapping[str, str] | None = None
    ) -> None:
        with self._lock:
            for email in emails:
                state = "UNSUBSCRIBED" if opted_out else "SUBSCRIBED"
                self._contacts[email.lower()] = Contact(
                    id=str(1000 + len(self._contacts)),
                    email=email.lower(),
                    properties={"email": email.lower(), **(properties or {})},
                    opted_out=opted_out,
                    subscriptions={sub: state for sub in self.subscription_types},
                )
                (self._opted.add if opted_out else self._opted.discard)(email.lower())

    @property
    def contacts(self) -> set[str]:
        with self._lock:
            return set(self._contacts)

    @property
    def opted_out(self) -> set[str]:
        with self._lock:
            return {e for e, c in self._contacts.items() if c.opted_out}

    @property
    def opted_out_count(self) -> int:
        """How many contacts are opted out (cheap: for polling while requests are served)."""
        with self._lock:
            return len(self._opted)

    @property
    def properties(self) -> dict[str, dict[str, str]]:
        with self._lock:
            return {e: copy.deepcopy(c.properties) for e, c in self._contacts.items()}

    def subscriptions(self, email: str) -> dict[int, str]:
        with self._lock:
            return dict(self._contacts[email.lower()].subscriptions)

    # -- the HTTP side --------------------------------------------------------------------------

    def authorized(self, request: Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {self.token}"

    def unauthorized(self, request: Request) -> Response:
        return _error(
            401,
            "INVALID_AUTHENTICATION",
            "Authentication credentials not found. This API supports OAuth 2.0 authentication.",
        )

    def throttle(self, request: Request, retry_after: int) -> Response:
        count, per = self._limit or (0, 10.0)
        body = {
            "status": "error",
            "message": "You have reached your ten_secondly_rolling limit.",
            "errorType": "RATE_LIMIT",
            "correlationId": str(uuid.uuid4()),
            "policyName": "TEN_SECONDLY_ROLLING",
            "requestId": str(uuid.uuid4()),
        }
        headers = {
            "X-HubSpot-RateLimit-Interval-Milliseconds": str(int(per * 1000)),
            "X-HubSpot-RateLimit-Max": str(count),
            "X-HubSpot-RateLimit-Remaining": "0",
        }
        return Response(429, body, headers)

    def error(self, status: int, request: Request) -> Response:
        return _error(status, "INTERNAL_ERROR", "internal error (injected)")

    def handle(self, request: Request) -> Response:
        if request.method != "POST":
            return _error(405, "VALIDATION_ERROR", f"{request.method} is not supported here")
        if request.json_error or (request.body and not isinstance(request.json, dict)):
            return _error(400, "VALIDATION_ERROR", "Invalid input JSON on line 1")
        path = request.path
        if BATCH_UNSUBSCRIBE.match(path):
            return self._batch_unsubscribe(request)
        if BATCH_WRITE.match(path):
            return self._batch_write(request)
        if path == CONTACTS_UPDATE:
            return self._contacts_update(request)
        if match := ONE_UNSUBSCRIBE.match(path):
            return self._one_unsubscribe(request, unquote(match["email"]))
        if match := ONE_WRITE.match(path):
            return self._one_write(request, unquote(match["email"]))
        return super().handle(request)

    def _batch_unsubscribe(self, request: Request) -> Response:
        problem = self._batch_problem(request) or _channel_problem(request)
        if problem:
            return problem
        results, missing = [], []
        for email in _body(request)["inputs"]:
            contact = self._contacts.get(str(email).lower())
            if contact is None:
                missing.append(str(email))
                continue
            statuses = self._unsubscribe_all(contact)
            results.append({"subscriberIdString": str(email), "statuses": statuses})
        verbose = request.query.get("verbose") == "true" and self.status_details
        return _batch(results if verbose else [], [_not_found(missing)] if missing else [])

    def _one_unsubscribe(self, request: Request, email: str) -> Response:
        if problem := _channel_problem(request):
            return problem
        contact = self._contacts.get(email.lower())
        if contact is None:
            return Response(404, _not_found([email]))
        statuses = self._unsubscribe_all(contact)
        return _batch(statuses if request.query.get("verbose") == "true" else [], [])

    def _batch_write(self, request: Request) -> Response:
        if problem := self._batch_problem(request):
            return problem
        results: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        missing: list[str] = []
        for item in _body(request)["inputs"]:
            email = str(item.get("subscriberIdString", ""))
            contact = self._contacts.get(email.lower())
            if contact is None:
                missing.append(email)
                continue
            outcome = self._set_status(contact, item)
            (errors if "category" in outcome else results).append(outcome)
        return _batch(results, errors + ([_not_found(missing)] if missing else []))

    def _one_write(self, request: Request, email: str) -> Response:
        contact = self._contacts.get(email.lower())
        if contact is None:
            return Response(404, _not_found([email]))
        outcome = self._set_status(contact, _body(request))
        if "category" in outcome:
            return Response(400, outcome)
        return _batch([outcome], [])

    def _contacts_update(self, request: Request) -> Response:
        if problem := self._batch_problem(request, enterprise_only=False):
            return problem
        inputs = _body(request)["inputs"]
        ids = [str(item.get("id", "")).lower() for item in inputs]
        if len(set(ids)) != len(ids):
            return _error(400, "VALIDATION_ERROR", "Duplicate IDs found in batch input")
        for item in inputs:
            names = set(item.get("properties") or {})
            unknown = names - (self.defined_properties or names)
            if unknown:
                message = f"Property values were not valid: {sorted(unknown)} do not exist"
                return _error(400, "VALIDATION_ERROR", message)
        results, missing = [], []
        now = _now()
        for item in inputs:
            contact = self._find(item, _body(request).get("idProperty"))
            if contact is None:
                missing.append(str(item.get("id", "")))
                continue
            for name, value in (item.get("properties") or {}).items():
                if value in ("", None):
                    contact.properties.pop(name, None)  # "" clears a property
                else:
                    contact.properties[name] = str(value)
            updated = {**(item.get("properties") or {}), "hs_lastmodifieddate": now}
            results.append(
                {"id": contact.id, "properties": updated, "updatedAt": now, "archived": False}
            )
        return _batch(results, [_not_found(missing)] if missing else [])

    # -- state changes --------------------------------------------------------------------------

    def _batch_problem(self, request: Request, *, enterprise_only: bool = True) -> Response | None:
        inputs = _body(request).get("inputs")
        if enterprise_only and not self.enterprise:
            message = "This app hasn't been granted all required scopes to make this call."
            return _error(403, "MISSING_SCOPES", message)
        if not isinstance(inputs, list) or not inputs:
            return _error(400, "VALIDATION_ERROR", "inputs must be a non-empty list")
        if len(inputs) > self.batch_limit:
            message = f"Batch input limit exceeded: {len(inputs)} > {self.batch_limit}"
            return _error(400, "VALIDATION_ERROR", message)
        for item in inputs:
            named = (
                item.get("subscriberIdString") or item.get("id") if isinstance(item, dict) else item
            )
            if str(named).lower() in self.refuse:
                return _error(400, "VALIDATION_ERROR", f"Invalid input: {named} is not valid")
        return None

    def _find(self, item: Mapping[str, Any], id_property: str | None) -> Contact | None:
        key = str(item.get("id", ""))
        if (item.get("idProperty") or id_property) == "email":
            return self._contacts.get(key.lower())
        return next((c for c in self._contacts.values() if c.id == key), None)

    def _unsubscribe_all(self, contact: Contact) -> list[dict[str, Any]]:
        reason = NO_CHANGE if contact.opted_out else "UNSUBSCRIBE_FROM_ALL_OCCURRED"
        contact.opted_out = True
        self._opted.add(contact.email)
        statuses = []
        for sub in self.subscription_types:
            contact.subscriptions[sub] = "UNSUBSCRIBED"
            statuses.append(self._status(contact, sub, reason))
        return statuses

    def _set_status(self, contact: Contact, item: Mapping[str, Any]) -> dict[str, Any]:
        state, sub = item.get("statusState"), item.get("subscriptionId")
        if item.get("channel") != "EMAIL" or state not in STATES:
            return _invalid(contact.email, "channel must be EMAIL and statusState a known state")
        if sub not in self.subscription_types:
            return _invalid(contact.email, f"subscription {sub} does not exist")
        if state == "SUBSCRIBED" and self.require_legal_basis and not item.get("legalBasis"):
            return _invalid(contact.email, "legalBasis is required to subscribe a contact")
        before = contact.subscriptions.get(sub)
        if state == "SUBSCRIBED" and contact.opted_out:
            contact.opted_out, reason = False, "RESUBSCRIBE_OCCURRED"
            self._opted.discard(contact.email)
        elif before == state:
            reason = NO_CHANGE
        else:
            reason = "REQUESTED_CHANGE_OCCURRED"
        contact.subscriptions[sub] = str(state)
        return self._status(contact, sub, reason, legal_basis=item.get("legalBasis"))

    def _status(
        self, contact: Contact, sub: int, reason: str, legal_basis: Any = None
    ) -> dict[str, Any]:
        return {
            "channel": "EMAIL",
            "subscriberIdString": contact.email,
            "subscriptionId": sub,
            "subscriptionName": self.subscription_types[sub],
            "status": contact.subscriptions[sub],
            "source": "Public API",
            "setStatusSuccessReason": reason,
            "legalBasis": legal_basis,
            "timestamp": _now(),
        }


def _now() -> str:
    return datetime.fromtimestamp(time.time(), UTC).isoformat(timespec="milliseconds")


def _error(status: int, category: str, message: str) -> Response:
    body = {
        "status": "error",
        "message": message,
        "correlationId": str(uuid.uuid4()),
        "category": category,
    }
    return Response(status, body)


def _not_found(ids: list[str]) -> dict[str, Any]:
    return {
        "status": "error",
        "category": "OBJECT_NOT_FOUND",
        "message": "Could not get some CONTACT objects, they may be deleted or not exist.",
        "context": {"ids": ids},
    }


def _invalid(email: str, message: str) -> dict[str, Any]:
    body = _error(400, "VALIDATION_ERROR", message).body
    return {**body, "context": {"ids": [email]}}


def _body(request: Request) -> dict[str, Any]:
    return request.json if isinstance(request.json, dict) else {}


def _channel_problem(request: Request) -> Response | None:
    if request.query.get("channel") != "EMAIL":
        return _error(400, "VALIDATION_ERROR", "query parameter channel=EMAIL is required")
    return None


def _batch(results: list[dict[str, Any]], errors: list[dict[str, Any]]) -> Response:
    now = _now()
    body: dict[str, Any] = {
        "status": "COMPLETE",
        "results": results,
        "requestedAt": now,
        "startedAt": now,
        "completedAt": now,
    }
    if errors:
        body["errors"] = errors
        body["numErrors"] = len(errors)
    return Response(207 if errors else 200, body)
