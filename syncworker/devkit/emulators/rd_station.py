"""RD Station Marketing emulator: OAuth refresh grant, contacts by email or uuid, tags, limits.

Shapes follow developers.rdstation.com and the official Ruby client: ``POST /auth/token`` (JSON
``client_id``, ``client_secret``, ``refresh_token``) answers ``access_token``, ``expires_in`` and
``refresh_token``; errors are ``{"errors": {"error_type", "error_message"}}`` (validation errors
``{"errors": {field: [{"error_type", "error_message"}]}}``); an expired token is a 401 whose
``WWW-Authenticate`` says ``error="expired_token"``. ``PATCH /platform/contacts/email:{email}``
is an upsert (it creates the contact, as RD Station's does); ``PATCH /platform/contacts/{uuid}``
and ``POST /platform/contacts/uuid:{uuid}/tag`` only update. As documented
(https://developers.rdstation.com/reference/limite-de-requisicoes-da-api), each contact takes 24
PATCHes and 120 tag calls per sliding 24 h, answered 429 beyond that; the account rate limit
(``rate_limit``) is a 429 with Retry-After.

Not documented by RD Station (its error page only says a 429 means "API usage limit exceeded"),
so configurable here: the body and headers of the per-contact 429 (``TOO_MANY_REQUESTS``,
Retry-After only with ``limit_retry_after=True``), and whether a PATCH's ``legal_bases`` merge
with the contact's by category and type (the default) or replace them
(``legal_bases_replace=True``).
"""

from __future__ import annotations

import copy
import re
import time
import uuid
from collections import deque
from typing import Any
from urllib.parse import unquote

from syncworker.devkit.emulators.base import Emulator, Request, Response

TOKEN = "/auth/token"
CONTACT = re.compile(r"^/platform/contacts/(?P<ident>[^/]+)(?P<tag>/tag)?$")
LEGAL_TYPES = {
    "pre_existent_contract",
    "consent",
    "legitimate_interest",
    "judicial_process",
    "vital_interest",
    "public_interest",
}
FIELDS = {
    "name",
    "email",
    "job_title",
    "bio",
    "website",
    "personal_phone",
    "mobile_phone",
    "city",
    "state",
    "country",
    "twitter",
    "facebook",
    "linkedin",
    "tags",
    "extra_emails",
    "legal_bases",
}
DAY = 86_400.0


