"""Webhook: each hygiene event once, POSTed in batches to a URL and signed as Standard Webhooks.

One JSON body per batch: ``{"type": "syncworker.hygiene.batch", "timestamp", "data": {"events":
[{"key", "email", "kind", "occurred_at", "source", "esp", "reason", "smtp_code", "message_id",
"list_id", "state": {"suppressed", "reasons", "version", "updated_at"}}]}}``; a batch whose body
would pass MAX_BATCH_BYTES goes as several bodies. Headers ``webhook-id`` (a hash of the body's
event keys: a retry of the same events has the same id), ``webhook-timestamp`` and
``webhook-signature`` (``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` with SECRET, plus
one with SECRET_PREVIOUS while rotating). A 2xx answer means applied; each event's ``key`` lets the
receiver dedupe events that arrive again in a differently composed batch.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any

from syncworker.destinations import (
    ContactChange,
    ContactState,
    Destination,
    DestinationConfig,
    EventPart,
    HttpClient,
    HygieneEvent,
    Mode,
    Options,
    Outcome,
    Rate,
    Secret,
    Url,
    iso_time,
    option,
    send_parts,
    split_events,
)

TYPE = "syncworker.hygiene.batch"
ENVELOPE = 200  # bytes of the body around the events


def _key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_`` + base64 secret (b"": not one)."""
    try:
        return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        return b""


@dataclass(frozen=True)
class WebhookOptions(Options):
    url: Url = option(required=True)
    secret: Secret = option(required=True, check=_key, expect="whsec_ + base64")
    secret_previous: Secret = option(check=_key, expect="whsec_ + base64")
    max_batch_bytes: int = option(1_000_000, min=2_000)


class Webhook(Destination):
    name = "webhook"
    options: WebhookOptions
    batch_size = 100
    rate = Rate(20, per_seconds=1)
    concurrency = 1  # one request at a time: a receiver may apply events in arrival order
    mode = Mode.EVENTS

    def __init__(self, config: DestinationConfig, http: HttpClient) -> None:
        super().__init__(config, http)
        self.url, self.max_bytes = self.options.url, self.options.max_batch_bytes
        secrets = (self.options.secret, self.options.secret_previous)
        self.keys = [_key(secret) for secret in secrets if secret]

    def sync(self, changes: list[ContactChange]) -> list[Outcome]:
        """POST the batch's events (signed); a retry of the same events reuses the webhook-id."""
        parts, outcomes = split_events(
            changes, lambda c, e: [_dump(_event(c, e))], self.max_bytes, ENVELOPE
        )
        return send_parts(parts, outcomes, self._post)

    def _post(self, part: EventPart) -> str:
        items, changes = part.items, part.changes
        newest = max(c.event.occurred_at for c in changes if c.event is not None)
        head = _dump({"type": TYPE, "timestamp": iso_time(newest)})[:-1]
        body = head + b',"data":{"events":[' + b",".join(items) + b"]}}"
        keys = sorted(c.key for c in changes)
        webhook_id = "msg_" + hashlib.sha256("\x1f".join(keys).encode()).hexdigest()[:32]
        timestamp = str(int(time.time()))
        signed = f"{webhook_id}.{timestamp}.".encode() + body
        signatures = [
            "v1," + base64.b64encode(hmac.new(k, signed, hashlib.sha256).digest()).decode()
            for k in self.keys
        ]
        headers = {
            "Content-Type": "application/json",
            "webhook-id": webhook_id,
            "webhook-timestamp": timestamp,
            "webhook-signature": " ".join(signatures),
        }
        self.http.post(self.url, data=body, headers=headers)
        return webhook_id


def _event(change: ContactChange, event: HygieneEvent) -> dict[str, Any]:
    return {
        "key": change.key,
        "email": change.email,
        "kind": event.kind.value,
        "occurred_at": iso_time(event.occurred_at),
        "source": event.source,
        "esp": event.esp,
        "reason": event.reason,
        "smtp_code": event.smtp_code,
        "message_id": event.message_id,
        "list_id": event.list_id,
        "state": _state(change.state),
    }


def _state(state: ContactState) -> dict[str, Any]:
    return {
        "suppressed": state.suppressed,
        "reasons": {
            str(name): {"at": iso_time(r.at), "source": r.source, "detail": r.detail}
            for name, r in sorted(state.reasons.items())
        },
        "version": state.version,
        "updated_at": iso_time(state.updated_at),
    }


def _dump(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
