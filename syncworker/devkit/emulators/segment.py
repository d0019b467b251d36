"""Segment HTTP Tracking API emulator: /v1/batch, /v1/track, /v1/identify with messageId dedupe.

As Segment documents: HTTP Basic with the write key as user (or ``writeKey`` in the body); 200 for
every well-formed request, even for messages Segment then drops (no userId/anonymousId, a track
without ``event``: kept in ``dropped``); 400 for malformed JSON, a request over 500 KB or a message
over 32 KB; 429 with Retry-After and X-RateLimit-Reset. A message whose messageId was already seen
is counted in ``duplicates`` and not stored again, so replays are observable.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from typing import Any

from syncworker.devkit.emulators.base import Emulator, Request, Response

MAX_REQUEST_BYTES = 500 * 1024
MAX_MESSAGE_BYTES = 32 * 1024
TYPES = ("identify", "track", "page", "screen", "group", "alias")


class SegmentEmulator(Emulator):
    """``SegmentEmulator(write_key=...)``; inspect ``messages``, ``message_ids``, ``tracks``,
    ``identifies``, ``duplicates``, ``received`` (every message, replays included), ``dropped``.

    Segment's answer to an unknown write key is not documented; this emulator answers 401 so a
    wrong key is visible in tests (``strict_auth=False`` answers 200 instead).
    """

    def __init__(self, write_key: str = "segment-test-write-key", *, strict_auth: bool = True):
        super().__init__()
        self.write_key = write_key
        self.strict_auth = strict_auth
        self.max_request_bytes = MAX_REQUEST_BYTES
        self.max_message_bytes = MAX_MESSAGE_BYTES
        self._received: list[dict[str, Any]] = []
        self._unique: dict[str, dict[str, Any]] = {}
        self._dropped: list[dict[str, Any]] = []
        self.duplicates = 0

    # -- inspection -----------------------------------------------------------------------------

    @property
    def received(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._received)

    @property
    def messages(self) -> list[dict[str, Any]]:
        """Each distinct message (by messageId) once, in arrival order."""
        with self._lock:
            return list(self._unique.values())

    @property
    def message_ids(self) -> set[str]:
        with self._lock:
            return set(self._unique)

    @property
    def tracks(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("type") == "track"]

    @property
    def identifies(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("type") == "identify"]

    @property
    def dropped(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._dropped)

    # -- the HTTP side --------------------------------------------------------------------------

    def authorized(self, request: Request) -> bool:
        if not self.strict_auth:
            return True
        header = request.headers.get("authorization", "")
        if header.startswith("Basic "):
            try:
                user = base64.b64decode(header[6:], validate=True).decode().partition(":")[0]
            except (binascii.Error, UnicodeDecodeError):
                return False
            return user == self.write_key
        body = request.json if isinstance(request.json, dict) else {}
        return body.get("writeKey") == self.write_key

    def unauthorized(self, request: Request) -> Response:
        return Response(401, {"success": False, "message": "invalid write key"})

    def throttle(self, request: Request, retry_after: int) -> Response:
        headers = {"X-RateLimit-Reset": str(retry_after)}
        return Response(429, {"success": False, "message": "too many requests"}, headers)

    def error(self, status: int, request: Request) -> Response:
        return Response(status, {"success": False, "message": "internal error (injected)"})

    def handle(self, request: Request) -> Response:
        if request.method != "POST" or not request.path.startswith("/v1/"):
            return super().handle(request)
        kind = request.path.removeprefix("/v1/")
        if len(request.body) > self.max_request_bytes:
            return _bad(f"request over {self.max_request_bytes} bytes")
        if request.json_error or not isinstance(request.json, dict):
            return _bad("invalid JSON")
        if kind == "batch":
            messages = request.json.get("batch")
            if not isinstance(messages, list):
                return _bad("batch must be a list")
        elif kind in TYPES:
            messages = [{**request.json, "type": kind}]
        else:
            return super().handle(request)
        for message in messages:
            if not isinstance(message, dict):
                return _bad("each message must be an object")
            if len(json.dumps(message, separators=(",", ":"))) > self.max_message_bytes:
                return _bad(f"message over {self.max_message_bytes} bytes")
        for message in messages:
            self._accept(message)
        return Response(200, {"success": True})

    def _accept(self, message: dict[str, Any]) -> None:
        self._received.append(message)
        has_id = bool(message.get("userId") or message.get("anonymousId"))
        if not has_id or (message.get("type") == "track" and not message.get("event")):
            self._dropped.append(message)
            return
        message_id = str(message.get("messageId") or f"api-{uuid.uuid4()}")
        if message_id in self._unique:
            self.duplicates += 1
            return
        self._unique[message_id] = message


def _bad(message: str) -> Response:
    return Response(400, {"success": False, "message": message})
