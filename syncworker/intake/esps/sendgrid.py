"""SendGrid Event Webhook: batched JSON arrays, verified with the Signed Event Webhook (ECDSA).

Docs: https://www.twilio.com/docs/sendgrid/for-developers/tracking-events/event and
https://www.twilio.com/docs/sendgrid/for-developers/tracking-events/getting-started-event-webhook-security-features
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from marshmallow import EXCLUDE, Schema, fields

from syncworker.errors import PayloadInvalid, SignatureInvalid
from syncworker.events import HygieneEvent, Kind, content_key
from syncworker.intake.contract import (
    EspParser,
    InboundRequest,
    ParseResult,
    UnixTime,
    hygiene_items,
    load_json,
    text,
)
from syncworker.intake.fields import Address

if TYPE_CHECKING:
    from syncworker.config import SourceConfig

# event -> Kind for events whose kind needs no second field
KINDS: dict[str, Kind] = {
    "spamreport": Kind.SPAM_COMPLAINT,
    "unsubscribe": Kind.UNSUBSCRIBE,
    "group_unsubscribe": Kind.UNSUBSCRIBE,  # one suppression group (asm_group_id) only
    "group_resubscribe": Kind.RESUBSCRIBE,
}
# bounce events: `type` -> Kind
BOUNCE_TYPES: dict[str, Kind] = {
    "bounce": Kind.HARD_BOUNCE,
    "blocked": Kind.BLOCKED,
    # SendGrid gave up after 72 h of deferrals: the mailbox was unreachable, not known bad
    "expired": Kind.SOFT_BOUNCE,
}
# dropped events: `reason` (lowercased) -> Kind. Other reasons ("Spam Content", "Invalid SMTPAPI
# header", "Recipient List over Package Quota") are about the message or account, not the address,
# so they are ignored.
DROP_REASONS: dict[str, Kind] = {
    "bounced address": Kind.HARD_BOUNCE,
    "invalid": Kind.HARD_BOUNCE,
    "unsubscribed address": Kind.UNSUBSCRIBE,
    "spam reporting address": Kind.SPAM_COMPLAINT,
}
# `deferred` is a temporary delay, not a bounce; processed/delivered/open/click are engagement
SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"


class SendGridEvent(Schema):
    class Meta:
        unknown = EXCLUDE

    email = Address(required=True)
    timestamp = UnixTime()
    sg_message_id = fields.Raw(load_default=None)


class SendGridBounce(SendGridEvent):
    type = fields.String(load_default=None)
    reason = fields.String(load_default=None)
    status = fields.Raw(load_default=None)


class SendGridGroupEvent(SendGridEvent):
    asm_group_id = fields.Raw(load_default=None)


# events without a schema are not hygiene events, or ones SendGrid added since: they are ignored
SCHEMAS: dict[str, Schema] = {code: SendGridEvent() for code in KINDS}
SCHEMAS.update(
    bounce=SendGridBounce(),
    dropped=SendGridBounce(),
    group_unsubscribe=SendGridGroupEvent(),
    group_resubscribe=SendGridGroupEvent(),
)


def _kind(code: str, data: dict[str, Any]) -> Kind | None:
    if code == "bounce":  # `type` is always sent today; without it, the event name is all we have
        return BOUNCE_TYPES.get((data["type"] or "bounce").lower())
    if code == "dropped":
        return DROP_REASONS.get((data["reason"] or "").lower())
    return KINDS.get(code)


def load_public_key(value: str) -> ec.EllipticCurvePublicKey:
    """The verification key as SendGrid shows it (base64 SPKI DER), or the same in PEM armour."""
    try:
        if "-----BEGIN" in value:
            key = serialization.load_pem_public_key(value.encode())
        else:
            key = serialization.load_der_public_key(base64.b64decode("".join(value.split())))
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError("not a base64 SPKI or PEM public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ValueError("not an ECDSA P-256 public key")
    return key


class SendGridParser(EspParser):
    esp = "sendgrid"
    known_codes = frozenset({*SCHEMAS, "processed", "delivered", "deferred", "open", "click"})
    settings = ("PUBLIC_KEY",)
    verification = "ECDSA P-256 signature of timestamp + raw body (Signed Event Webhook)"

    def __init__(self, source: SourceConfig, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__(source, clock=clock)
        # parsed once: a key that does not load is a configuration error, not a 401 per request
        self._keys: list[ec.EllipticCurvePublicKey] = self.load_keys("PUBLIC_KEY", load_public_key)

    def verify(self, request: InboundRequest) -> None:
        signature = request.headers.get(SIGNATURE_HEADER, "")
        timestamp = request.headers.get(TIMESTAMP_HEADER, "")
        if not signature or not timestamp:
            raise SignatureInvalid("signature or timestamp header missing")
        if not (timestamp.isascii() and timestamp.isdigit()):
            raise SignatureInvalid("timestamp header is not Unix seconds")
        self.check_timestamp(timestamp)
        try:
            der = base64.b64decode(signature.strip(), validate=True)
        except ValueError:
            raise SignatureInvalid("signature header is not base64") from None
        signed = timestamp.encode() + request.body
        for key in self._keys:
            try:
                key.verify(der, signed, ec.ECDSA(hashes.SHA256()))
                return
            except InvalidSignature:
                continue
        raise SignatureInvalid("signature does not match any configured public key")

    def parse(self, body: bytes) -> ParseResult:
        items = load_json(body)
        if not isinstance(items, list):
            raise PayloadInvalid("expected a JSON array of events")
        return self._parse_items(items)

    def parse_item(self, raw: Any) -> ParseResult:
        """One event of a batch, as quarantined."""
        return self._parse_items([raw])

    def _parse_items(self, items: list[Any]) -> ParseResult:
        result = ParseResult()
        esp, source, events = self.esp, self.name, result.events
        for item, data, kind in hygiene_items(items, SCHEMAS, _kind, result):
            email = data["email"]  # normalized by the Address field
            occurred_at = data["timestamp"]
            message_id = text(data["sg_message_id"])
            # sg_event_id changes between retried copies of one event, so it cannot dedupe
            key = content_key(esp, email, kind, occurred_at, message_id)
            events.append(
                HygieneEvent(
                    key=key,
                    source=source,
                    esp=esp,
                    email=email,
                    kind=kind,
                    occurred_at=occurred_at,
                    message_id=message_id,
                    reason=data.get("reason"),
                    smtp_code=text(data.get("status")),
                    list_id=text(data.get("asm_group_id")),
                    raw=item,
                )
            )
        return result