class RDStationEmulator(Emulator):
    """``RDStationEmulator(client_id=..., client_secret=..., refresh_token=...)``.

    Seed with ``seed(email, legal_bases=[...], tags=[...], **fields) -> uuid``; inspect
    ``contact(email)``, ``contacts`` (addresses held), ``state`` (every contact, for
    comparisons), ``patches(email)`` (PATCHes counted in the window), ``refreshes``, ``created``
    (addresses an upsert created) and ``limited`` (per-contact 429s sent). Tests drive
    ``expire_tokens(after=n)``, ``advance(seconds)`` (the emulator's clock: token expiry and the
    per-contact windows), ``use_up(email)`` (the contact's PATCH allowance is spent) and the limits
    ``contact_limit``, ``tag_limit``.
    """

    def __init__(
        self,
        client_id: str = "rd-client-id",
        client_secret: str = "rd-client-secret",
        refresh_token: str = "rd-refresh-token",
        *,
        token_ttl: float = DAY,
        contact_limit: int = 24,
        tag_limit: int = 120,
        limit_retry_after: bool = False,
        legal_bases_replace: bool = False,
    ) -> None:
        super().__init__()
        self.client_id, self.client_secret = client_id, client_secret
        self.refresh_token = refresh_token
        self.token_ttl = token_ttl
        self.contact_limit, self.tag_limit = contact_limit, tag_limit
        self.limit_retry_after = limit_retry_after
        self.legal_bases_replace = legal_bases_replace
        self.refreshes = 0
        self.limited = 0
        self.created: list[str] = []
        self._offset = 0.0
        self._tokens: dict[str, float] = {}  # token -> expiry on the emulator's clock
        self._expire_after: int | None = None
        self._contacts: dict[str, dict[str, Any]] = {}  # uuid -> contact
        self._patches: dict[str, deque[float]] = {}
        self._tag_calls: dict[str, deque[float]] = {}

    # -- seeding and inspection -----------------------------------------------------------------

    def seed(
        self,
        email: str,
        *,
        legal_bases: list[dict[str, str]] | None = None,
        tags: list[str] | None = None,
        **fields: Any,
    ) -> str:
        with self._lock:
            return self._create(email, legal_bases or [], tags or [], fields)

    def contact(self, email: str) -> dict[str, Any] | None:
        with self._lock:
            found = self._by_email(email)
            return copy.deepcopy(found) if found else None

    @property
    def contacts(self) -> set[str]:
        with self._lock:
            return {c["email"] for c in self._contacts.values()}

    @property
    def state(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {c["email"]: copy.deepcopy(c) for c in self._contacts.values()}

    def patches(self, email: str) -> int:
        with self._lock:
            found = self._by_email(email)
            return len(self._recent(self._patches, found["uuid"])) if found else 0

    # -- what tests drive -----------------------------------------------------------------------

    def use_up(self, email: str) -> None:
        """Spend the rest of this contact's PATCH allowance for the current window."""
        with self._lock:
            found = self._by_email(email)
            assert found is not None, email
            window = self._recent(self._patches, found["uuid"])
            window.extend([self.now()] * (self.contact_limit - len(window)))

    def now(self) -> float:
        return time.time() + self._offset

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._offset += seconds

    def expire_tokens(self, after: int = 0) -> None:
        """Every access token issued so far expires once ``after`` more API calls have passed."""
        with self._lock:
            self._expire_after = after

    # -- the HTTP side --------------------------------------------------------------------------

    def authorized(self, request: Request) -> bool:
        if request.path == TOKEN:
            return True
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        if self._expire_after is not None and token in self._tokens:
            if self._expire_after == 0:
                self._tokens = dict.fromkeys(self._tokens, 0.0)
                self._expire_after = None
            else:
                self._expire_after -= 1
        return self._tokens.get(token, 0.0) > self.now()

    def unauthorized(self, request: Request) -> Response:
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        response = _error(401, "UNAUTHORIZED", "Invalid token.")
        if token in self._tokens:  # known but past its expiry
            response.headers["WWW-Authenticate"] = (
                'Bearer realm="https://api.rd.services/", error="expired_token", '
                'error_description="The access token expired"'
            )
        return response

    def throttle(self, request: Request, retry_after: int) -> Response:
        return _error(429, "TOO_MANY_REQUESTS", "API rate limit exceeded")

    def error(self, status: int, request: Request) -> Response:
        if status == 404:
            return _not_found()  # as for a contact deleted meanwhile
        if status == 401:
            return self.unauthorized(request)
        return _error(status, "INTERNAL_SERVER_ERROR", "internal error (injected)")

    def handle(self, request: Request) -> Response:
        if request.path == TOKEN and request.method == "POST":
            return self._token(request)
        match = CONTACT.match(request.path)
        if match is None:
            return _error(404, "NOT_FOUND", f"no route {request.method} {request.path}")
        kind, colon, value = unquote(match["ident"]).partition(":")
        if not colon:  # /platform/contacts/{uuid}
            kind, value = "uuid", kind
        if kind not in ("email", "uuid"):
            return _error(400, "INVALID_IDENTIFIER", f"unsupported identifier {kind}")
        found = self._by_email(value) if kind == "email" else self._contacts.get(value)
        if request.json_error or (request.body and not isinstance(request.json, dict)):
            return _error(400, "BAD_REQUEST", "the body must be a JSON object")
        body = request.json if isinstance(request.json, dict) else {}
        if match["tag"] and request.method == "POST":
            return self._tag(found, body)
        if match["tag"] or request.method not in ("GET", "PATCH"):
            return _error(405, "METHOD_NOT_ALLOWED", f"{request.method} is not allowed here")
        if request.method == "GET":
            return Response(200, copy.deepcopy(found)) if found else _not_found()
        return self._patch(found, kind, value, body)

    def _token(self, request: Request) -> Response:
        body = request.json if isinstance(request.json, dict) else {}
        if (body.get("client_id"), body.get("client_secret")) != (
            self.client_id,
            self.client_secret,
        ):
            return Response(
                401, {"error_type": "ACCESS_DENIED", "error_message": "Wrong credentials provided."}
            )
        if body.get("refresh_token") != self.refresh_token:
            message = "The refresh token is invalid or was revoked."
            return _error(401, "INVALID_REFRESH_TOKEN", message)
        token = uuid.uuid4().hex
        self._tokens[token] = self.now() + self.token_ttl
        self.refreshes += 1
        answer = {
            "access_token": token,
            "expires_in": int(self.token_ttl),
            "refresh_token": self.refresh_token,
        }
        return Response(200, answer)

    def _patch(
        self, found: dict[str, Any] | None, kind: str, value: str, body: dict[str, Any]
    ) -> Response:
        if kind == "email" and "email" in body:
            message = "The payload contains an attribute that was used to identify the resource."
            return _error(400, "CONFLICTING_FIELD", message)
        unknown = sorted(k for k in body if k not in FIELDS and not k.startswith("cf_"))
        if unknown:
            return _invalid(unknown[0], "INVALID_FIELD", f"{unknown[0]} is not a contact field")
        problem = _legal_bases_problem(body.get("legal_bases"))
        if problem:
            return _invalid("legal_bases", "INVALID_OPTION", problem)
        if found is None:
            if kind != "email":
                return _not_found()
            self.created.append(value.lower())  # the upsert: RD Station creates the contact
            found = self._contacts[self._create(value, [], [], {})]
        window = self._recent(self._patches, found["uuid"])
        if len(window) >= self.contact_limit:
            return self._over_limit(window, "24 updates per contact in 24 hours")
        window.append(self.now())
        for name, new in body.items():
            if name == "legal_bases":
                kept = [] if self.legal_bases_replace else found["legal_bases"]
                merged = {(b["category"], b["type"]): b for b in kept}
                merged.update({(b["category"], b["type"]): dict(b) for b in new})
                found["legal_bases"] = list(merged.values())
            else:
                found[name] = copy.deepcopy(new)  # tags: the list given replaces the contact's
        return Response(200, copy.deepcopy(found))

    def _tag(self, found: dict[str, Any] | None, body: dict[str, Any]) -> Response:
        if found is None:
            return _not_found()
        tags = body.get("tags")
        if not isinstance(tags, list) or not tags or not all(isinstance(t, str) for t in tags):
            return _invalid("tags", "INVALID_FORMAT", "tags must be a non-empty list of strings")
        if any(t != t.lower() for t in tags):
            return _invalid("tags", "INVALID_FORMAT", "tags must be lower case")
        window = self._recent(self._tag_calls, found["uuid"])
        if len(window) >= self.tag_limit:
            return self._over_limit(window, "120 tag requests per contact in 24 hours")
        window.append(self.now())
        found["tags"] = [*found["tags"], *(t for t in tags if t not in found["tags"])]
        return Response(200, {"tags": list(found["tags"])})

    def _over_limit(self, window: deque[float], what: str) -> Response:
        self.limited += 1
        response = _error(429, "TOO_MANY_REQUESTS", f"Rate limit exceeded: {what}")
        if self.limit_retry_after:
            response.headers["Retry-After"] = str(max(1, int(window[0] + DAY - self.now()) + 1))
        return response

    def _recent(self, counters: dict[str, deque[float]], key: str) -> deque[float]:
        window = counters.setdefault(key, deque())
        while window and window[0] <= self.now() - DAY:
            window.popleft()
        return window

    def _create(
        self, email: str, legal_bases: list[dict[str, str]], tags: list[str], fields: dict[str, Any]
    ) -> str:
        contact_id = str(uuid.uuid4())
        contact: dict[str, Any] = {"uuid": contact_id, "email": email.lower(), "name": None}
        contact |= {"tags": list(tags), "legal_bases": [dict(b) for b in legal_bases], **fields}
        self._contacts[contact_id] = contact
        return contact_id

    def _by_email(self, email: str) -> dict[str, Any] | None:
        return next((c for c in self._contacts.values() if c["email"] == email.lower()), None)


def _error(status: int, error_type: str, message: str) -> Response:
    return Response(status, {"errors": {"error_type": error_type, "error_message": message}})


def _invalid(field: str, error_type: str, message: str) -> Response:
    return Response(
        400, {"errors": {field: [{"error_type": error_type, "error_message": message}]}}
    )


def _not_found() -> Response:
    return _error(404, "RESOURCE_NOT_FOUND", "Lead not found.")


def _legal_bases_problem(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, list):
        return "legal_bases must be a list"
    for item in value:
        if not isinstance(item, dict) or item.get("category") != "communications":
            return "category must be communications"
        if item.get("type") not in LEGAL_TYPES:
            return f"type must be one of {sorted(LEGAL_TYPES)}"
        if item.get("status") not in ("granted", "declined"):
            return "status must be granted or declined"
    return None
