"""MailerSend activity webhooks: one JSON object per request, HMAC-SHA256 of the body in Signature.

Docs: https://developers.mailersend.com/api/v1/webhooks.html (events, payload, security) and
https://www.mailersend.com/whats-new/webhooks-v2 (the lighter 2.0 payload, the default since 2025).
Both versions are read: 2.0 has the recipient in ``data.email`` (a string) and the message in
``data.message_id``; 1.0 nests them as ``data.email.recipient.email`` and
``data.email.message.id`` and puts the reason in ``data.morph``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Any

import orjson
from marshmallow import EXCLUDE, Schema, ValidationError, fields, pre_load, validates_schema

from syncworker.errors import PayloadInvalid, SignatureInvalid
from syncworker.events import HygieneEvent, Kind, normalize_email
from syncworker.intake.contract import (
    EspParser,
    InboundRequest,
    IsoTime,
    ParseResult,
    Quarantined,
    equal,
    load_json,
    text,
    validate_items,
)
from syncworker.intake.fields import Address

# type -> Kind; hard vs soft is MailerSend's own split into two event types
KINDS: dict[str, Kind] = {
    "activity.hard_bounced": Kind.HARD_BOUNCE,
    "activity.soft_bounced": Kind.SOFT_BOUNCE,
    "activity.spam_complaint": Kind.SPAM_COMPLAINT,
    "activity.unsubscribed": Kind.UNSUBSCRIBE,
}
# activity.deferred is a delay, not a bounce; sent, delivered, opened(_unique), clicked(_unique),
# survey_*, account events and the webhook.test ping are ignored.
SIGNATURE_HEADER = "Signature"
# MailerSend signs the webhook.test ping it sends when a webhook is saved with this fixed secret,
# published in its docs; it authenticates that ping only, which yields no event.
TEST_SECRET = "test_Am3L1GuOIc4blLUuHqAPxxwkZaJyEk8G"
TEST_TYPE = "webhook.test"
# reason fields of data.meta (2.0) and data.morph (1.0), first one present wins
REASONS = ("bounce_reason", "reject_reason", "suppression_reason", "unsubscribe_reason")
REASONS_V1 = ("readable_reason", "reason")
_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")


def _dig(value: Any, *keys: str) -> Any:
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value


class MailerSendActivity(Schema):
    class Meta:
        unknown = EXCLUDE

    id = fields.Raw(load_default=None)
    email = Address(required=True)
    created_at = IsoTime(load_default=None)  # 1.0 only: the activity's own time
    message_id = fields.Raw(load_default=None)
    meta = fields.Raw(load_default=None)
    morph = fields.Raw(load_default=None)

    @pre_load
    def _read_version_1(self, data: Any, **kwargs: Any) -> Any:
        """1.0 nests the recipient and message under ``email``; read them where 2.0 has them."""
        if isinstance(data, dict) and isinstance(data.get("email"), dict):
            nested = data["email"]
            moved = {"email": _dig(nested, "recipient", "email")}
            return {**data, **moved, "message_id": _dig(nested, "message", "id")}
        if isinstance(data, dict) and "email" not in data and "recipient" in data:
            return {**data, "email": data["recipient"]}
        return data


class MailerSendWebhook(Schema):
    class Meta:
        unknown = EXCLUDE

    created_at = IsoTime(load_default=None)
    data = fields.Nested(MailerSendActivity, required=True)

    @validates_schema
    def _has_a_time(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data["created_at"] is None and data["data"]["created_at"] is None:
            raise ValidationError("Missing data.created_at and created_at.", "created_at")


WEBHOOK = MailerSendWebhook()


def _reason(activity: dict[str, Any]) -> str | None:
    for source, keys in ((activity["meta"], REASONS), (activity["morph"], REASONS_V1)):
        for key in keys:
            if found := text(_dig(source, key)):
                return found
    return None


def _is_test_ping(body: bytes) -> bool:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(doc, dict) and doc.get("type") == TEST_TYPE


class MailerSendParser(EspParser):
    esp = "mailersend"
    known_codes = frozenset(
        {*KINDS, TEST_TYPE, "activity.deferred", "activity.sent", "activity.delivered"}
        | {"activity.opened", "activity.opened_unique", "activity.clicked"}
        | {"activity.clicked_unique", "activity.survey_opened", "activity.survey_submitted"}
    )
    settings = ("SIGNING_SECRET",)
    verification = "hex HMAC-SHA256 of the raw body with the signing secret (Signature header)"

    def verify(self, request: InboundRequest) -> None:
        given = request.headers.get(SIGNATURE_HEADER, "").strip().lower()
        if not given:
            raise SignatureInvalid("Signature header missing")
        if not _HEX_SHA256.fullmatch(given):
            raise SignatureInvalid("Signature header is not a hex HMAC-SHA256")
        ok = False
        for secret in self.secrets("SIGNING_SECRET"):
            expected = hmac.new(secret.encode(), request.body, hashlib.sha256).hexdigest()
            ok |= equal(expected, given)
        if ok:
            return
        test = hmac.new(TEST_SECRET.encode(), request.body, hashlib.sha256).hexdigest()
        if equal(test, given) and _is_test_ping(request.body):
            return
        raise SignatureInvalid("signature does not match any configured signing secret")

    def parse(self, body: bytes) -> ParseResult:
        return self.parse_item(load_json(body))

    def parse_item(self, raw: Any) -> ParseResult:
        """The body is the one event, so a quarantined item is parsed like a body."""
        doc = raw
        if not isinstance(doc, dict):
            raise PayloadInvalid("expected one JSON object")
        result = ParseResult()
        code = doc.get("type")
        if not isinstance(code, str):
            result.quarantined.append(Quarantined("event type missing", doc))
        elif code not in KINDS:
            result.ignored[code] += 1
        else:
            for data in validate_items(WEBHOOK, [doc], result.quarantined):
                result.events.append(self._event(doc, data, KINDS[code]))
        return result

    def _event(self, doc: dict[str, Any], data: dict[str, Any], kind: Kind) -> HygieneEvent:
        activity: dict[str, Any] = data["data"]
        email = normalize_email(activity["email"])
        occurred_at: float = (
            activity["created_at"] if activity["created_at"] is not None else data["created_at"]
        )
        message_id = text(activity["message_id"])
        activity_id = text(activity["id"])
        return HygieneEvent(
            # data.id is the activity's own id, the same in every retry of the webhook
            key=self.event_key(activity_id, email, kind, occurred_at, message_id),
            source=self.name,
            esp=self.esp,
            email=email,
            kind=kind,
            occurred_at=occurred_at,
            message_id=message_id,
            reason=_reason(activity),
            smtp_code=text(_dig(activity["meta"], "bounce_code")),
            raw=doc,
        )
