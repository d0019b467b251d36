"""Mailchimp Marketing API emulator: audience members by MD5 hash, their status and tags.

Routes (under ``/3.0``): ``GET /lists/{id}``; ``GET|PATCH /lists/{id}/members/{hash}``;
``POST /lists/{id}/members/{hash}/tags`` (204); ``POST /lists/{id}`` (batch subscribe or
unsubscribe: <= 500 members, 200 with ``new_members``, ``updated_members`` and ``errors[]`` even
when some members fail). Auth is HTTP Basic with any user name and the API key as password.
Errors are ``application/problem+json`` (``type``, ``title``, ``status``, ``detail``,
``instance``). Mailchimp limits each user to 10 simultaneous connections and answers 429 beyond
(or, at extreme volume, a bare 403 without a body: ``bare_403=True``); it sends no rate-limit
headers, so ``send_retry_after`` is False unless a test turns it on.

Compliance rules modelled: a ``cleaned`` member's status cannot change (Mailchimp: cleaned
contacts "can't be edited", https://mailchimp.com/help/about-cleaned-contacts/); a member who
unsubscribed themselves (``seed(..., by="self")``) cannot be set ``subscribed`` by the API, only
``pending`` (which sends them an opt-in email, counted in ``confirmations``); both refusals are
Mailchimp's 400 "Member In Compliance State" (its API's answer, quoted in client issue threads, not
in its docs); a ``PATCH`` with a status unarchives an ``archived`` member; a permanently deleted
(``forgotten``) address cannot be re-added. The API reference lists ``cleaned`` among the statuses
a client may send (https://mailchimp.com/developer/marketing/api/list-members/) but no doc says
whether Mailchimp honours it for an existing member, nor how it refuses: ``client_cleaned``
(default False) decides, refusing with a 400 titled ``cleaned_refusal`` (default
``Invalid Resource``) otherwise.
"""

from __future__ import annotations

import base64
import hashlib
import re
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

from syncworker.devkit.emulators.base import Emulator, Request, Response, _Handler

STATUSES = ("subscribed", "unsubscribed", "cleaned", "pending", "transactional", "archived")
LIST = re.compile(r"^/3\.0/lists/(?P<list>[^/]+)$")
MEMBER = re.compile(r"^/3\.0/lists/(?P<list>[^/]+)/members/(?P<hash>[0-9a-f]{32})$")
TAGS = re.compile(r"^/3\.0/lists/(?P<list>[^/]+)/members/(?P<hash>[0-9a-f]{32})/tags$")
BATCH_LIMIT = 500
ERRORS_URL = "https://mailchimp.com/developer/marketing/docs/errors/"


def subscriber_hash(email: str) -> str:
    return hashlib.md5(email.lower().encode()).hexdigest()


@dataclass
class Member:
    email: str
    status: str
    tags: list[str] = field(default_factory=list)
    by: str = "admin"  # who unsubscribed it: "self" (the unsubscribe link) or "admin" (API, app)


