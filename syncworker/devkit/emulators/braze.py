"""Braze REST API emulator: the email endpoints, update-only ``/users/track``, export by email.

Routes: ``POST /email/status`` (``subscription_state`` subscribed | unsubscribed | opted_in),
``/email/blocklist`` (unsubscribes and marks hard bounced; ``/email/blacklist`` is its legacy
alias), ``/email/bounce/remove``, ``/email/spam/remove`` -- each takes ``email`` as a string or an
array of at most 50 (more: 400); ``POST /users/track`` (at most 75 objects over ``attributes``,
``events`` and ``purchases``, else 400 "Max Input Length Exceeded"; an attribute object naming a
user by ``email`` creates an email-only profile unless ``_update_existing_only`` is true);
``POST /users/export/ids`` with one ``email_address`` (``users`` empty when none has it).

As Braze documents, the ``/email/*`` endpoints accept addresses that no user has yet: the state is
kept for the address and applied to a user who gets it later (``seed`` applies it). Answers are
``{"message": "success"}``, ``{"message": "success", "errors": [...]}`` when some items were not
processed (the item is named in the error), or ``{"message": "<fatal>"}`` with 4xx. Auth is
``Authorization: Bearer <REST API key>``. Every answer carries ``X-RateLimit-Limit``,
``-Remaining`` and ``-Reset`` (UTC epoch seconds); a 429 carries them and no ``Retry-After``.
``queued=True`` answers writes ``202 {"message": "queued"}`` as during Braze maintenance.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from syncworker.devkit.emulators.base import Emulator, Request, Response

EMAIL_LIMIT = 50
TRACK_LIMIT = 75
STATES = ("subscribed", "unsubscribed", "opted_in")
EMAIL_ROUTES = (
    "/email/status",
    "/email/blocklist",
    "/email/blacklist",
    "/email/bounce/remove",
    "/email/spam/remove",
)


@dataclass
class User:
    braze_id: str
    email: str
    email_subscribe: str = "subscribed"
    hard_bounced: bool = False
    marked_email_as_spam_at: str | None = None
    custom: dict[str, Any] = field(default_factory=dict)


class BrazeEmulator(Emulator):
    """``BrazeEmulator(api_key=..., hourly_limit=250000, queued=False)``;
    ``seed(*emails, email_subscribe=, hard_bounced=, spam_at=)``; inspect ``users(email)``,
    ``contacts``, ``address_state``, ``hard_bounced``, ``spam``, ``exports``."""

    def __init__(
        self, api_key: str = "braze-test-key", *, hourly_limit: int = 250_000, queued: bool = False
    ) -> None:
        super().__init__()
        self.api_key = api_key
        self.hourly_limit = hourly_limit
        self.queued = queued
        self.send_retry_after = False  # Braze's REST API documents X-RateLimit-* only
        self.address_state: dict[str, str] = {}  # /email/status and blocklist, per address
        self.hard_bounced: set[str] = set()  # addresses
        self.spam: set[str] = set()  # addresses (marked as spam on a profile)
        self.exports = 0
        self._users: list[User] = []
        self._hour: tuple[int, int] = (0, 0)  # (hour, requests in it)

    # -- seeding and inspection -----------------------------------------------------------------

    def seed(
        self,
        *emails: str,
        email_subscribe: str = "subscribed",
        hard_bounced: bool = False,
        spam_at: str | None = None,
    ) -> None:
        """Create one user per address; an address-level state set earlier applies to it."""
        with self._lock:
            for email in emails:
                address = email.lower()
                user = User(f"braze-{uuid.uuid4().hex[:12]}", address, email_subscribe)
                user.email_subscribe = self.address_state.get(address, email_subscribe)
                user.hard_bounced = hard_bounced or address in self.hard_bounced
                user.marked_email_as_spam_at = spam_at
                self._users.append(user)

    def users(self, email: str) -> list[User]:
        with self._lock:
            return [
                User(
                    u.braze_id,
                    u.email,
                    u.email_subscribe,
                    u.hard_bounced,
                    u.marked_email_as_spam_at,
                    dict(u.custom),
                )
                for u in self._users
                if u.email == email.lower()
            ]

    @property
    def contacts(self) -> set[str]:
        with self._lock:
            return {u.email for u in self._users}

    def profiles(self) -> dict[str, tuple[str, bool, str | None]]:
        """email -> (email_subscribe, hard_bounced, marked_email_as_spam_at) of its users."""
        with self._lock:
            return {
                u.email: (u.email_subscribe, u.hard_bounced, u.marked_email_as_spam_at)
                for u in self._users
            }

    # -- the HTTP side --------------------------------------------------------------------------

    def authorized(self, request: Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {self.api_key}"

    def unauthorized(self, request: Request) -> Response:
        return Response(401, {"message": "Invalid API key: unknown or missing REST API key"})

    def throttle(self, request: Request, retry_after: int) -> Response:
        count, _ = self._limit or (0, 1.0)
        headers = {
            "X-RateLimit-Limit": str(count),
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": str(int(time.time() + retry_after)),
        }
        return Response(429, {"message": "API rate limit exceeded"}, headers)

    def error(self, status: int, request: Request) -> Response:
        return Response(status, {"message": "Internal Server Error"})

    def _respond(self, request: Request) -> Response:
        response = super()._respond(request)
        if response.status != 429 and self.authorized(request):
            with self._lock:
                hour, used = self._hour
                now = int(time.time())
                used = used + 1 if hour == now // 3600 else 1
                self._hour = (now // 3600, used)
            response.headers.update(
                {
                    "X-RateLimit-Limit": str(self.hourly_limit),
                    "X-RateLimit-Remaining": str(max(0, self.hourly_limit - used)),
                    "X-RateLimit-Reset": str((now // 3600 + 1) * 3600),
                }
            )
        return response

    def handle(self, request: Request) -> Response:
        if request.method != "POST":
            return Response(405, {"message": "Method Not Allowed"})
        if request.json_error or not isinstance(request.json, dict):
            return Response(400, {"message": "Bad Request: cannot parse the request body"})
        body: dict[str, Any] = request.json
        if request.path in EMAIL_ROUTES:
            return self._email(request.path, body)
        if request.path == "/users/track":
            return self._users_track(body)
        if request.path == "/users/export/ids":
            return self._export(body)
        return Response(404, {"message": "Not Found"})

    # -- behaviour ------------------------------------------------------------------------------

    def _email(self, path: str, body: dict[str, Any]) -> Response:
        emails = body.get("email")
        emails = [emails] if isinstance(emails, str) else emails
        if (
            not isinstance(emails, list)
            or not emails
            or not all(isinstance(e, str) for e in emails)
        ):
            return Response(400, {"message": "email must be a string or an array of strings"})
        if len(emails) > EMAIL_LIMIT:
            return Response(400, {"message": f"Max {EMAIL_LIMIT} emails per request exceeded"})
        state = body.get("subscription_state")
        if path == "/email/status" and state not in STATES:
            return Response(400, {"message": f"subscription_state must be one of {STATES}"})
        errors = []
        for raw in emails:
            address = raw.strip().lower()
            if "@" not in address:
                errors.append(f"Invalid email address: {raw}")
                continue
            users = [u for u in self._users if u.email == address]
            if path == "/email/status":
                self.address_state[address] = str(state)
                for user in users:
                    user.email_subscribe = str(state)
            elif path in ("/email/blocklist", "/email/blacklist"):
                self.address_state[address] = "unsubscribed"
                self.hard_bounced.add(address)
                for user in users:
                    user.email_subscribe, user.hard_bounced = "unsubscribed", True
            elif path == "/email/bounce/remove":
                self.hard_bounced.discard(address)
                for user in users:
                    user.hard_bounced = False
            else:
                self.spam.discard(address)
                for user in users:
                    user.marked_email_as_spam_at = None
        return self._written({"message": "success", **({"errors": errors} if errors else {})})

    def _users_track(self, body: dict[str, Any]) -> Response:
        arrays = {key: body.get(key) or [] for key in ("attributes", "events", "purchases")}
        if not all(isinstance(v, list) for v in arrays.values()):
            return Response(400, {"message": "attributes, events and purchases must be arrays"})
        if sum(len(v) for v in arrays.values()) > TRACK_LIMIT:
            return Response(400, {"message": "Max Input Length Exceeded"})
        errors: list[dict[str, Any]] = []
        processed = 0
        for index, item in enumerate(arrays["attributes"]):
            address = str(item.get("email", "")).lower() if isinstance(item, dict) else ""
            if not address:
                errors.append(
                    {
                        "type": "'external_id', 'user_alias', 'braze_id', 'email' or 'phone' "
                        "is required",
                        "input_array": "attributes",
                        "index": index,
                    }
                )
                continue
            users = [u for u in self._users if u.email == address]
            if not users and item.get("_update_existing_only") is True:
                continue  # update-only: no profile, nothing processed
            if not users:
                self.seed(address)  # an email-only profile, as Braze creates one
                users = [u for u in self._users if u.email == address]
            user = max(users, key=self._users.index)  # the most recently updated profile
            for key, value in item.items():
                if key in ("email", "_update_existing_only"):
                    continue
                if key == "email_subscribe":
                    user.email_subscribe = str(value)
                elif key == "marked_email_as_spam_at":
                    user.marked_email_as_spam_at = value
                    (self.spam.add if value else self.spam.discard)(address)
                else:
                    user.custom[key] = value
            processed += 1
        answer: dict[str, Any] = {"message": "success", "attributes_processed": processed}
        if errors:
            answer["errors"] = errors
        response = self._written(answer)
        return response if response.status == 202 else Response(201, answer)

    def _export(self, body: dict[str, Any]) -> Response:
        address = body.get("email_address")
        if not isinstance(address, str) or not address:
            return Response(400, {"message": "email_address must be a string"})
        self.exports += 1
        fields = body.get("fields_to_export") or ["braze_id", "email", "email_subscribe"]
        users = [
            {key: value for key, value in _export_row(u).items() if key in fields}
            for u in self._users
            if u.email == address.lower()
        ]
        answer: dict[str, Any] = {"message": "success", "users": users}
        if not users:
            answer["invalid_user_ids"] = [address]
        return Response(201, answer)

    def _written(self, answer: dict[str, Any]) -> Response:
        return Response(202, {"message": "queued"}) if self.queued else Response(200, answer)


def _export_row(user: User) -> dict[str, Any]:
    return {
        "braze_id": user.braze_id,
        "email": user.email,
        "email_subscribe": user.email_subscribe,
        "custom_attributes": dict(user.custom),
    }
