"""Amplitude: each hygiene event once through the HTTP V2 API, carrying the hygiene traits.

``POST /2/httpapi`` ``{"api_key", "events"}`` (REGION=eu: EU residency), with Segment's event
names. ``insert_id`` derives from the event key, so a retry within 7 days is ignored. The hygiene
traits ride on the event as ``user_properties`` (plain values set them; Amplitude applies ``$set``
operations only on ``$identify`` events); USER_PROPERTIES=false leaves them out. As Amplitude
documents (https://amplitude.com/docs/apis/analytics/http-v2 and .../http-api-batching-retries),
only a 200 ingests anything: a 400 names the rejected events (``events_with_invalid_fields`` and
``events_with_missing_fields``: field -> indices; ``silenced_events``: indices), which fail while
the rest are sent again at once ("Invalid API key" is bad credentials); a 429 names in
``throttled_events`` the events of users or devices over 30 events/s (they retry after 30 s, as
documented) or in ``exceeded_daily_quota_users`` over the daily 500,000 (checked hourly: retry in
an hour, per .../batch-event-upload), the rest are sent again; a 429 naming none throttles the
destination; a 413 (over 2,000 events or 1 MB) halves the batch.
"""

from __future__ import annotations

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
    PermanentError,
    Rate,
    RetryableError,
    Secret,
    Throttled,
    compact_json,
    hygiene_traits,
    json_object,
    option,
    retry_after_seconds,
    scrub_address,
    scrub_body,
    throttled_rest,
    user_id,
    valid_user_id_rule,
)

REGIONS = {"us": "https://api2.amplitude.com", "eu": "https://api.eu.amplitude.com"}
BOUNCE_TYPES = {Kind.HARD_BOUNCE: "hard", Kind.SOFT_BOUNCE: "soft", Kind.BLOCKED: "block"}
REJECTED = ("events_with_invalid_fields", "events_with_missing_fields", "silenced_events")
TEXT_CAP = 1000  # characters of ESP-supplied text per property, as for Segment
MAX_BYTES = 1_000_000  # "under 1 MB" per request
USER_PAUSE = 30.0  # seconds Amplitude asks a throttled user or device to pause
QUOTA_PAUSE = 3600.0  # a user or device over its daily quota: try again in an hour
Row = tuple[int, str, bytes]  # change index, user_id, encoded event
Slots = list[Outcome | None]  # one per change, filled in as answers come


@dataclass(frozen=True)
class AmplitudeOptions(Options):
    api_key: Secret = option(required=True)
    region: str = option("us", choices=tuple(REGIONS))
    user_id: str = option("email", check=valid_user_id_rule, expect=USER_ID_RULES)
    user_properties: bool = option(True)
    max_batch_bytes: int = option(MAX_BYTES, min=4_000, max=MAX_BYTES)


