"""Mailtrap Email Sending webhooks: batches of up to 500 events, HMAC-SHA256 of the raw body.

Docs: https://docs.mailtrap.io/email-api-smtp/advanced/webhooks (events, retries, "Verifying the
signature"), https://docs.mailtrap.io/email-api-smtp/analytics/statuses-and-events and the
JSON / JSON Lines handlers under https://docs.mailtrap.io/developers/webhooks
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import orjson
from marshmallow import EXCLUDE, Schema, fields

from syncworker.errors import PayloadInvalid, SignatureInvalid
from syncworker.events import HygieneEvent, Kind, normalize_email
from syncworker.intake.contract import (
    EspParser,
    InboundRequest,
    ParseResult,
    UnixTime,
    check_depth,
    equal,
    hygiene_items,
    text,
)
from syncworker.intake.fields import Address

# event -> Kind; `bounce` and `reject` are refined below
KINDS: dict[str, Kind] = {
    "bounce": Kind.HARD_BOUNCE,  # "permanent delivery failure, no further attempts"
    # a temporary failure Mailtrap retries up to 10 times; its end is reported as `bounce`, so
    # this is the only soft signal there is and counts towards the threshold
    "soft bounce": Kind.SOFT_BOUNCE,
    "spam": Kind.SPAM_COMPLAINT,
    "unsubscribe": Kind.UNSUBSCRIBE,
}
# bounce: bounce_category -> Kind. A permanent refusal filed under "spam" is the receiver's
# spam policy rejecting this mail ("Message rejected due to local policy"), not a dead address.
BOUNCE_CATEGORIES: dict[str, Kind] = {"spam": Kind.BLOCKED}
# reject: Mailtrap refused to send. Only a reject because the recipient is on Mailtrap's
# suppression list is about the address; the other reject (the sending domain was not verified
# in time) would block every recipient at once, so it is ignored, like `suspension` (unverified
# domain or sending limit) and delivery, open and click.
REJECT_SUPPRESSED = "recipient in suppression list"
# A suppression-list reject names the entry's reason ("Recipient in suppression list. Reason:
# unsubscription", https://docs.mailtrap.io/email-api-smtp/advanced/webhooks); that reason -> Kind,
# lower-cased. It suppresses at once: the entry is an earlier hard bounce, complaint or opt-out.
# A reason not listed here (or none) is a hard bounce.
SUPPRESSION_REASONS: dict[str, Kind] = {
    "hard bounce": Kind.HARD_BOUNCE,
    "spam complaint": Kind.SPAM_COMPLAINT,
    "unsubscription": Kind.UNSUBSCRIBE,
    # an entry the sender imported or added: an opt-out decided by the sender
    "manual import": Kind.UNSUBSCRIBE,
}
SIGNATURE_HEADER = "Mailtrap-Signature"


class MailtrapEvent(Schema):
    class Meta:
        unknown = EXCLUDE

    email = Address(required=True)
    timestamp = UnixTime()
    event_id = fields.Raw(load_default=None)
    message_id = fields.Raw(load_default=None)


class MailtrapBounce(MailtrapEvent):
    response = fields.Raw(load_default=None)
    response_code = fields.Raw(load_default=None)
    bounce_category = fields.Raw(load_default=None)


class MailtrapReject(MailtrapEvent):
    reason = fields.Raw(load_default=None)


# events without a schema are not hygiene events (or are newer than this module): ignored
SCHEMAS: dict[str, Schema] = {
    "bounce": MailtrapBounce(),
    "soft bounce": MailtrapBounce(),
    "spam": MailtrapEvent(),
    "unsubscribe": MailtrapEvent(),
    "reject": MailtrapReject(),
}


def _kind(code: str, data: dict[str, Any]) -> Kind | None:
    if code == "reject":
        reason = (text(data["reason"]) or "").strip().lower()
        if not reason.startswith(REJECT_SUPPRESSED):
            return None
        entry = reason.partition("reason:")[2].strip().rstrip(".")
        return SUPPRESSION_REASONS.get(entry, Kind.HARD_BOUNCE)
    if code == "bounce":
        category = (text(data["bounce_category"]) or "").lower()
        return BOUNCE_CATEGORIES.get(category, Kind.HARD_BOUNCE)
    return KINDS[code]


def _items(body: bytes) -> list[Any]:
    """The events of a body in either payload format: JSON ``{"events": [...]}`` or JSON Lines."""
    if not body.strip():
        raise PayloadInvalid("empty body")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        lines = [line for line in body.splitlines() if line.strip()]
        try:
            items = [orjson.loads(line) for line in lines]
        except orjson.JSONDecodeError as exc:
            raise PayloadInvalid(f"body is neither JSON nor JSON Lines: {exc.msg}") from None
        check_depth(items)
        return items
    check_depth(doc)
    if isinstance(doc, dict) and "events" in doc:
        if not isinstance(doc["events"], list):
            raise PayloadInvalid("events is not an array")
        return doc["events"]
    if isinstance(doc, dict):
        return [doc]  # JSON Lines with a single line
    raise PayloadInvalid('expected {"events": [...]} or JSON Lines of event objects')


class MailtrapParser(EspParser):
    esp = "mailtrap"
    known_codes = frozenset({*SCHEMAS, "delivery", "open", "click", "suspension"})
    settings = ("SIGNING_SECRET",)
    verification = "HMAC-SHA256 of the raw body (Mailtrap-Signature, hex)"

    def verify(self, request: InboundRequest) -> None:
        signature = request.headers.get(SIGNATURE_HEADER, "").strip().lower()
        if not signature:
            raise SignatureInvalid(f"{SIGNATURE_HEADER} header missing")
        if not signature.isascii():
            raise SignatureInvalid(f"{SIGNATURE_HEADER} header is not hex")
        # Mailtrap signs no timestamp: its retries (40, 5 min apart) resend the same bytes, and a
        # replay carries the same event ids, which dedupe
        ok = False
        for secret in self.secrets("SIGNING_SECRET"):
            expected = hmac.new(secret.encode(), request.body, hashlib.sha256).hexdigest()
            ok |= equal(expected, signature)
        if not ok:
            raise SignatureInvalid("signature does not match any configured signing secret")

    def parse(self, body: bytes) -> ParseResult:
        return self._parse_items(_items(body))

    def parse_item(self, raw: Any) -> ParseResult:
        """One event of a batch, as quarantined."""
        return self._parse_items([raw])

    def _parse_items(self, items: list[Any]) -> ParseResult:
        result = ParseResult()
        for item, data, kind in hygiene_items(items, SCHEMAS, _kind, result):
            email = normalize_email(data["email"])
            message_id = text(data["message_id"])
            event_id = text(data["event_id"])  # documented "for idempotency"
            key = self.event_key(event_id, email, kind, data["timestamp"], message_id)
            result.events.append(
                HygieneEvent(
                    key=key,
                    source=self.name,
                    esp=self.esp,
                    email=email,
                    kind=kind,
                    occurred_at=data["timestamp"],
                    message_id=message_id,
                    reason=text(data.get("response")) or text(data.get("reason")),
                    smtp_code=text(data.get("response_code")),
                    raw=item,
                )
            )
        return result
