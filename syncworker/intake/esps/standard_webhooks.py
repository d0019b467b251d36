"""Any sender that signs with Standard Webhooks and posts hygiene events in syncworker's own shape.

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

from typing import Any

from marshmallow import EXCLUDE, Schema, fields, validate

from syncworker.errors import PayloadInvalid
from syncworker.events import HygieneEvent, Kind, normalize_email
from syncworker.intake.base import (
    IsoTime,
    ParseResult,
    Quarantined,
    load_json,
    text,
    validate_items,
)
from syncworker.intake.standard_webhooks import StandardWebhooksSignedParser

# kind -> Kind: the sender names syncworker's own kinds
KINDS: dict[str, Kind] = {kind.value: kind for kind in Kind}


class HygieneItem(Schema):
    class Meta:
        unknown = EXCLUDE

    email = fields.Email(required=True)
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


class StandardWebhooksParser(StandardWebhooksSignedParser):
    esp = "standard_webhooks"

    def parse(self, body: bytes) -> ParseResult:
        result = ParseResult()
        for item in _items(load_json(body)):
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