class MailchimpEmulator(Emulator):
    """``MailchimpEmulator(api_key=..., lists=("list1",), client_cleaned=False,
    cleaned_refusal="Invalid Resource", max_connections=10, bare_403=False)``;
    ``seed(list_id, *emails, status=, tags=, by=)``, ``forget(list_id, email)``; inspect
    ``member(list_id, email)``, ``statuses(list_id)``, ``tags(list_id)``, ``contacts``,
    ``confirmations``, ``inflight``, ``refused_connections``.
    """

    def __init__(
        self,
        api_key: str = "0123456789abcdef0123456789abcdef-us6",
        *,
        lists: tuple[str, ...] = ("list1",),
        client_cleaned: bool = False,
        cleaned_refusal: str = "Invalid Resource",
        max_connections: int = 10,
        bare_403: bool = False,
    ) -> None:
        super().__init__()
        self.api_key = api_key
        self.client_cleaned = client_cleaned
        self.cleaned_refusal = cleaned_refusal  # the 400's title: undocumented, so a test varies it
        self.max_connections = max_connections
        self.bare_403 = bare_403
        self.send_retry_after = False  # Mailchimp sends neither Retry-After nor rate headers
        self.confirmations: list[str] = []  # addresses sent an opt-in email (status pending)
        self.refused_connections = 0
        self._lists: dict[str, dict[str, Member]] = {name: {} for name in lists}
        self._forgotten: dict[str, set[str]] = {name: set() for name in lists}
        self._inflight = 0
        self._over = threading.local()

    # -- seeding and inspection -----------------------------------------------------------------

    def seed(
        self,
        list_id: str,
        *emails: str,
        status: str = "subscribed",
        tags: tuple[str, ...] = (),
        by: str = "admin",
    ) -> None:
        assert status in STATUSES, status
        with self._lock:
            for email in emails:
                member = Member(email.lower(), status, list(tags), by)
                self._lists[list_id][subscriber_hash(email)] = member

    def forget(self, list_id: str, email: str) -> None:
        """Permanently delete an address (GDPR): 404 from now on, and it cannot be re-added."""
        with self._lock:
            self._lists[list_id].pop(subscriber_hash(email), None)
            self._forgotten[list_id].add(subscriber_hash(email))

    def member(self, list_id: str, email: str) -> Member | None:
        with self._lock:
            found = self._lists[list_id].get(subscriber_hash(email))
            return None if found is None else Member(found.email, found.status, list(found.tags))

    def statuses(self, list_id: str = "list1") -> dict[str, str]:
        with self._lock:
            return {m.email: m.status for m in self._lists[list_id].values()}

    def tags(self, list_id: str = "list1") -> dict[str, list[str]]:
        with self._lock:
            return {m.email: sorted(m.tags) for m in self._lists[list_id].values() if m.tags}

    @property
    def contacts(self) -> set[str]:
        with self._lock:
            return {m.email for members in self._lists.values() for m in members.values()}

    @property
    def inflight(self) -> int:
        with self._lock:
            return self._inflight

    # -- the HTTP side --------------------------------------------------------------------------

    def _serve(self, handler: _Handler) -> None:
        """Count simultaneous connections around the whole request, as Mailchimp does."""
        with self._changed:
            self._inflight += 1
            self._over.value = self._inflight > self.max_connections
            self._changed.notify_all()
        try:
            super()._serve(handler)
        finally:
            with self._changed:
                self._inflight -= 1
                self._changed.notify_all()

    def _respond(self, request: Request) -> Response:
        if getattr(self._over, "value", False) and self.authorized(request):
            with self._lock:
                self.refused_connections += 1
            if self.bare_403:
                return Response(403, b"", {"Content-Type": "text/html"})
            detail = (
                f"You have exceeded the limit of {self.max_connections} simultaneous connections."
            )
            return _problem(429, "Too Many Requests", detail)
        return super()._respond(request)

    def authorized(self, request: Request) -> bool:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            _, _, password = base64.b64decode(value).decode().partition(":")
        except ValueError:
            return False
        return password == self.api_key

    def unauthorized(self, request: Request) -> Response:
        detail = "Your API key may be invalid, or you've attempted to access the wrong datacenter."
        return _problem(401, "API Key Invalid", detail)

    def throttle(self, request: Request, retry_after: int) -> Response:
        detail = f"You have exceeded the limit of {self.max_connections} simultaneous connections."
        return _problem(429, "Too Many Requests", detail)

    def error(self, status: int, request: Request) -> Response:
        return _problem(status, "Internal Server Error", "An unexpected internal error occurred.")

    def handle(self, request: Request) -> Response:
        if request.json_error:
            return _problem(
                400, "JSON Parse Exception", "We encountered an unspecified JSON error."
            )
        path, method = request.path, request.method
        if (match := LIST.match(path)) and method in ("GET", "POST"):
            if match["list"] not in self._lists:
                return _not_found()
            if method == "GET":
                return Response(200, {"id": match["list"], "name": f"Audience {match['list']}"})
            return self._batch(match["list"], _body(request))
        if match := TAGS.match(path):
            return self._tags(match["list"], match["hash"], request) if method == "POST" else _405()
        if match := MEMBER.match(path):
            members = self._lists.get(match["list"])
            found = None if members is None else members.get(match["hash"])
            if found is None:
                return _not_found()
            if method == "GET":
                return Response(200, _fields(_member_json(match["list"], found), request))
            if method == "PATCH":
                return self._patch(match["list"], found, _body(request))
            return _405()
        return _not_found()

    # -- behaviour ------------------------------------------------------------------------------

    def _change_status(self, member: Member, status: Any) -> tuple[str, str] | None:
        """Apply a requested status; (title, detail) of the 400 when Mailchimp would refuse."""
        if status not in STATUSES or status == "archived":
            return "Invalid Resource", f"status: {status!r} is not one of the allowed values"
        if status == "cleaned" and not self.client_cleaned and member.status != "cleaned":
            return self.cleaned_refusal, "The resource submitted could not be validated."
        if status == member.status:
            return None
        if member.status == "cleaned":
            return "Member In Compliance State", _compliance(member.email)
        if status == "subscribed" and member.status == "unsubscribed" and member.by == "self":
            return "Member In Compliance State", _compliance(member.email)
        if status == "pending":
            self.confirmations.append(member.email)
        member.status, member.by = str(status), "admin"
        return None

    def _patch(self, list_id: str, member: Member, body: dict[str, Any]) -> Response:
        if "status" in body:
            refused = self._change_status(member, body["status"])
            if refused:
                return _problem(400, *refused)
        return Response(200, _member_json(list_id, member))

    def _tags(self, list_id: str, hashed: str, request: Request) -> Response:
        member = self._lists.get(list_id, {}).get(hashed)
        if member is None:
            return _not_found()
        tags = _body(request).get("tags")
        if not isinstance(tags, list) or not all(isinstance(t, dict) for t in tags):
            return _problem(400, "Invalid Resource", "tags: expected an array of objects")
        for tag in tags:
            name, status = str(tag.get("name", "")), tag.get("status")
            if status not in ("active", "inactive") or not name:
                return _problem(400, "Invalid Resource", "tags: name and status are required")
            if status == "active" and name not in member.tags:
                member.tags.append(name)
            elif status == "inactive" and name in member.tags:
                member.tags.remove(name)
        return Response(204, None)

    def _batch(self, list_id: str, body: dict[str, Any]) -> Response:
        members = body.get("members")
        if not isinstance(members, list) or not members:
            return _problem(400, "Invalid Resource", "members: a non-empty array is required")
        if len(members) > BATCH_LIMIT:
            detail = f"members: expected at most {BATCH_LIMIT} items, got {len(members)}"
            return _problem(400, "Invalid Resource", detail)
        update = bool(body.get("update_existing"))
        new, updated, errors = [], [], []
        for item in members:
            email = str(item.get("email_address", "")).lower()
            hashed, status = subscriber_hash(email), item.get("status")
            existing = self._lists[list_id].get(hashed)
            if not email or "@" not in email:
                errors.append(_item_error(email, "ERROR_GENERIC", "Invalid email address"))
            elif existing is not None and existing.status != "archived" and not update:
                message = f"{email} is already a list member, do you want to update? please "
                message += "provide update_existing:true in the request body"
                errors.append(_item_error(email, "ERROR_CONTACT_EXISTS", message))
            elif existing is not None:
                refused = self._change_status(existing, status)
                if refused:
                    errors.append(_item_error(email, "ERROR_GENERIC", refused[1]))
                else:
                    updated.append(_member_json(list_id, existing))
            elif hashed in self._forgotten[list_id]:
                message = f"{email} was permanently deleted and cannot be re-imported. "
                message += "The contact must re-subscribe to get back on the list."
                errors.append(_item_error(email, "ERROR_GENERIC", message))
            elif status not in STATUSES or status == "archived":
                errors.append(_item_error(email, "ERROR_GENERIC", f"Invalid status {status!r}"))
            else:
                member = Member(email, str(status))
                self._lists[list_id][hashed] = member
                new.append(_member_json(list_id, member))
        answer = {
            "new_members": new,
            "updated_members": updated,
            "errors": errors,
            "total_created": len(new),
            "total_updated": len(updated),
            "error_count": len(errors),
        }
        return Response(200, answer)