class Amplitude(Destination):
    name = "amplitude"
    options: AmplitudeOptions
    base_url = REGIONS["us"]
    batch_size = 100  # the API takes 2,000 events a request
    rate = Rate(10, per_seconds=1)  # ≤ 1,000 events/s and ≤ 100 batches/s: the Starter plan's caps
    concurrency = 2  # dedupes on insert_id; events carry their time
    mode = Mode.EVENTS

    def __init__(self, config: DestinationConfig, http: HttpClient) -> None:
        super().__init__(config, http)
        opt = self.options
        self.api_key, self.user_id = opt.api_key, opt.user_id
        self.user_properties, self.max_bytes = opt.user_properties, opt.max_batch_bytes

    @classmethod
    def effective_base_url(cls, config: DestinationConfig) -> str:
        region = AmplitudeOptions.read(config)[0].region  # a bad one: reported when built
        return config.get("BASE_URL") or REGIONS[region]

    def sync(self, changes: list[ContactChange]) -> list[Outcome]:
        """Send each change's event once; a retry reuses its insert_id, so Amplitude ignores it."""
        outcomes: Slots = [None] * len(changes)
        rows: list[Row] = []
        for index, change in enumerate(changes):
            if change.event is None:
                outcomes[index] = Outcome.failed("no hygiene event to send")
            else:
                event = self._event(change, change.event)
                rows.append((index, event["user_id"], compact_json(event)))
        try:
            if rows:
                self._send(rows, outcomes)
        except Throttled as exc:  # the requests answered before it keep their outcomes
            return throttled_rest(outcomes, exc)
        return [o or Outcome.retry("not sent") for o in outcomes]

    def _send(self, chunk: list[Row], outcomes: Slots) -> None:
        """POST the chunk until each event has an outcome; each pass settles at least one."""
        while chunk:
            body = b'{"api_key":' + compact_json(self.api_key) + b',"events":['
            body += b",".join(row[2] for row in chunk) + b"]}"
            half = len(chunk) // 2
            if half and len(body) > self.max_bytes:
                for part in (chunk[:half], chunk[half:]):
                    self._send(part, outcomes)
                return
            try:
                response = self.http.post(
                    "/2/httpapi",
                    data=body,
                    headers={"Content-Type": "application/json", "Accept": "*/*"},
                    allow=(400, 413, 429),
                )
            except RetryableError as exc:
                return _settle(chunk, outcomes, Outcome.retry(str(exc)))
            except PermanentError as exc:
                return _settle(chunk, outcomes, Outcome.failed(f"{exc} {exc.body}".strip()))
            answer = json_object(response.text)
            status, error = response.status_code, str(answer.get("error") or "")
            if status == 413 and half:
                for part in (chunk[:half], chunk[half:]):
                    self._send(part, outcomes)
                return
            if status == 413:
                return _settle(chunk, outcomes, Outcome.failed(f"event too large: {error}"))
            if status == 400:
                if error.startswith("Invalid API key"):
                    raise BadCredentials(self.name, "invalid API key", status=400)  # key not logged
                named = _indices(answer, len(chunk), *REJECTED, "events_with_invalid_id_lengths")
                if not named:  # a fault of the request as a whole
                    failed = Outcome.failed(f"request rejected: {scrub_body(response.text, 300)}")
                    return _settle(chunk, outcomes, failed)
                for position in named:
                    outcomes[chunk[position][0]] = Outcome.failed(f"rejected by Amplitude: {error}")
            elif status == 429:
                named = _indices(answer, len(chunk), "throttled_events")
                if not named:  # not a per-user limit: pause the destination
                    after = retry_after_seconds(response, default=USER_PAUSE)
                    raise Throttled(self.name, after, status=429, body=response.text)
                over = answer.get("exceeded_daily_quota_users")
                over = over if isinstance(over, dict | list) else {}
                for position in named:
                    index, who, _ = chunk[position]
                    outcomes[index] = (
                        Outcome.deferred(QUOTA_PAUSE, "over Amplitude's daily quota")
                        if who in over
                        else Outcome.deferred(USER_PAUSE, "user throttled by Amplitude")
                    )
            else:
                return _settle(chunk, outcomes, Outcome.applied("sent"))
            chunk = [row for row in chunk if outcomes[row[0]] is None]

    def _event(self, change: ContactChange, event: HygieneEvent) -> dict[str, Any]:
        properties = {
            "email": "" if self.user_id == "sha256" else change.email,  # hashed: no address
            "kind": event.kind.value,
            "bounce_type": BOUNCE_TYPES.get(event.kind, ""),
            "source": event.source,
            "esp": event.esp,
            "reason": (event.reason or "")[:TEXT_CAP],
            "smtp_code": (event.smtp_code or "")[:TEXT_CAP],
            "email_id": (event.message_id or "")[:TEXT_CAP],
            "list_id": (event.list_id or "")[:TEXT_CAP],
            "event_key": change.key,
            "suppressed": change.state.suppressed,
        }
        if self.user_id == "sha256":  # pseudonymous: the address nowhere, not even in ESP texts
            properties = {k: scrub_address(v, change.email) for k, v in properties.items()}
        digest = hashlib.sha256(f"{self.name}\x1f{change.key}".encode()).hexdigest()
        sent: dict[str, Any] = {
            "user_id": user_id(self.user_id, change.email),
            "event_type": EVENT_NAMES.get(event.kind, f"Email {event.kind.value}"),
            "time": int(event.occurred_at * 1000),
            "insert_id": f"syncworker-{digest[:40]}",
            "event_properties": {k: v for k, v in properties.items() if v != ""},
        }
        if self.user_properties:
            sent["user_properties"] = hygiene_traits(change.state)
        return sent


def _settle(chunk: list[Row], outcomes: Slots, outcome: Outcome) -> None:
    for index, _, _ in chunk:
        outcomes[index] = outcome


def _indices(answer: dict[str, Any], count: int, *fields: str) -> set[int]:
    """Positions named by ``fields``: lists of indices, or maps of field name -> indices."""
    named: set[int] = set()
    for field in fields:
        value = answer.get(field)
        lists = value.values() if isinstance(value, dict) else [value]
        named.update(i for v in lists if isinstance(v, list) for i in v if isinstance(i, int))
    return {i for i in named if 0 <= i < count}
