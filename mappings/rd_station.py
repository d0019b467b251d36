"""RD Station Marketing: decline the contact's communications legal basis; tag bounces, complaints.

Per contact (no batch update exists): ``GET /platform/contacts/email:{email}`` (404: not found;
the email-keyed PATCH is an upsert and is never used), then only what differs from the ledger:
``PATCH /platform/contacts/{uuid}`` (update-only) declining the ``communications`` legal basis of
type LEGAL_BASIS_TYPE, and every other one still granted, for OPT_OUT_REASONS (or removing tags);
``POST .../uuid:{uuid}/tag`` adding TAG_PREFIX tags for bounces and complaints. RD Station
documents 24 PATCHes per contact and 120 tag calls per lead in 24 h, and 120 calls a minute per
account (https://developers.rdstation.com/reference/limite-de-requisicoes-da-api), and a 429 as
"API usage limit exceeded" (.../reference/mensagens-de-erro-rdsm), but neither the body nor a
Retry-After of the per-contact answer. So a 429 on a contact's own update or tag call retries that
contact after LIMIT_RETRY_AFTER s (or Retry-After, if sent) instead of pausing the destination; a
contact already in its state costs one GET. Whether a PATCH's ``legal_bases`` merge with the
contact's or replace them is undocumented too: declining every granted basis explicitly leaves
none granted either way. OAuth: refresh token at ``/auth/token``; the access token lives for one
deliver job, is renewed before ``expires_in`` and on a 401 (``expired_token``), and the rejected
call is repeated once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import requests

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
    OAuthToken,
    Options,
    Outcome,
    PermanentError,
    Rate,
    RetryableError,
    Secret,
    Throttled,
    option,
    retry_after_seconds,
    scrub_body,
    throttled_rest,
)

CONTACTS = "/platform/contacts"
COMMS = "communications"  # the only legal-basis category RD Station defines
LEGAL_TYPES = (
    "pre_existent_contract",
    "consent",
    "legitimate_interest",
    "judicial_process",
    "vital_interest",
    "public_interest",
)
DAY = 86400.0  # an access token's life when the answer has no expires_in
TAGGED = (Kind.HARD_BOUNCE, Kind.SOFT_BOUNCE, Kind.BLOCKED, Kind.SPAM_COMPLAINT)


def _lower(text: str) -> bool:  # RD Station tags are lower case
    return text == text.lower()


@dataclass(frozen=True)
class RDStationOptions(Options):
    client_id: Secret = option(required=True)
    client_secret: Secret = option(required=True)
    refresh_token: Secret = option(required=True)
    opt_out_reasons: tuple[str, ...] = option(OPT_OUT_REASONS, choices=REASONS)
    legal_basis_type: str = option("consent", choices=LEGAL_TYPES)
    #: set but empty: no tags
    tag_prefix: str = option("syncworker-", empty=True, check=_lower, expect="lower case")
    resubscribe: bool = option(False)
    limit_retry_after: float = option(3600.0, check=lambda s: s > 0, expect="seconds, above 0")


class RDStation(Destination):
    name = "rd_station"
    options: RDStationOptions
    base_url = "https://api.rd.services"
    batch_size = 20  # up to three calls per contact at 2 per second: a batch takes about 30 s
    rate = Rate(120, per_seconds=60)  # the account limit of the Light, Basic and Pro plans
    mode = Mode.STATE

    def __init__(self, config: DestinationConfig, http: HttpClient) -> None:
        super().__init__(config, http)
        opt = self.options
        fields = {"client_id": opt.client_id, "client_secret": opt.client_secret}
        fields["refresh_token"] = opt.refresh_token
        self.oauth = OAuthToken(
            http, "/auth/token", fields, as_json=True, grant_type=False, lifetime=DAY
        )
        self.opt_out_reasons = frozenset(opt.opt_out_reasons)
        self.basis_type, self.prefix = opt.legal_basis_type, opt.tag_prefix

    @property
    def expires_at(self) -> float:
        """When the access token is renewed before use (``time.monotonic``)."""
        return self.oauth.expires_at or 0.0

    @expires_at.setter
    def expires_at(self, value: float) -> None:
        self.oauth.expires_at = value

    def sync(self, changes: list[ContactChange]) -> list[Outcome]:
        """One contact at a time; a timeout or 5xx leaves it and the rest of the batch to retry
        (an outage then costs one timeout, not one per contact)."""
        outcomes: list[Outcome] = []
        for change in changes:
            try:
                outcomes.append(self.sync_one(change))
            except Throttled as exc:  # the contacts done before it keep their outcomes
                return throttled_rest([*outcomes, *[None] * (len(changes) - len(outcomes))], exc)
            except RetryableError as exc:
                return outcomes + [Outcome.retry(str(exc))] * (len(changes) - len(outcomes))
            except PermanentError as exc:
                outcomes.append(Outcome.failed(f"{exc} {exc.body}".strip()))
        return outcomes

    def sync_one(self, change: ContactChange) -> Outcome:
        """Bring one contact to ``change.state``, sending nothing it already has."""
        path = f"{CONTACTS}/email:{quote(change.email, safe='@')}"
        response = self.oauth.request("GET", path, allow=(404,))
        if response.status_code == 404:
            return _missing(response)
        contact = _body(response)
        patch, tags = self._wanted(change.state, contact)
        uuid = quote(str(contact.get("uuid") or ""), safe="")
        calls = [("PATCH", f"{CONTACTS}/{uuid}", patch)] if patch else []
        calls += [("POST", f"{CONTACTS}/uuid:{uuid}/tag", {"tags": tags})] if tags else []
        if not calls:
            return Outcome.already(self._unchanged(change.state, contact))
        if not uuid:
            return Outcome.failed("RD Station answered the contact without a uuid")
        for method, call_path, body in calls:
            answer = self.oauth.request(method, call_path, json=body, allow=(404, 429))
            if answer.status_code == 404:
                return _missing(answer)
            if answer.status_code == 429:  # this contact's own daily limit: 24 updates in 24 h
                after = retry_after_seconds(answer, default=self.options.limit_retry_after)
                return Outcome.deferred(
                    after, f"contact update limit: {scrub_body(answer.text, 200)}"
                )
        return Outcome.applied(", ".join(sorted({*patch, *(["tags"] if tags else [])})))

    def _wanted(
        self, state: ContactState, contact: dict[str, Any]
    ) -> tuple[dict[str, Any], list[str]]:
        """The PATCH body (only what differs) and the tags to add, for ``state``."""
        held = set(state.reasons) if state.suppressed else set()
        basis = self.basis_type
        bases = {
            str(b.get("type")): b.get("status")
            for b in contact.get("legal_bases") or []
            if isinstance(b, dict) and b.get("category") == COMMS
        }
        patch: dict[str, Any] = {}
        if held & self.opt_out_reasons:
            types = {self.basis_type, *(t for t, status in bases.items() if status == "granted")}
            declined = [t for t in sorted(types) if bases.get(t) != "declined"]
            if declined:
                patch["legal_bases"] = [_basis(t, "declined") for t in declined]
        elif not state.suppressed and self.options.resubscribe and bases.get(basis) == "declined":
            patch["legal_bases"] = [_basis(basis, "granted")]
        current = [t for t in contact.get("tags") or [] if isinstance(t, str)]
        ours = {t for t in current if self.prefix and t.startswith(self.prefix)}
        wanted = {self.prefix + k.replace("_", "-") for k in held if k in TAGGED and self.prefix}
        if ours - wanted:  # tags leave only through a PATCH of the whole list
            patch["tags"] = [t for t in current if t not in ours - wanted]
        return patch, sorted(wanted - ours)

    def _unchanged(self, state: ContactState, contact: dict[str, Any]) -> str:
        declined = any(
            isinstance(b, dict) and b.get("status") == "declined"
            for b in contact.get("legal_bases") or []
        )
        if not state.suppressed and declined and not self.options.resubscribe:
            return "the declined legal basis stays (set RESUBSCRIBE=true to grant it again)"
        return "nothing to change"


def _basis(kind: str, status: str) -> dict[str, str]:
    return {"category": COMMS, "type": kind, "status": status}


def _missing(response: requests.Response) -> Outcome:
    """404 RESOURCE_NOT_FOUND: no such contact (another 404, e.g. a wrong path, is a failure)."""
    if "RESOURCE_NOT_FOUND" in response.text:
        return Outcome.not_found("RESOURCE_NOT_FOUND")
    return Outcome.failed(f"404: {scrub_body(response.text, 200)}")


def _body(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
