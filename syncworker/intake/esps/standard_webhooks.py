"""Any sender that signs with Standard Webhooks and posts hygiene events in syncworker's own shape;
also the base of every Standard Webhooks source (Resend too), which keys a lone event on the
message id of the request.

Spec of the signature: https://www.standardwebhooks.com/ (headers webhook-id, webhook-timestamp,
webhook-signature; see ``syncworker.intake.standard_webhooks``). The body is one of

- one event object;
- ``{"events": [event, ...]}`` (an empty list is a valid ping);
- ``{"type": ..., "timestamp": ..., "data": {"events": [...]}}``, the Standard Webhooks envelope
  that syncworker's own webhook destination sends, so one syncworker can feed another.

An event is an object with these fields (others are ignored):

=============  ========  ======================================================================
field          required  meaning
=============  ========  ======================================================================
email          yes       the address
kind           yes       hard_bounce, soft_bounce, blocked, unsubscribe, spam_complaint or
                         resubscribe; any other value is counted as ignored
occurred_at    yes       ISO 8601 (no offset means UTC) or a number of Unix seconds
id             no        the sender's event id (a string, at most 200 characters), the same on
                         every redelivery; ``key`` is read when ``id`` is absent. Without either,
                         the event is keyed by a hash of address, kind, time and message_id
reason         no        text shown in the ledger's history
message_id     no        the sender's id of the message the event is about
list_id        no        the list or group an (un)subscription applies to
smtp_code      no        the receiving server's reply code
=============  ========  ======================================================================
"""

from __future__ import annotations

import dataclasses
from typing import Any

from marshmallow import EXCLUDE, Schema, fields, validate

from syncworker.errors import PayloadInvalid
from syncworker.events import HygieneEvent, Kind, normalize_email
from syncworker.intake.auth.standard_webhooks import HEADER_SETS, StandardWebhooksSignedParser
from syncworker.intake.contract import (
    HeaderMap,
    InboundRequest,
    IsoTime,
    ParseResult,
    Quarantined,
    load_json,
    text,
    validate_items,
)
from syncworker.intake.fields import Address

# kind -> Kind: the sender names syncworker's own kinds
KINDS: dict[str, Kind] = {kind.value: kind for kind in Kind}
# where a kept body or a quarantined item holds the message id that keys its lone event
KEPT_ID = "webhook-id"


class HygieneItem(Schema):
    class Meta:
        unknown = EXCLUDE

    email = Address(required=True)
    occurred_at = IsoTime(unix=True, required=True)
    id = fields.String(load_default=None, validate=validate.Length(1, 200))
    key = fields.String(load_default=None, validate=validate.Length(1, 200))
    reason = fields.Raw(load_default=None)
    message_id = fields.Raw(load_default=None)
    list_id = fields.Raw(load_default=None)
    smtp_code = fields.Raw(load_default=None)


ITEM = HygieneItem()


def _items(doc: Any) -> list[Any]:
    """The events of a body in any of the three shapes."""
    data = doc.get("data") if isinstance(doc, dict) else None
    holder = data if isinstance(data, dict) and "events" in data else doc
    if not isinstance(holder, dict):
        raise PayloadInvalid("expected a JSON object")
    if "events" not in holder:
        return [holder]
    if not isinstance(holder["events"], list):
        raise PayloadInvalid("events must be a JSON array")
    return holder["events"]


