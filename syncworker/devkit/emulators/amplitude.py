"""Amplitude HTTP V2 emulator: ``/2/httpapi`` with insert_id dedupe, and the ``/identify`` API.

As Amplitude documents (https://amplitude.com/docs/apis/analytics/http-v2, .../batch-event-upload;
the Python SDK's response handling): the API key travels in the body, and a wrong one is a 400
``Invalid API key: ...``; a request over 1 MB or 2,000 events is 413; an event without
``event_type``, with a non-integer ``time``, or without an id (a ``user_id`` shorter than
``options.min_id_length``, default 5, is dropped first) makes the whole request a 400 naming the
events (``events_with_missing_fields``, ``events_with_invalid_fields``: field -> indices;
``events_with_invalid_id_lengths``, from the SDKs), nothing ingested; so does an event of a
``silenced`` device (400 ``Events silenced for device_id``, ``silenced_devices``,
``silenced_events``). A user over ``user_limit`` events per window (Amplitude: 30/s averaged over
30 s), or in ``over_quota``, makes the request a 429 naming ``throttled_users``,
``exceeded_daily_quota_users`` and ``throttled_events``, nothing ingested. An event repeating
(device_id, insert_id) within 7 days is ignored (``duplicates``); without a device_id Amplitude
derives one from the user_id (``device_of``). Plain ``user_properties`` on an event set the user's
properties; ``$set``/``$setOnce``/``$unset`` operations apply on ``$identify`` events and through
``/identify``. The base limiter's 429 names no events: a project-wide limit, which Amplitude does
not document for this API.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import deque
from typing import Any
from urllib.parse import parse_qsl

from syncworker.devkit.emulators.base import Emulator, Request, Response

MAX_REQUEST_BYTES = 1_000_000
MAX_EVENTS = 2000
DEDUPE_SECONDS = 7 * 86400


class AmplitudeEmulator(Emulator):
    """``AmplitudeEmulator(api_key=...)``; configure ``user_limit = (events, per_seconds)``,
    ``over_quota`` (user ids), ``silenced`` (device ids), ``max_request_bytes``; inspect
    ``events`` (each distinct event once), ``insert_ids``, ``received`` (every ingested event,
    replays included), ``duplicates``, ``users`` (user_id -> user properties).
    """

    def __init__(self, api_key: str = "amplitude-test-api-key") -> None:
        super().__init__()
        self.api_key = api_key
        self.max_request_bytes = MAX_REQUEST_BYTES
        self.user_limit: tuple[int, float] | None = None
        self.over_quota: set[str] = set()
        self.silenced: set[str] = set()
        self._received: list[dict[str, Any]] = []
        self._unique: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}
        self._users: dict[str, dict[str, Any]] = {}
        self._recent: dict[str, deque[float]] = {}
        self.duplicates = 0

    # -- inspection -----------------------------------------------------------------------------

    @property
    def received(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._received)

    @property
    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            return [event for _, event in self._unique.values()]

    @property
    def insert_ids(self) -> set[str]:
        with self._lock:
            return {insert_id for _, insert_id in self._unique}

    @property
    def users(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {k: dict(v) for k, v in self._users.items()}

    # -- the HTTP side --------------------------------------------------------------------------

    def throttle(self, request: Request, retry_after: int) -> Response:
        return Response(429, {"code": 429, "error": "Too many requests", "throttled_events": []})

    def error(self, status: int, request: Request) -> Response:
        return Response(status, {"code": status, "error": "injected failure"})

    def handle(self, request: Request) -> Response:
        if request.method == "POST" and request.path == "/2/httpapi":
            return self._httpapi(request)
        if request.method == "POST" and request.path == "/identify":
            return self._identify(request)
        return super().handle(request)

    def _httpapi(self, request: Request) -> Response:
        if len(request.body) > self.max_request_bytes:
            return Response(413, {"code": 413, "error": "Payload too large"})
        body = request.json
        if request.json_error or not isinstance(body, dict):
            return _bad("Invalid JSON request body")
        for field in ("api_key", "events"):
            if not body.get(field):
                return _bad("Request missing required field", missing_field=field)
        if body["api_key"] != self.api_key:
            return _bad(f"Invalid API key: {body['api_key']}")
        events = body["events"]
        if not isinstance(events, list):
            return _bad("Invalid event JSON")
        if len(events) > MAX_EVENTS:
            return Response(413, {"code": 413, "error": "Payload too large"})
        options = body.get("options")
        min_length = options.get("min_id_length") if isinstance(options, dict) else None
        rejected = self._validate(events, int(min_length or 5))
        if rejected:
            invalid = "events_with_invalid_fields" in rejected
            error = "Invalid field values on some events" if invalid else "Missing fields"
            return _bad(error, **rejected)
        silenced = self._silenced(events)
        if silenced is not None:
            return Response(400, silenced)
        throttled = self._throttled(events)
        if throttled is not None:
            return Response(429, throttled)
        now = time.time()
        for event in events:
            self._ingest(event, now)
        answer = {"code": 200, "events_ingested": len(events)}
        answer.update(payload_size_bytes=len(request.body), server_upload_time=int(now * 1000))
        return Response(200, answer)

    def _validate(self, events: list[Any], min_id_length: int) -> dict[str, dict[str, list[int]]]:
        rejected: dict[str, dict[str, list[int]]] = {}

        def name(kind: str, field: str, index: int) -> None:
            rejected.setdefault(kind, {}).setdefault(field, []).append(index)

        for index, event in enumerate(events):
            if not isinstance(event, dict):
                name("events_with_invalid_fields", "event", index)
                continue
            if not isinstance(event.get("event_type"), str) or not event["event_type"]:
                name("events_with_missing_fields", "event_type", index)
            at = event.get("time")
            if at is not None and (not isinstance(at, int) or isinstance(at, bool)):
                name("events_with_invalid_fields", "time", index)
            user_id, device_id = event.get("user_id"), event.get("device_id")
            if isinstance(user_id, str) and len(user_id) < min_id_length and not device_id:
                name("events_with_invalid_id_lengths", "user_id", index)
            elif not user_id and not device_id:
                name("events_with_missing_fields", "user_id", index)
        return rejected

    def _silenced(self, events: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The documented SilencedDeviceID 400 when an event's device is silenced."""
        devices = [str(e.get("device_id") or device_of(e.get("user_id"))) for e in events]
        named = [i for i, device in enumerate(devices) if device in self.silenced]
        if not named:
            return None
        return {
            "code": 400,
            "error": "Events silenced for device_id",
            "eps_threshold": 30,
            "exceeded_daily_quota_devices": {},
            "silenced_devices": sorted({devices[i] for i in named}),
            "silenced_events": named,
            "throttled_devices": {},
            "throttled_events": [],
        }

    def _throttled(self, events: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The 429 body when a user in the request is over its limit (nothing is ingested)."""
        now = time.monotonic()
        counts: dict[str, int] = {}
        for event in events:
            user = str(event.get("user_id") or "")
            counts[user] = counts.get(user, 0) + 1
        throttled: dict[str, int] = {}
        if self.user_limit is not None:
            limit, per = self.user_limit
            for user, count in counts.items():
                recent = self._recent.setdefault(user, deque())
                while recent and recent[0] <= now - per:
                    recent.popleft()
                if user and len(recent) + count > limit:
                    throttled[user] = int((len(recent) + count) / per) + 1
        over = {u: 500_001 for u in counts if u in self.over_quota}
        if not throttled and not over:
            for user, count in counts.items():
                self._recent.setdefault(user, deque()).extend([now] * count)
            return None
        named = [
            i for i, e in enumerate(events) if str(e.get("user_id") or "") in {**throttled, **over}
        ]
        return {
            "code": 429,
            "error": "Too many requests for some devices and users",
            "eps_threshold": 30,
            "throttled_devices": {},
            "throttled_users": throttled,
            "exceeded_daily_quota_users": over,
            "exceeded_daily_quota_devices": {},
            "throttled_events": named,
        }

    def _ingest(self, event: dict[str, Any], now: float) -> None:
        self._received.append(event)
        user_id = event.get("user_id")
        device = event.get("device_id") or device_of(user_id)
        insert_id = event.get("insert_id")
        if insert_id:
            seen = self._unique.get((device, insert_id))
            if seen is not None and now - seen[0] < DEDUPE_SECONDS:
                self.duplicates += 1
                return
            self._unique[(device, insert_id)] = (now, event)
        else:
            self._unique[(device, f"server-{len(self._received)}")] = (now, event)
        properties = event.get("user_properties")
        if user_id and isinstance(properties, dict):
            self._apply(str(user_id), properties, event.get("event_type") == "$identify")

    def _apply(self, user_id: str, properties: dict[str, Any], operations: bool) -> None:
        user = self._users.setdefault(user_id, {})
        if not operations or not any(k.startswith("$") for k in properties):
            user.update(properties)
            return
        user.update(properties.get("$set") or {})
        for name, value in (properties.get("$setOnce") or {}).items():
            user.setdefault(name, value)
        for name in properties.get("$unset") or {}:
            user.pop(name, None)

    def _identify(self, request: Request) -> Response:
        form = dict(parse_qsl(request.body.decode(errors="replace")))
        if form.get("api_key") != self.api_key:
            return _bad(f"Invalid API key: {form.get('api_key')}")
        try:
            identifications = json.loads(form.get("identification") or "")
        except ValueError:
            return _bad("Invalid JSON for identification")
        if isinstance(identifications, dict):
            identifications = [identifications]
        for item in identifications if isinstance(identifications, list) else []:
            if isinstance(item, dict) and item.get("user_id"):
                self._apply(str(item["user_id"]), item.get("user_properties") or {}, True)
        return Response(200, b"success", {"Content-Type": "text/plain"})


def device_of(user_id: Any) -> str:
    """The device_id the emulator derives for an event sent without one."""
    return hashlib.sha256(str(user_id).encode()).hexdigest()


def _bad(error: str, **fields: Any) -> Response:
    return Response(400, {"code": 400, "error": error, **fields})
