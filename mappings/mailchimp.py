"""Mailchimp: each audience member's status from the ledger; tags for what a status cannot say.

Per contact and audience (LIST_ID, a comma list): ``GET /lists/{id}/members/{md5}``, then only what
differs: ``PATCH`` the status, ``POST .../tags``. Suppressed -> ``unsubscribed``; complaint and
bounce reasons become tags ``<TAG_PREFIX><reason>``, removed on unsuppress; RESUBSCRIBE=pending or
subscribed asks for the status back. ``cleaned`` is among the statuses a client may send
(https://mailchimp.com/developer/marketing/api/list-members/) but no doc says it is honoured
(https://mailchimp.com/help/about-cleaned-contacts/: cleaned contacts "can't be edited"), so
HARD_BOUNCE_STATUS=cleaned is opt-in and a refusal falls back to ``unsubscribed``. ``cleaned`` is
final, archived members stay archived, the batch ``POST /lists/{id}`` (an upsert) only serves
CREATE_MISSING=true, and a 429 or a bare 403 (overload; the limit is 10 connections) is Throttled.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import partial
from typing import Any

from syncworker.destinations import (
    BadCredentials,
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
    Secret,
    Throttled,
    guard,
    option,
    throttled_rest,
)

TAGGED = (Kind.HARD_BOUNCE, Kind.SOFT_BOUNCE, Kind.BLOCKED, Kind.SPAM_COMPLAINT)
OVERLOAD_WAIT = 10.0  # s: Mailchimp sends no hint; its limit is connections, which free up fast
# a contact's outcome over several audiences: the first status present in this order
RANK = [OutcomeStatus(s) for s in ("retry", "failed", "applied", "already", "not_found")]


@dataclass(frozen=True)
class MailchimpOptions(Options):
    api_key: Secret = option(required=True)
    list_id: tuple[str, ...] = option(required=True)  # one or more audience ids
    hard_bounce_status: str = option("unsubscribed", choices=("unsubscribed", "cleaned"))
    resubscribe: str = option("none", choices=("none", "pending", "subscribed"))
    tag_prefix: str = option("syncworker:")
    create_missing: bool = option(False)


class Mailchimp(Destination):
    name = "mailchimp"
    options: MailchimpOptions
    batch_size = 50  # per-member calls: a batch stays well inside a deliver job's lease
    rate = Rate(10, per_seconds=1)
    mode = Mode.STATE

    @classmethod
    def effective_base_url(cls, config: DestinationConfig) -> str:
        """BASE_URL, else the data center named by the API key's suffix (``...-us6``)."""
        _, dash, dc = config.get("API_KEY").rpartition("-")
        default = f"https://{dc}.api.mailchimp.com/3.0" if dash and dc.isalnum() else ""
        return config.get("BASE_URL") or default

    def __init__(self, config: DestinationConfig, http: HttpClient) -> None:
        super().__init__(config, http)
        opt = self.options
        self.auth = ("syncworker", opt.api_key)
        self.lists = list(opt.list_id)
        self.hard_bounce, self.resubscribe = opt.hard_bounce_status, opt.resubscribe
        self.ours = {f"{opt.tag_prefix}{kind.value}": kind for kind in TAGGED}
        self.create = opt.create_missing
        self.cleaned_refused = False  # Mailchimp refused a client-set ``cleaned`` once
        self.lists_seen: set[str] = set()

    def check(self) -> list[str]:
        if self.http.base_url:
            return []
        return [f"{self.setting('API_KEY')} must end in -<dc> (or set BASE_URL)"]

    def sync(self, changes: list[ContactChange]) -> list[Outcome]:
        """Bring each contact to ``change.state`` in every audience; repeating changes nothing.
        A 5xx, timeout, outage or 429 stops the batch: the contacts not yet done wait for later."""
        parts: list[list[Outcome]] = [[] for _ in changes]
        halt: Outcome | None = None
        try:
            for list_id in self.lists:
                missing: list[int] = []
                for index, change in enumerate(changes):
                    outcome = halt or guard(partial(self._member, list_id, change))
                    if outcome is None:
                        missing.append(index)
                        continue
                    parts[index].append(outcome)
                    halt = outcome if outcome.status is OutcomeStatus.RETRY else None
                creatable = [
                    i
                    for i in missing
                    if self.options.create_missing and changes[i].state.suppressed
                ]
                for index in set(missing) - set(creatable):
                    parts[index].append(Outcome.not_found(f"not in audience {list_id}"))
                if creatable:
                    added = [changes[i] for i in creatable]
                    created = [halt] * len(added) if halt else self._create(list_id, added)
                    for index, outcome in zip(creatable, created, strict=True):
                        parts[index].append(outcome)
        except Throttled as exc:  # a contact answered in every audience keeps its outcome
            done = [_rank(p) if len(p) == len(self.lists) else None for p in parts]
            return throttled_rest(done, exc)
        return [_rank(p) for p in parts]

    # -- one member ---------------------------------------------------------------------------

    def _member(self, list_id: str, change: ContactChange) -> Outcome | None:
        """The member's outcome, or None when it is not in the audience."""
        path = f"/lists/{list_id}/members/{_hash(change.email)}"
        status, body = self._call("GET", path, params={"fields": "status,tags"})
        if status == 404:
            self._check_list(list_id)
            return None
        if status != 200:
            raise PermanentError(self.name, "member read refused", status=status, body=str(body))
        current = str(body.get("status", ""))
        if current == "archived":
            return Outcome.not_found(f"archived in audience {list_id}: left archived")
        have = {str(t.get("name")) for t in _dicts(body.get("tags"))}
        wanted, blocked = self._status(change.state, current)
        if blocked is not None:
            return blocked
        done = []
        if wanted is not None:
            result = self._set_status(path, wanted, current, change.state)
            if isinstance(result, Outcome):
                return result
            done += [f"status {result}"] if result else []
        if self._tag(path, change.state, have):
            done.append("tags")
        return Outcome.applied(", ".join(done)) if done else Outcome.already(f"already {current}")

    def _status(self, state: ContactState, current: str) -> tuple[str | None, Outcome | None]:
        """The status to set (None: keep it), or the outcome when Mailchimp cannot get there."""
        if state.suppressed:
            bounced = Kind.HARD_BOUNCE in state.reasons and not self.cleaned_refused
            wanted = self.hard_bounce if bounced else "unsubscribed"
            return (None if current in (wanted, "cleaned") else wanted), None
        if self.resubscribe == "none" or current not in ("unsubscribed", "cleaned"):
            return None, None
        if current == "cleaned":
            return None, Outcome.failed("cleaned in Mailchimp: the API cannot resubscribe it")
        return self.resubscribe, None

    def _set_status(self, path: str, wanted: str, now: str, state: ContactState) -> str | Outcome:
        """The status now set ("": none), or the outcome when Mailchimp refuses it."""
        status, body = self._call("PATCH", path, json={"status": wanted})
        if status == 200:
            return wanted
        if status == 404:
            return Outcome.not_found("gone from the audience")
        title, detail = str(body.get("title", "")), str(body.get("detail", ""))
        if wanted == "cleaned" and status == 400:  # any refusal: unsubscribed is still safe
            self.cleaned_refused = True  # unsubscribed + tag from now on
            if now == "unsubscribed":
                return ""  # nothing changed
            return self._set_status(path, "unsubscribed", now, state)
        if state.suppressed and title == "Member In Compliance State":
            return Outcome.already(f"{title}: already kept from mail")
        return Outcome.failed(f"HTTP {status} {title}: {detail}")  # delivery masks it when stored

    def _tag(self, path: str, state: ContactState, have: set[str]) -> bool:
        held = state.reasons if state.suppressed else {}
        wanted = {name for name, kind in self.ours.items() if kind in held}
        changes = [{"name": n, "status": "active"} for n in sorted(wanted - have)]
        stale = (have & set(self.ours)) - wanted
        changes += [{"name": n, "status": "inactive"} for n in sorted(stale)]
        if changes:
            status, body = self._call("POST", f"{path}/tags", json={"tags": changes})
            if status >= 400:
                raise PermanentError(self.name, "tags refused", status=status, body=str(body))
        return bool(changes)

    # -- audiences ----------------------------------------------------------------------------

    def _check_list(self, list_id: str) -> None:
        """A member 404 is genuine only if the audience exists: a wrong LIST_ID pauses us."""
        if list_id in self.lists_seen:
            return
        status, body = self._call("GET", f"/lists/{list_id}", params={"fields": "id"})
        if status == 404:
            problem = f"audience {list_id} not found: check SYNCWORKER_MAILCHIMP_LIST_ID"
            raise BadCredentials(self.name, problem, status=404, body=str(body))
        self.lists_seen.add(list_id)

    def _create(self, list_id: str, changes: list[ContactChange]) -> list[Outcome]:
        """CREATE_MISSING: add suppressed addresses (unsubscribed) in one batch call, tag them."""
        members = [{"email_address": c.email, "status": "unsubscribed"} for c in changes]
        body = {"members": members, "update_existing": False}
        answer = guard(lambda: self._call("POST", f"/lists/{list_id}", json=body)[1])
        if isinstance(answer, Outcome):
            return [answer] * len(changes)
        errors = {str(e.get("email_address", "")).lower(): e for e in _dicts(answer.get("errors"))}
        outcomes = []
        for change in changes:
            error = errors.get(change.email.lower(), {})
            path = f"/lists/{list_id}/members/{_hash(change.email)}"
            if not error:
                tagged = guard(partial(self._tag, path, change.state, set()))
                outcomes.append(tagged if isinstance(tagged, Outcome) else Outcome.applied("added"))
            elif error.get("error_code") == "ERROR_CONTACT_EXISTS":
                outcomes.append(Outcome.retry("added to the audience meanwhile"))
            elif "permanently deleted" in str(error.get("error")):
                outcomes.append(Outcome.not_found("permanently deleted in Mailchimp"))
            else:
                outcomes.append(Outcome.failed(str(error.get("error"))))
        return outcomes

    def _call(self, method: str, path: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
        response = self.http.request(method, path, auth=self.auth, allow=(400, 403, 404), **kwargs)
        try:
            body = response.json() if response.content else {}
        except ValueError:
            body = {}
        if response.status_code == 403 and not body:
            raise Throttled(self.name, OVERLOAD_WAIT, "overloaded (bare 403)", status=403)
        if response.status_code == 403:
            raise BadCredentials(self.name, "forbidden", status=403, body=response.text)
        return response.status_code, body if isinstance(body, dict) else {}


def _rank(outcomes: list[Outcome]) -> Outcome:
    """A contact's outcome over its audiences."""
    return min(outcomes, key=lambda o: RANK.index(o.status))


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _hash(email: str) -> str:
    return hashlib.md5(email.lower().encode(), usedforsecurity=False).hexdigest()
