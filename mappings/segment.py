"""Segment: each hygiene event once, as a ``track`` plus an ``identify`` carrying hygiene traits.

``POST /v1/batch`` (HTTP Basic, write key as user). Track names follow Segment's email spec where it
has one (Unsubscribed, Email Bounced, Email Marked as Spam); soft bounces, blocks and resubscribes
get names of their own so that nothing downstream mistakes them for a hard bounce. ``messageId``s
derive from the event key (and, for the identify, the state version), so a retried batch is
deduplicated by Segment. A batch is split when its body would pass MAX_BATCH_BYTES (Segment
rejects requests over 500 KB and events over 32 KB, hence the capped free-text fields).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from syncworker.destinations import (
    EVENT_NAMES,
    USER_ID_RULES,
    ContactChange,
    Destination,
    DestinationConfig,
    EventPart,
    HttpClient,
    HygieneEvent,
    Kind,
    Mode,
    Options,
    Outcome,
    Rate,
    Secret,
    compact_json,
    hygiene_traits,
    iso_time,
    option,
    send_parts,
    split_events,
    user_id,
    valid_user_id_rule,
)

TEXT_CAP = 1000  # characters of ESP-supplied text per field: keeps every message far under 32 KB
ENVELOPE = 200  # bytes of the batch wrapper around the messages


def _user_id_rule(rule: str) -> bool:
    return rule == "anonymous" or valid_user_id_rule(rule)


@dataclass(frozen=True)
class SegmentOptions(Options):
    write_key: Secret = option(required=True)
    user_id: str = option("email", check=_user_id_rule, expect=USER_ID_RULES + " or anonymous")
    max_batch_bytes: int = option(450_000, min=4_000, max=500_000)


class Segment(Destination):
    name = "segment"
    options: SegmentOptions
    base_url = "https://api.segment.io"
    batch_size = 100  # 200 messages of ~1 KB; a batch with long ESP texts is split by size
    rate = Rate(50, per_seconds=1)
    concurrency = 4  # Segment dedupes on messageId and orders by timestamp
    mode = Mode.EVENTS

    def __init__(self, config: DestinationConfig, http: HttpClient) -> None:
        super().__init__(config, http)
        self.auth = (self.options.write_key, "")
        self.user_id = self.options.user_id
        self.max_bytes = self.options.max_batch_bytes

    def sync(self, changes: list[ContactChange]) -> list[Outcome]:
        """Send each change's event once; a retry reuses the messageIds, so Segment dedupes it."""

        def encode(change: ContactChange, event: HygieneEvent) -> list[bytes]:
            return [compact_json(m) for m in self._messages(change, event)]

        parts, outcomes = split_events(changes, encode, self.max_bytes, ENVELOPE)
        return send_parts(parts, outcomes, self._post)

    def _post(self, part: EventPart) -> str:
        lines = part.items
        context = compact_json({"library": {"name": "syncworker"}})
        body = b'{"batch":[' + b",".join(lines) + b'],"context":' + context + b"}"
        headers = {"Content-Type": "application/json"}
        self.http.post("/v1/batch", data=body, auth=self.auth, headers=headers)
        return f"{len(lines)} messages"

    def _messages(self, change: ContactChange, event: HygieneEvent) -> list[dict[str, Any]]:
        who = self._identity(change.email)
        state = change.state
        track = {
            "type": "track",
            "event": EVENT_NAMES.get(event.kind, f"Email {event.kind.value}"),
            **who,
            "messageId": _message_id(self.name, change.key, "track"),
            "timestamp": iso_time(event.occurred_at),
            "properties": {
                "email": change.email,
                "kind": event.kind.value,
                "bounce_type": _bounce_type(event.kind),
                "source": event.source,
                "esp": event.esp,
                "reason": _cap(event.reason),
                "smtp_code": _cap(event.smtp_code),
                "email_id": _cap(event.message_id),
                "list_id": _cap(event.list_id),
                "event_key": change.key,
                "suppressed": state.suppressed,
            },
            "context": {"traits": {"email": change.email}},
        }
        identify = {
            "type": "identify",
            **who,
            "messageId": _message_id(self.name, change.key, f"identify:{state.version}"),
            "timestamp": iso_time(state.updated_at or event.occurred_at),
            "traits": {"email": change.email, **hygiene_traits(state)},
        }
        return [track, identify]

    def _identity(self, email: str) -> dict[str, str]:
        if self.user_id == "anonymous":
            digest = hashlib.sha256(f"syncworker:{email.lower()}".encode()).hexdigest()
            return {"anonymousId": digest[:32]}
        return {"userId": user_id(self.user_id, email)}


def _bounce_type(kind: Kind) -> str | None:
    return {Kind.HARD_BOUNCE: "hard", Kind.SOFT_BOUNCE: "soft", Kind.BLOCKED: "block"}.get(kind)


def _message_id(destination: str, key: str, part: str) -> str:
    digest = hashlib.sha256(f"{destination}\x1f{key}\x1f{part}".encode()).hexdigest()
    return f"syncworker-{digest[:40]}"


def _cap(text: str | None) -> str | None:
    return None if text is None else text[:TEXT_CAP]
