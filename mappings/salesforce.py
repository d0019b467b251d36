"""Salesforce: opt Contacts and Leads out of email; record bounces and complaints on them.

A SOQL query per object in OBJECTS (Leads: unconverted) finds every record of each address; one
``PATCH /composite/sobjects`` (allOrNone=false, 200 a call) writes only fields that differ, so a
repeat costs the queries and fires no triggers: ``HasOptedOutOfEmail``, ``EmailBouncedReason``/
``Date`` (cleared only where syncworker wrote them), a COMPLAINT_FIELD checkbox. The Object
Reference lists both bounce fields as Update and Nillable on Contact and Lead (Create on Contact
only); "if bounce management is activated" is when Salesforce fills them, not a condition to write
them, and "email bounce functionality isn't triggered by record updates"
(https://developer.salesforce.com/docs/atlas.en-us.object_reference.meta/object_reference/sforce_api_objects_contact.htm
and sforce_api_objects_lead.htm). Field-level security can still deny the integration user: that
save fails naming the field, and BOUNCE_FIELDS=false leaves them out. OAuth refresh token at
BASE_URL (login host), data at its ``instance_url``; the token lives for one deliver job and a 401
refreshes it and repeats the call once. 403 REQUEST_LIMIT_EXCEEDED pauses LIMIT_PAUSE s.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from syncworker.destinations import (
    OPT_OUT_REASONS,
    REASONS,
    BadCredentials,
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
    OutcomeStatus,
    Rate,
    Secret,
    Throttled,
    iso_time,
    option,
    scrub_body,
    seconds,
    throttled_rest,
)

LIMIT = 200  # records per sObject Collections request
QUERY_CHARS = 6000  # characters of addresses per SOQL query: keeps the GET URL far under 16 KB
MARK = "syncworker: "  # EmailBouncedReason prefix: only bounces syncworker wrote are ever cleared
BOUNCES = (Kind.HARD_BOUNCE, Kind.SOFT_BOUNCE, Kind.BLOCKED)
OPT_OUT, REASON, DATE = "HasOptedOutOfEmail", "EmailBouncedReason", "EmailBouncedDate"
RANK = ["retry", "failed", "applied", "not_found", "already"]  # worst first, across records


def _version(text: str) -> bool:
    return bool(re.fullmatch(r"v?\d{2,3}\.0", text)) and float(text.removeprefix("v")) >= 42


@dataclass(frozen=True)
class SalesforceOptions(Options):
    client_id: Secret = option(required=True)
    client_secret: Secret = option(required=True)
    refresh_token: Secret = option(required=True)
    api_version: str = option("62.0", check=_version, expect="e.g. 62.0, at least 42.0")
    objects: tuple[str, ...] = option(("Contact", "Lead"), choices=("Contact", "Lead"))
    opt_out_reasons: tuple[str, ...] = option(OPT_OUT_REASONS, choices=REASONS)
    bounce_fields: bool = option(True)
    complaint_field: str = option(pattern=r"[A-Za-z]\w*__c", expect="a field like Spam__c")
    resubscribe: bool = option(False)
    limit_pause: float = option(3600.0, check=lambda s: s > 0, expect="seconds, more than 0")


class Salesforce(Destination):
    name = "salesforce"
    options: SalesforceOptions
    base_url = "https://login.salesforce.com"
    batch_size = LIMIT
    rate = Rate(5, per_seconds=1)
    mode = Mode.STATE

    def __init__(self, config: DestinationConfig, http: HttpClient) -> None:
        super().__init__(config, http)
        opt = self.options
        credentials = {"client_id": opt.client_id, "client_secret": opt.client_secret}
        credentials["refresh_token"] = opt.refresh_token
        self.oauth = OAuthToken(http, "/services/oauth2/token", credentials, check=self._check)
        self.version = opt.api_version.removeprefix("v")
        self.opt_out_reasons = frozenset(opt.opt_out_reasons)
        self.api_usage = ""  # the last Sforce-Limit-Info seen
        optional = [*((REASON, DATE) if opt.bounce_fields else ()), opt.complaint_field]
        self.fields = [OPT_OUT, *filter(None, optional)]

    def sync(self, changes: list[ContactChange]) -> list[Outcome]:
        """Bring every record of each address to ``change.state``; repeating changes nothing."""
        states = {c.email.lower(): c.state for c in changes}
        found = self._lookup(list(states))
        missing = Outcome.not_found("no Contact or Lead has this email")
        parts: dict[str, list[Outcome]] = {e: [] if found[e] else [missing] for e in states}
        writes: list[tuple[str, dict[str, Any]]] = []
        kept = not self.options.resubscribe  # an opt-out stays unless RESUBSCRIBE
        for email, records in found.items():
            for record in records:
                fields = self._changed(states[email], record)
                if fields:
                    attributes = {"type": record["attributes"]["type"]}
                    writes.append((email, {"attributes": attributes, "id": record["Id"], **fields}))
                elif not states[email].suppressed and record.get(OPT_OUT) and kept:
                    parts[email].append(Outcome.already(f"{record['Id']}: the opt-out stays"))
                else:
                    parts[email].append(Outcome.already(f"{record['Id']}: nothing to change"))
        writes.sort(key=lambda w: w[1]["attributes"]["type"])  # one type chunk per object
        try:
            for start in range(0, len(writes), LIMIT):
                chunk = writes[start : start + LIMIT]
                body = {"allOrNone": False, "records": [record for _, record in chunk]}
                answer = self._api("PATCH", "/composite/sobjects", json=body)
                results = [*(answer if isinstance(answer, list) else []), *[{}] * len(chunk)]
                for (email, _), result in zip(chunk, results, strict=False):  # in request order
                    parts[email].append(_saved(result if isinstance(result, dict) else {}))
        except Throttled as exc:  # the addresses of this request and the next ones wait
            left = {email for email, _ in writes[start:]}
            return throttled_rest([None if e in left else _worst(parts[e]) for e in states], exc)
        return [_worst(parts[c.email.lower()]) for c in changes]

    def _lookup(self, emails: list[str]) -> dict[str, list[dict[str, Any]]]:
        """Every record of OBJECTS whose Email is in ``emails`` (SOQL compares it caselessly)."""
        found: dict[str, list[dict[str, Any]]] = {e: [] for e in emails}
        for sobject, chunk in [(o, c) for o in self.options.objects for c in _by_length(emails)]:
            where = " AND IsConverted = false" if sobject == "Lead" else ""
            literals = ", ".join(_literal(e) for e in chunk)
            soql = f"SELECT Id, Email, {', '.join(self.fields)} FROM {sobject} WHERE Email IN "
            page = self._api("GET", "/query", params={"q": f"{soql}({literals}){where}"})
            while isinstance(page, dict):
                for record in page.get("records") or []:
                    found.setdefault(str(record.get("Email", "")).lower(), []).append(record)
                more = not page.get("done", True) and page.get("nextRecordsUrl")
                page = self._api("GET", str(more)) if more else None
        return {e: found[e] for e in emails}

    def _changed(self, state: ContactState, record: dict[str, Any]) -> dict[str, Any]:
        """The fields of ``record`` that differ from what ``state`` asks for, with their values."""
        held = set(state.reasons) if state.suppressed else set()
        wanted: dict[str, Any] = {}
        if held & self.opt_out_reasons:
            wanted[OPT_OUT] = True
        elif not state.suppressed and self.options.resubscribe:
            wanted[OPT_OUT] = False
        bounces = [r for name, r in state.reasons.items() if name in BOUNCES and name in held]
        if self.options.bounce_fields and bounces:
            newest = max(bounces, key=lambda r: r.at)
            detail = f": {newest.detail}" if newest.detail else ""
            wanted[REASON] = f"{MARK}{newest.reason} ({newest.source}){detail}"[:255]
            wanted[DATE] = iso_time(newest.at)
        elif self.options.bounce_fields and str(record.get(REASON) or "").startswith(MARK):
            wanted[REASON] = wanted[DATE] = None
        if self.options.complaint_field:
            wanted[self.options.complaint_field] = Kind.SPAM_COMPLAINT in held
        return {k: v for k, v in wanted.items() if not _same(record.get(k), v)}

    def _api(self, method: str, path: str, **kwargs: Any) -> Any:
        """A data API call with a live token (a 401 renews it and repeats the call once), at the
        ``instance_url`` of the token answer."""
        url = path if path.startswith("/services/") else f"/services/data/v{self.version}{path}"
        self.oauth.token()
        instance = str(self.oauth.answer.get("instance_url") or self.http.base_url).rstrip("/")
        response = self.oauth.request(method, instance + url, allow=(403,), **kwargs)
        self.api_usage = response.headers.get("Sforce-Limit-Info", self.api_usage)
        self._check(response)
        return _json(response)

    def _check(self, response: Any) -> None:
        status, text = response.status_code, response.text
        if status < 400:
            return
        codes = {e.get("errorCode") for e in _json(response) or [] if isinstance(e, dict)}
        if status == 403 and "REQUEST_LIMIT_EXCEEDED" in codes:
            pause = seconds(response.headers.get("Retry-After")) or self.options.limit_pause
            message = f"API request limit exceeded ({self.api_usage or 'Sforce-Limit-Info absent'})"
            raise Throttled(self.name, pause, message, status=status, body=text)
        raise BadCredentials(self.name, "credentials rejected", status=status, body=text)


def _saved(result: dict[str, Any]) -> Outcome:
    """One record's SaveResult: ``{"id", "success", "errors": [{"statusCode", "message"}]}``."""
    if result.get("success"):
        return Outcome.applied(f"{result.get('id')}: updated")
    errors = [e for e in result.get("errors") or [] if isinstance(e, dict)]
    text = "; ".join(f"{e.get('statusCode')}: {e.get('message')}" for e in errors)
    detail = scrub_body(text, 300)
    codes = {e.get("statusCode") for e in errors}
    if "UNABLE_TO_LOCK_ROW" in codes:  # another save held the row: try again later
        return Outcome.retry(detail)
    if codes == {"ENTITY_IS_DELETED"}:
        return Outcome.not_found(detail)
    return Outcome.failed(detail or "no result for this record")


def _worst(outcomes: list[Outcome]) -> Outcome:
    worst = min(outcomes, key=lambda o: RANK.index(o.status))
    already = worst.status is OutcomeStatus.ALREADY
    return Outcome.already("; ".join(o.detail for o in outcomes)) if already else worst


def _same(current: Any, wanted: Any) -> bool:
    if wanted is None or isinstance(wanted, bool):
        return bool(current) == bool(wanted)
    if current == wanted:
        return True
    try:  # datetimes come back as 2026-01-01T00:00:00.000+0000
        return datetime.fromisoformat(current) == datetime.fromisoformat(wanted)
    except (TypeError, ValueError):
        return False


def _literal(email: str) -> str:  # a SOQL string literal
    return "'" + email.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _by_length(emails: list[str]) -> list[list[str]]:
    chunks: list[list[str]] = []
    for email in emails:
        if not chunks or sum(len(e) + 4 for e in chunks[-1]) + len(email) > QUERY_CHARS:
            chunks.append([])
        chunks[-1].append(email)
    return chunks


def _json(response: Any) -> Any:
    try:
        return response.json()
    except ValueError:
        return None