def _member_json(list_id: str, member: Member) -> dict[str, Any]:
    return {
        "id": subscriber_hash(member.email),
        "email_address": member.email,
        "status": member.status,
        "list_id": list_id,
        "tags_count": len(member.tags),
        "tags": [{"id": 1000 + i, "name": name} for i, name in enumerate(member.tags)],
    }


def _fields(body: dict[str, Any], request: Request) -> dict[str, Any]:
    """The ``fields`` query parameter: a comma list of top-level fields to return."""
    wanted = [f for f in request.query.get("fields", "").split(",") if f]
    return {k: v for k, v in body.items() if k in wanted} if wanted else body


def _item_error(email: str, code: str, message: str) -> dict[str, str]:
    return {"email_address": email, "error": message, "error_code": code}


def _compliance(email: str) -> str:
    return (
        f"{email} is in a compliance state due to unsubscribe, bounce, or compliance review "
        "and cannot be subscribed."
    )


def _problem(status: int, title: str, detail: str) -> Response:
    body = {
        "type": ERRORS_URL,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": str(uuid.uuid4()),
    }
    return Response(status, body, {"Content-Type": "application/problem+json; charset=utf-8"})


def _not_found() -> Response:
    return _problem(404, "Resource Not Found", "The requested resource could not be found.")


def _405() -> Response:
    return _problem(
        405, "Method Not Allowed", "The requested method and resource are not compatible."
    )


def _body(request: Request) -> dict[str, Any]:
    return request.json if isinstance(request.json, dict) else {}
