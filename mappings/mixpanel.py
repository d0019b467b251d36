"""Mixpanel: each hygiene event once through ``/import``; hygiene traits on profiles if opted in.

``POST /import?strict=1`` (gzip; Basic auth: service account + PROJECT_ID, API secret, or project
token), Segment's event names, ``$insert_id`` from the event key and the event's own ``time``, so a
retry is deduplicated. PROFILE_SET=true adds an ``/engage`` ``$set`` of the traits per imported
user (opt-in: ``$set`` creates missing profiles; ``verbose=1``: ``/engage`` answers 200 regardless).
Mixpanel's docs (https://docs.mixpanel.com/reference/import-events,
https://docs.mixpanel.com/troubleshooting/errors/413-payload-too-large, .../400-bad-request and
.../429-rate-limit-exceeded): up to 2,000 events and 10 MB uncompressed per request, each event
under 1 MB (an oversized one may come back in ``failed_records``); over the size cap is a 413
``request exceeds max limit of N bytes`` (the reference's own sample says 2097152, so
MAX_BATCH_BYTES stays 2,000,000 by default and a 413 halves the batch); a 400 is a partial success
(``failed_records`` fail, the rest were imported). Rate limit: 2 GB of JSON a minute (~30k
events/s) per project, answered 429 with no documented Retry-After (Mixpanel advises a 2-60 s
backoff): the destination then pauses the HttpClient's default 10 s.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from typing import Any

from syncworker.destinations import (
    EVENT_NAMES,
    USER_ID_RULES,
    BadCredentials,
    ContactChange,
    Destination,
    DestinationConfig,
    HttpClient,
    HygieneEvent,
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
    compact_json,
    hygiene_traits,
    json_object,
    option,
    scrub_address,
    scrub_body,
    throttled_rest,
    user_id,
    valid_user_id_rule,
)

# ingestion hosts by data residency: https://docs.mixpanel.com/reference/overview
REGIONS = {r: f"https://api{s}.mixpanel.com" for r, s in (("us", ""), ("eu", "-eu"), ("in", "-in"))}
BOUNCE_TYPES = {Kind.HARD_BOUNCE: "hard", Kind.SOFT_BOUNCE: "soft", Kind.BLOCKED: "block"}
TEXT_CAP = 255  # Mixpanel truncates every string to 255 characters
MAX_BYTES = 10_000_000  # uncompressed bytes per /import request: "10MB" in the reference
Slots = list[Outcome | None]  # one per change, filled in as answers come


@dataclass(frozen=True)
class MixpanelOptions(Options):
    token: Secret = option(required=True)
    region: str = option("us", choices=tuple(REGIONS))
    service_account_username: Secret = option()
    service_account_secret: Secret = option()
    project_id: str = option()
    api_secret: Secret = option()
    user_id: str = option("email", check=valid_user_id_rule, expect=USER_ID_RULES)
    profile_set: bool = option(False)
    max_batch_bytes: int = option(2_000_000, min=4_000, max=MAX_BYTES)


class Mixpanel(Destination):
    name = "mixpanel"
    options: MixpanelOptions
    base_url = REGIONS["us"]
    batch_size = 1000  # /import takes 2,000 events a request
    rate = Rate(20, per_seconds=1)  # 2 requests per batch; Mixpanel allows ~2 GB of JSON a minute
    concurrency = 2  # dedupes on $insert_id; events carry their time
    mode = Mode.EVENTS

    def __init__(self, config: DestinationConfig, http: HttpClient) -> None:
        super().__init__(config, http)
        opt = self.options
        self.token, self.user_id, self.profiles = opt.token, opt.user_id, opt.profile_set
        self.max_bytes = opt.max_batch_bytes
        self.params = {"strict": "1"}
        self.auth: tuple[str, str]
        account = opt.service_account_username
        if account:
            self.auth = (account, opt.service_account_secret)
            self.params["project_id"] = opt.project_id
        else:
            self.auth = (opt.api_secret or self.token, "")

    def check(self) -> list[str]:
        opt = self.options
        if opt.service_account_username and not (opt.service_account_secret and opt.project_id):
            return [f"{self.setting('SERVICE_ACCOUNT_USERNAME')} needs its SECRET and PROJECT_ID"]
        return []

    @classmethod
    def effective_base_url(cls, config: DestinationConfig) -> str:
        region = MixpanelOptions.read(config)[0].region  # a bad one: reported when built
        return config.get("BASE_URL") or REGIONS[region]

    def sync(self, changes: list[ContactChange]) -> list[Outcome]:
        """Import each change's event once; then, if opted in, $set the traits of its user."""
        outcomes: Slots = [None if c.event else Outcome.failed("no event to send") for c in changes]
        rows = [
            (i, compact_json(self._event(c, c.event))) for i, c in enumerate(changes) if c.event
        ]
        try:
            if rows:
                self._import(rows, outcomes)
            imported = [
                i for i, o in enumerate(outcomes) if o and o.status is OutcomeStatus.APPLIED
            ]
            if self.profiles and imported:
                self._engage(changes, imported, outcomes)
        except Throttled as exc:  # the requests answered before it keep their outcomes
            return throttled_rest(outcomes, exc)
        return [o or Outcome.retry("not sent") for o in outcomes]

    def _import(self, chunk: list[tuple[int, bytes]], outcomes: Slots) -> None:
        """POST one request; a chunk over the size or count cap (or answered 413) is halved."""
        body = b"[" + b",".join(line for _, line in chunk) + b"]"
        half = len(chunk) // 2
        if half and len(body) > self.max_bytes:
            for part in (chunk[:half], chunk[half:]):
                self._import(part, outcomes)
            return
        outcome = Outcome.applied("imported")
        try:
            response = self.http.post(
                "/import",
                params=self.params,
                data=gzip.compress(body, compresslevel=6),
                auth=self.auth,
                headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
                allow=(400, 413),
            )
        except RetryableError as exc:
            outcome = Outcome.retry(str(exc))
        except PermanentError as exc:
            outcome = Outcome.failed(f"{exc} {exc.body}".strip())
        else:
            if response.status_code == 413 and half:  # a smaller cap than assumed: halve
                for part in (chunk[:half], chunk[half:]):
                    self._import(part, outcomes)
                return
            if response.status_code == 413:
                outcome = Outcome.failed(
                    f"event over Mixpanel's size cap: {scrub_body(response.text, 300)}"
                )
            elif response.status_code == 400:
                rejected = _rejected(response.text, len(chunk))
                if not rejected:  # no per-event detail: the request as a whole was refused
                    outcome = Outcome.failed(
                        f"request rejected (HTTP 400): {scrub_body(response.text, 300)}"
                    )
                for position, message in rejected.items():
                    outcomes[chunk[position][0]] = Outcome.failed(message)
        for index, _ in chunk:
            outcomes[index] = outcomes[index] or outcome

    def _engage(self, changes: list[ContactChange], indices: list[int], outcomes: Slots) -> None:
        updates = {}
        for change in (changes[i] for i in indices):  # one update per user: same state anyway
            who = user_id(self.user_id, change.email)
            updates[who] = {
                "$token": self.token,
                "$distinct_id": who,
                "$set": hygiene_traits(change.state),
                "$ip": 0,  # no geolocation from syncworker's own address
                "$ignore_time": True,  # a hygiene update is not user activity: keep "Last Seen"
            }
        outcome = None
        try:
            response = self.http.post(
                "/engage",
                params={"verbose": "1", "ip": "0"},
                data=compact_json(list(updates.values())),
                headers={"Content-Type": "application/json"},
            )
        except Throttled as exc:  # the events are in (and deduped by $insert_id if sent again)
            outcome = Outcome.throttled(exc.retry_after, "event imported; profile update throttled")
        except RetryableError as exc:
            outcome = Outcome.retry(f"event imported; profile update: {exc}")
        except PermanentError as exc:
            outcome = Outcome.failed(f"event imported; profile update: {exc} {exc.body}".strip())
        else:
            answer = json_object(response.text)
            if answer.get("status") != 1:
                error = str(answer.get("error") or response.text)
                if "token" in error.lower():
                    raise BadCredentials(self.name, "/engage refused the project token", status=200)
                outcome = Outcome.failed(f"event imported; profile update rejected: {error}")
        for index in indices:
            outcomes[index] = outcome or outcomes[index]

    def _event(self, change: ContactChange, event: HygieneEvent) -> dict[str, Any]:
        properties: dict[str, Any] = {
            "time": int(event.occurred_at * 1000),
            "distinct_id": user_id(self.user_id, change.email),
            "$insert_id": hashlib.sha256(f"{self.name}\x1f{change.key}".encode()).hexdigest()[:36],
            "email": "" if self.user_id == "sha256" else change.email,  # hashed: no address
            "kind": event.kind.value,
            "bounce_type": BOUNCE_TYPES.get(event.kind, ""),
            "source": event.source,
            "esp": event.esp,
            "reason": (event.reason or "")[:TEXT_CAP],
            "smtp_code": (event.smtp_code or "")[:TEXT_CAP],
            "email_id": (event.message_id or "")[:TEXT_CAP],
            "list_id": (event.list_id or "")[:TEXT_CAP],
            "event_key": change.key[:TEXT_CAP],
            "suppressed": change.state.suppressed,
        }
        if self.user_id == "sha256":  # pseudonymous: the address nowhere, not even in ESP texts
            properties = {k: scrub_address(v, change.email) for k, v in properties.items()}
        name = EVENT_NAMES.get(event.kind, f"Email {event.kind.value}")
        return {"event": name, "properties": {k: v for k, v in properties.items() if v != ""}}


def _rejected(text: str, count: int) -> dict[int, str]:
    records = json_object(text).get("failed_records")
    return {
        r["index"]: f"rejected: {r.get('field')}: {r.get('message')}"
        for r in (records if isinstance(records, list) else [])
        if isinstance(r, dict) and isinstance(r.get("index"), int) and 0 <= r["index"] < count
    }
