"""Braze: each address's email subscription state and hard-bounce flag, from the ledger.

Per batch (at most 50 addresses, the ``/email/*`` limit), one call per kind of write: hard bounce
-> ``POST /email/blocklist`` (unsubscribes and marks hard bounced); other suppression reasons ->
``POST /email/status`` ``unsubscribed``; a spam complaint also sets ``marked_email_as_spam_at``
through ``POST /users/track`` with ``_update_existing_only`` (never a new profile). Unsuppressed
-> ``/email/status`` ``subscribed`` (opted-in users stay opted in) and, with CLEAR_ON_UNSUPPRESS,
``/email/bounce/remove`` and ``/email/spam/remove`` (these also clear the ESP's lists behind
Braze). LOOKUP=true (default) first asks ``POST /users/export/ids`` about each address (one email
per call; 250 calls a minute on newer workspaces, hence the default rate): no user -> NOT_FOUND,
nothing written. LOOKUP=false writes every address: ``/email/*`` take addresses no user has yet
and apply the state to a user who gets one later, so every outcome is APPLIED. A 429 pauses
until ``Retry-After``, else ``X-RateLimit-Reset`` (the shared client reads both).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial
from typing import Any

from syncworker.destinations import (
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
    Rate,
    Secret,
    Throttled,
    Url,
    guard,
    iso_time,
    option,
    scrub_body,
    throttled_rest,
)

STATUS, BLOCKLIST, TRACK = "/email/status", "/email/blocklist", "/users/track"
UNBOUNCE, UNSPAM = "/email/bounce/remove", "/email/spam/remove"
EXPORT = "/users/export/ids"
# a contact's outcome over its calls: the first status present in this order
RANK = [OutcomeStatus(s) for s in ("retry", "failed", "not_found", "applied", "already")]
Call = tuple[str, str]  # (path, subscription_state or "")


@dataclass(frozen=True)
class BrazeOptions(Options):
    api_key: Secret = option(required=True)
    base_url: Url = option(
        required=True
    )  # the workspace's REST endpoint, e.g. rest.fra-01.braze.eu
    lookup: bool = option(True)
    clear_on_unsuppress: bool = option(True)


class Braze(Destination):
    name = "braze"
    options: BrazeOptions
    batch_size = 50
    # REST API: 250,000 requests an hour; the export lookups are held to 250 a minute
    rate = Rate(50, per_seconds=1)
    concurrency = 4  # limited by rate (per endpoint), not by concurrency
    endpoint_rates = {EXPORT: Rate(250, per_seconds=60)}
    mode = Mode.STATE

    def __init__(self, config: DestinationConfig, http: HttpClient) -> None:
        super().__init__(config, http)
        self.headers = {"Authorization": f"Bearer {self.options.api_key}"}
        self.lookup = self.options.lookup
        self.clear = self.options.clear_on_unsuppress

    def sync(self, changes: list[ContactChange]) -> list[Outcome]:
        """Bring each address to ``change.state``. Repeating a call changes nothing more.

        A 5xx, timeout or outage during the lookups stops them: the rest are retried later.
        """
        parts: list[list[Outcome]] = [[] for _ in changes]
        calls: dict[Call, list[ContactChange]] = {}
        needs: list[list[Call]] = [[] for _ in changes]
        done: dict[tuple[Call, str], Outcome] = {}
        halt: Outcome | None = None
        try:
            for index, change in enumerate(changes):
                users: list[dict[str, Any]] | Outcome | None = halt
                if halt is None and self.lookup:
                    users = guard(partial(self._users, change.email))
                if isinstance(users, Outcome):
                    parts[index].append(users)
                    halt = users if users.status is OutcomeStatus.RETRY else None
                elif users == []:
                    parts[index].append(Outcome.not_found("no Braze user has this address"))
                else:
                    needs[index] = self._calls(change.state, users)
                    for call in needs[index]:
                        calls.setdefault(call, []).append(change)
                    if not needs[index]:
                        parts[index].append(Outcome.already(_subscriptions(users)))
            for call, batch in calls.items():
                done.update({(call, e): o for e, o in self._write(call, batch).items()})
        except Throttled as exc:  # an address whose lookup and writes were answered keeps them
            slots: list[Outcome | None] = []
            for index, change in enumerate(changes):
                mine = [done.get((call, change.email.lower())) for call in needs[index]]
                finished = (parts[index] or mine) and None not in mine
                slots.append(_rank([*parts[index], *filter(None, mine)]) if finished else None)
            return throttled_rest(slots, exc)
        for index, change in enumerate(changes):
            email = change.email.lower()
            parts[index] += [o for (call, e), o in done.items() if e == email]
        return [_rank(p) for p in parts]

    def _calls(self, state: ContactState, users: list[dict[str, Any]] | None) -> list[Call]:
        """The writes that bring an address to ``state`` (``users``: None when not looked up)."""
        subscriptions = {str(u.get("email_subscribe")) for u in users or []}
        if not state.suppressed:
            clear = [(UNBOUNCE, ""), (UNSPAM, "")] if self.clear else []
            if users is None or "unsubscribed" in subscriptions:
                return [(STATUS, "subscribed"), *clear]
            return clear
        calls = [(TRACK, "")] if Kind.SPAM_COMPLAINT in state.reasons else []
        if Kind.HARD_BOUNCE in state.reasons:  # not visible in an export: always sent
            return [(BLOCKLIST, ""), *calls]
        if users is None or subscriptions != {"unsubscribed"}:
            calls.append((STATUS, "unsubscribed"))
        return calls

    def _users(self, email: str) -> list[dict[str, Any]] | None:
        """Braze's users with this address (None: the answer did not say, as in a dry run)."""
        body = {"email_address": email, "fields_to_export": ["braze_id", "email_subscribe"]}
        users = self._post(EXPORT, body).get("users")
        return [u for u in users if isinstance(u, dict)] if isinstance(users, list) else None

    def _write(self, call: Call, batch: list[ContactChange]) -> dict[str, Outcome]:
        """One request for up to 50 addresses; an item Braze names in ``errors`` fails alone."""
        path, state = call
        emails = [c.email.lower() for c in batch]
        if path == TRACK:
            attributes = [
                {
                    "email": c.email,
                    "marked_email_as_spam_at": iso_time(
                        c.state.reasons[Kind.SPAM_COMPLAINT].at, "seconds"
                    ),
                    "_update_existing_only": True,
                }
                for c in batch
            ]
            body: dict[str, Any] = {"attributes": attributes}
        else:
            body = {"email": emails, **({"subscription_state": state} if state else {})}
        answer = guard(partial(self._post, path, body))
        if isinstance(answer, Outcome):
            return dict.fromkeys(emails, answer)
        what = f"{path} {state}".strip()
        if answer.get("message") == "queued":
            what += " (queued by Braze)"
        outcomes = dict.fromkeys(emails, Outcome.applied(what))
        errors = answer.get("errors")
        for error in errors if isinstance(errors, list) else []:
            index = error.get("index") if isinstance(error, dict) else None
            named = [emails[index]] if isinstance(index, int) and index < len(emails) else []
            words = set(re.split(r"[\s,;:'\"()\[\]{}]+", str(error).lower()))
            named += [e for e in emails if e in words]
            for email in named:
                outcomes[email] = Outcome.failed(scrub_body(f"{path}: {error}", 300))
        return outcomes

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self.http.post(path, json=body, headers=self.headers)
        try:
            answer = response.json() if response.content else {}
        except ValueError:
            answer = {}
        return answer if isinstance(answer, dict) else {}


def _rank(outcomes: list[Outcome]) -> Outcome:
    """A contact's outcome over its calls."""
    return min(outcomes, key=lambda o: RANK.index(o.status))


def _subscriptions(users: list[dict[str, Any]] | None) -> str:
    states = sorted({str(u.get("email_subscribe")) for u in users or []})
    return f"email_subscribe {'/'.join(states)}" if states else "nothing to change"
