"""A Standard Webhooks receiver: verifies signatures, dedupes on webhook-id, records deliveries.

Verification follows the spec: ``webhook-signature`` holds space-separated ``v1,<base64>`` entries,
each an HMAC-SHA256 of ``f"{webhook-id}.{webhook-timestamp}.{raw body}"`` keyed with the base64
part of a ``whsec_`` secret; one match with any configured secret is enough (so a receiver keeps
accepting while the sender rotates). A missing header, a bad signature or a timestamp outside the
tolerance is a 401. A delivery whose webhook-id was already accepted is answered 200, counted in
``duplicates`` and not recorded again.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from syncworker.devkit.emulators.base import Emulator, Request, Response


def new_secret() -> str:
    """A fresh Standard Webhooks secret, ``whsec_`` + base64 of 24 random bytes."""
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


def sign(secret: str, webhook_id: str, timestamp: int | str, body: bytes) -> str:
    """The ``v1,<base64>`` signature of one delivery (the receiver's own implementation)."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    content = f"{webhook_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()


@dataclass(frozen=True)
class Delivery:
    webhook_id: str
    timestamp: int
    body: bytes
    payload: Any


class WebhookReceiver(Emulator):
    """``WebhookReceiver(secret_or_secrets)``; POST to ``endpoint``; inspect ``deliveries``,
    ``events`` (each delivery's ``data["events"]`` flattened), ``webhook_ids``, ``duplicates``,
    ``rejected`` (401s for bad signatures). A delivery holding an event for an address in
    ``refuse`` is answered 400 whole, as a receiver that validates each event does.
    """

    path = "/hooks/syncworker"

    def __init__(self, secrets: str | Sequence[str], *, tolerance_s: float = 300.0) -> None:
        super().__init__()
        self.secrets = [secrets] if isinstance(secrets, str) else list(secrets)
        self.tolerance_s = tolerance_s
        self._deliveries: dict[str, Delivery] = {}
        self.duplicates = 0
        self.rejected = 0
        self.refuse: set[str] = set()

    @property
    def endpoint(self) -> str:
        return self.url + self.path

    @property
    def deliveries(self) -> list[Delivery]:
        with self._lock:
            return list(self._deliveries.values())

    @property
    def webhook_ids(self) -> set[str]:
        with self._lock:
            return set(self._deliveries)

    @property
    def events(self) -> list[dict[str, Any]]:
        return [e for d in self.deliveries for e in (d.payload.get("data") or {}).get("events", [])]

    def authorized(self, request: Request) -> bool:
        if self.verify(request):
            return True
        self.rejected += 1
        return False

    def verify(self, request: Request) -> bool:
        webhook_id = request.headers.get("webhook-id", "")
        timestamp = request.headers.get("webhook-timestamp", "")
        signatures = request.headers.get("webhook-signature", "").split()
        if not webhook_id or not timestamp.isdigit() or not signatures:
            return False
        if abs(time.time() - int(timestamp)) > self.tolerance_s:
            return False
        expected = {sign(s, webhook_id, timestamp, request.body) for s in self.secrets}
        return any(hmac.compare_digest(got, want) for got in signatures for want in expected)

    def unauthorized(self, request: Request) -> Response:
        return Response(401, {"error": "signature_invalid"})

    def error(self, status: int, request: Request) -> Response:
        return Response(status, {"error": "unavailable (injected)"})

    def handle(self, request: Request) -> Response:
        if request.method != "POST" or request.path != self.path:
            return super().handle(request)
        if request.json_error or not isinstance(request.json, dict):
            return Response(400, {"error": "body must be a JSON object"})
        events = (request.json.get("data") or {}).get("events") or []
        if any(str(e.get("email", "")).lower() in self.refuse for e in events):
            return Response(400, {"error": "an event names an invalid address"})
        webhook_id = request.headers["webhook-id"]
        if webhook_id in self._deliveries:
            self.duplicates += 1
        else:
            timestamp = int(request.headers["webhook-timestamp"])
            delivery = Delivery(webhook_id, timestamp, request.body, request.json)
            self._deliveries[webhook_id] = delivery
        return Response(200, {"ok": True})