class MessageKeyedParser(StandardWebhooksSignedParser):
    """Base of the Standard Webhooks sources (this one and Resend): a single event without an id
    of its own is keyed on the signed message id, which the sender keeps the same on every retry
    of the delivery (the spec's idempotency key).

    That id is in the headers, so it is kept where a replay finds it: a quarantined body keeps it
    (``kept_headers``), and the raw of such an event, or of the request's one item when that was
    quarantined, is ``{"webhook-id": <id>, "event": <the event>}``. A subclass writes
    ``parse_event`` (one event) and ``parse`` (a body).
    """

    def parse_event(self, item: Any) -> ParseResult:
        """One event of a body (the whole body, where it holds one)."""
        raise PayloadInvalid(f"{type(self).__name__} does not implement parse_event()")

    def parse_request(self, request: InboundRequest) -> ParseResult:
        result = self.parse(request.body)
        msg_id = message_id(request.headers)
        return self._keyed(result, msg_id) if msg_id else result

    def parse_item(self, raw: Any) -> ParseResult:
        if isinstance(raw, dict) and raw.keys() == {KEPT_ID, "event"}:
            msg_id = raw[KEPT_ID]
            if not isinstance(msg_id, str) or not msg_id:
                raise PayloadInvalid(f"{KEPT_ID} is not a message id")
            return self._keyed(self.parse_event(raw["event"]), msg_id)
        return self.parse_event(raw)

    def kept_headers(self, headers: HeaderMap) -> dict[str, str]:
        msg_id = message_id(headers)
        return {KEPT_ID: msg_id} if msg_id else {}

    def _keyed(self, result: ParseResult, msg_id: str) -> ParseResult:
        if len(result.events) == 1 and result.events[0].key.startswith(f"{self.esp}:h:"):
            key = f"{self.esp}:{self.name}:msg:{msg_id}"  # scoped: two accounts cannot collide
            event = result.events[0]
            raw = {KEPT_ID: msg_id, "event": event.raw}
            result.events[0] = dataclasses.replace(event, key=key, raw=raw)
        elif not result.events and not result.ignored and len(result.quarantined) == 1:
            bad = result.quarantined[0]
            result.quarantined[0] = Quarantined(bad.reason, {KEPT_ID: msg_id, "event": bad.raw})
        return result


def message_id(headers: HeaderMap) -> str | None:
    """The message id ``verify`` checked: that of the first complete header set. A replayed
    body has its kept id alone, under ``KEPT_ID``."""
    for names in HEADER_SETS:
        msg_id, timestamp, signature = (headers.get(name, "").strip() for name in names)
        if msg_id and timestamp and signature:
            return msg_id
    return headers.get(KEPT_ID, "").strip() or None


class StandardWebhooksParser(MessageKeyedParser):
    esp = "standard_webhooks"
    known_codes = frozenset(KINDS)  # it sends our own kinds: any other is unknown

    def parse(self, body: bytes) -> ParseResult:
        return self._parse_items(_items(load_json(body)))

    def parse_event(self, item: Any) -> ParseResult:
        return self._parse_items([item])

    def _parse_items(self, items: list[Any]) -> ParseResult:
        result = ParseResult()
        for item in items:
            name = item.get("kind") if isinstance(item, dict) else None
            if not isinstance(name, str):
                why = "kind missing" if isinstance(item, dict) else "event is not an object"
                result.quarantined.append(Quarantined(why, item))
            elif name not in KINDS:
                result.ignored[name] += 1
            else:
                for data in validate_items(ITEM, [item], result.quarantined):
                    result.events.append(self._event(item, data, KINDS[name]))
        return result

    def _event(self, item: dict[str, Any], data: dict[str, Any], kind: Kind) -> HygieneEvent:
        email = normalize_email(data["email"])
        message_id = text(data["message_id"])
        event_id = data["id"] or data["key"]
        # ids are the sender's own: scoped to this source, so two senders cannot collide
        scoped = f"{self.name}:{event_id}" if event_id else None
        key = self.event_key(scoped, email, kind, data["occurred_at"], message_id)
        return HygieneEvent(
            key=key,
            source=self.name,
            esp=self.esp,
            email=email,
            kind=kind,
            occurred_at=data["occurred_at"],
            message_id=message_id,
            reason=text(data["reason"]),
            smtp_code=text(data["smtp_code"]),
            list_id=text(data["list_id"]),
            raw=item,
        )
