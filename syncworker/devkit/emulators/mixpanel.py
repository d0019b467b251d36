"""Mixpanel ingestion emulator: ``/import`` (strict validation, partial success) and ``/engage``.

As Mixpanel documents (https://docs.mixpanel.com/reference/import-events and the 400, 413 and 429
pages under https://docs.mixpanel.com/troubleshooting/errors): ``/import`` takes a JSON array or
NDJSON, optionally gzip-compressed, with HTTP Basic auth — a service account plus ``project_id``,
or the project's API secret or token as user with an empty password — and answers 401 ``Invalid
credentials`` otherwise. Each event needs ``event`` and ``properties.time`` (s or ms, from 1971 to
one hour ahead), ``distinct_id`` (not a placeholder such as ``null``) and ``$insert_id`` (≤ 36 of
``[A-Za-z0-9-]``), fewer than 255 properties, under 1 MB. Valid events are ingested even when
others fail: then the answer is 400 with ``num_records_imported`` and ``failed_records``. Over
10 MB (uncompressed) is 413 ``request exceeds max limit of N bytes``. The 429 body is Mixpanel's,
without Retry-After (none is documented). Events repeating (event, time, distinct_id,
$insert_id) count in ``duplicates`` and are still reported imported (Mixpanel dedupes at query
time). ``/engage`` applies ``$set``/``$set_once``/``$unset`` (creating profiles, as Mixpanel does)
and answers 200 even when it rejects the batch: ``0``, or ``{"status": 0, "error"}`` with
``verbose=1``. Undocumented choices: a batch with any invalid update is rejected whole; more than
2,000 events is a 400 without ``failed_records``; the oversized-event message is ours.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import json
import re
import time
from typing import Any

from syncworker.devkit.emulators.base import Emulator, Request, Response

MAX_REQUEST_BYTES = 10 * 1024 * 1024
MAX_EVENT_BYTES = 1024 * 1024
MAX_EVENTS = 2000
INSERT_ID = re.compile(r"^[A-Za-z0-9-]{1,36}$")
PLACEHOLDERS = frozenset(
    ["00000000-0000-0000-0000-000000000000", "anon", "anonymous", "nil", "none", "null", "n/a"]
    + ["na", "undefined", "unknown", "<nil>", "0", "-1", "true", "false", "[]", "{}"]
)
OPERATIONS = ("$set", "$set_once", "$add", "$union", "$append", "$remove", "$unset", "$delete")


class MixpanelEmulator(Emulator):
    """``MixpanelEmulator(token=..., api_secret=..., service_account=(user, secret),
    project_id=...)``; ``seed_profile(distinct_id, **properties)``; inspect ``events`` (each
    distinct event once), ``insert_ids``, ``received`` (every event, replays included),
    ``duplicates``, ``profiles`` (distinct_id -> properties), ``engage_updates``.
    ``max_request_bytes`` and ``max_event_bytes`` lower the size caps; ``now`` is the clock the
    time check uses;
    ``engage_error`` (a message) makes ``/engage`` reject every batch with it.
    """

    def __init__(
        self,
        token: str = "mixpanel-test-token",
        *,
        api_secret: str = "mixpanel-test-secret",
        service_account: tuple[str, str] = ("sa.syncworker", "sa-secret"),
        project_id: str = "4242",
    ) -> None:
        super().__init__()
        self.token = token
        self.api_secret = api_secret
        self.service_account = service_account
        self.project_id = project_id
        self.max_request_bytes = MAX_REQUEST_BYTES
        self.max_event_bytes = MAX_EVENT_BYTES
        self.send_retry_after = False  # Mixpanel documents no Retry-After on its 429
        self.now = time.time
        self.engage_error: str | None = None
        self._received: list[dict[str, Any]] = []
        self._unique: dict[tuple[Any, ...], dict[str, Any]] = {}
        self._profiles: dict[str, dict[str, Any]] = {}
        self._updates: list[dict[str, Any]] = []
        self.duplicates = 0

    # -- seeding and inspection -----------------------------------------------------------------

    def seed_profile(self, distinct_id: str, **properties: Any) -> None:
        with self._lock:
            self._profiles[distinct_id] = dict(properties)

    @property
    def received(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._received)

    @property
    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._unique.values())

    @property
    def insert_ids(self) -> set[str]:
        return {e["properties"]["$insert_id"] for e in self.events}

    @property
    def profiles(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {k: dict(v) for k, v in self._profiles.items()}

    @property
    def engage_updates(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._updates)

    # -- the HTTP side --------------------------------------------------------------------------

    def authorized(self, request: Request) -> bool:
        if request.path != "/import":
            return True  # /engage carries the project token in each update
        header = request.headers.get("authorization", "")
        try:
            decoded = base64.b64decode(header.removeprefix("Basic "), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, _, password = decoded.partition(":")
        if "project_id" in request.query:
            return (user, password) == self.service_account and (
                request.query["project_id"] == self.project_id
            )
        return (
            header.startswith("Basic ")
            and password == ""
            and user
            in (
                self.api_secret,
                self.token,
            )
        )

    def unauthorized(self, request: Request) -> Response:
        return Response(
            401, {"code": 401, "error": "Invalid credentials", "status": "Unauthorized"}
        )

    def throttle(self, request: Request, retry_after: int) -> Response:
        error = "Project exceeded rate limits. Please retry the request with exponential backoff."
        return Response(429, {"code": 429, "error": error, "status": "Too Many Requests"})

    def error(self, status: int, request: Request) -> Response:
        return Response(status, {"code": status, "error": "injected failure", "status": "Error"})

    def handle(self, request: Request) -> Response:
        if request.method == "POST" and request.path == "/import":
            return self._import(request)
        if request.method == "POST" and request.path == "/engage":
            return self._engage(request)
        return super().handle(request)

    def _import(self, request: Request) -> Response:
        body = request.body
        if request.headers.get("content-encoding") == "gzip":
            try:
                body = gzip.decompress(body)
            except (OSError, EOFError):
                return _bad("request body is not valid gzip")
        if len(body) > self.max_request_bytes:
            error = f"request exceeds max limit of {self.max_request_bytes} bytes"
            body_413 = {"code": 413, "error": error, "status": "Request Entity Too Large"}
            return Response(413, body_413)
        try:
            text = body.decode()
            parsed = json.loads(text) if text.lstrip().startswith("[") else _ndjson(text)
        except ValueError:
            return _bad("unable to parse request body as JSON")
        if not isinstance(parsed, list) or not parsed:
            return _bad("request body must be a non-empty array of events")
        if len(parsed) > MAX_EVENTS:
            return _bad(f"too many events in the request: max {MAX_EVENTS}")
        failed = []
        imported = 0
        for index, item in enumerate(parsed):
            problem = self._invalid(item)
            if problem is not None:
                field, message = problem
                props = item.get("properties") if isinstance(item, dict) else None
                insert_id = props.get("$insert_id") if isinstance(props, dict) else None
                failed.append(
                    {"index": index, "insert_id": insert_id, "field": field, "message": message}
                )
                continue
            imported += 1
            self._received.append(item)
            props = item["properties"]
            key = (item["event"], props["time"], str(props["distinct_id"]), props["$insert_id"])
            if key in self._unique:
                self.duplicates += 1
            else:
                self._unique[key] = item
        if failed and request.query.get("strict") == "1":
            return Response(
                400,
                {
                    "code": 400,
                    "error": "some data points in the request failed validation",
                    "status": "Bad Request",
                    "num_records_imported": imported,
                    "failed_records": failed,
                },
            )
        return Response(200, {"code": 200, "num_records_imported": imported, "status": "OK"})

    def _invalid(self, item: Any) -> tuple[str, str] | None:
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("event"), str)
            or not item["event"]
        ):
            return "event", "'event' must be a non-empty string"
        props = item.get("properties")
        if not isinstance(props, dict):
            return "properties", "'properties' must be an object"
        if len(props) >= 255:
            return "properties", "an event must have fewer than 255 properties"
        if len(json.dumps(item, separators=(",", ":")).encode()) > self.max_event_bytes:
            return "event", f"event exceeds max size of {self.max_event_bytes} bytes"
        at = props.get("time")
        if not isinstance(at, int | float) or isinstance(at, bool):
            return "properties.time", "'properties.time' is invalid: must be seconds since epoch"
        seconds = at / 1000 if at > 1e11 else at
        if seconds < 31_536_000 or seconds > self.now() + 3600:
            return "properties.time", "'properties.time' is invalid: before 1971 or in the future"
        distinct_id = props.get("distinct_id")
        if not isinstance(distinct_id, str | int) or str(distinct_id).lower() in PLACEHOLDERS:
            return "properties.distinct_id", "'properties.distinct_id' is invalid"
        insert_id = props.get("$insert_id")
        if not isinstance(insert_id, str) or not INSERT_ID.match(insert_id):
            return "properties.$insert_id", "'$insert_id' must be ≤ 36 of [A-Za-z0-9-]"
        if insert_id.lower() in PLACEHOLDERS:
            return "properties.$insert_id", "'$insert_id' is invalid"
        return None

    def _engage(self, request: Request) -> Response:
        verbose = request.query.get("verbose") == "1"
        updates = request.json
        if isinstance(updates, dict):
            updates = [updates]
        problem = self.engage_error
        if problem is not None:
            pass
        elif request.json_error or not isinstance(updates, list) or not updates:
            problem = "data, missing or empty"
        else:
            for update in updates:
                problem = self._invalid_update(update)
                if problem:
                    break
        if problem is not None:
            body: Any = {"status": 0, "error": problem} if verbose else b"0"
            return Response(
                200, body, {"Content-Type": "application/json" if verbose else "text/plain"}
            )
        for update in updates:
            self._updates.append(update)
            profile = self._profiles.setdefault(str(update["$distinct_id"]), {})
            if "$set" in update:
                profile.update(update["$set"])
            for name, value in (update.get("$set_once") or {}).items():
                profile.setdefault(name, value)
            for name in update.get("$unset") or []:
                profile.pop(name, None)
        if verbose:
            return Response(200, {"status": 1, "error": None})
        return Response(200, b"1", {"Content-Type": "text/plain"})

    def _invalid_update(self, update: Any) -> str | None:
        if not isinstance(update, dict):
            return "each update must be an object"
        if update.get("$token") != self.token:
            return "$token, invalid or missing"
        if not isinstance(update.get("$distinct_id"), str | int) or update["$distinct_id"] == "":
            return "$distinct_id, missing or empty"
        operations = [op for op in OPERATIONS if op in update]
        if len(operations) != 1:
            return "exactly one operation per update"
        if operations[0] in ("$set", "$set_once") and not isinstance(update[operations[0]], dict):
            return f"{operations[0]} must be an object"
        return None


def _ndjson(text: str) -> list[Any]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _bad(message: str) -> Response:
    return Response(400, {"code": 400, "error": message, "status": "Bad Request"})
