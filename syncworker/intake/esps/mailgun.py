"""Mailgun webhooks (JSON, one event per request), signed with HMAC-SHA256 of timestamp + token.

Docs: https://documentation.mailgun.com/docs/mailgun/user-manual/webhooks/securing-webhooks and
https://documentation.mailgun.com/docs/mailgun/user-manual/events/
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import orjson
from marshmallow import EXCLUDE, Schema, fields

from syncworker.errors import PayloadInvalid, SignatureInvalid
from syncworker.events import HygieneEvent, Kind, normalize_email
from syncworker.intake.base import (
    EspParser,
    InboundRequest,
    ParseResult,
    Quarantined,
    UnixTime,
    equal,
    load_json,
    text,
    validate_items,
)

# event-data.event -> Kind; `failed` is split by SEVERITIES and REASONS below
KINDS: dict[str, Kind] = {
    "rejected": Kind.BLOCKED,  # Mailgun refused to send (policy or account), nothing reached the MX
    "unsubscribed": Kind.UNSUBSCRIBE,
    "complained": Kind.SPAM_COMPLAINT,
}
SEVERITIES: dict[str, Kind] = {"permanent": Kind.HARD_BOUNCE, "temporary": Kind.SOFT_BOUNCE}
# A permanent `failed` caused by Mailgun's own suppression lists repeats the original reason;
# calling a previous unsubscribe or complaint a hard bounce would misstate why.
REASONS: dict[str, Kind] = {
    "suppress-unsubscribe": Kind.UNSUBSCRIBE,
    "suppress-complaint": Kind.SPAM_COMPLAINT,
}


class MailgunEvent(Schema):
    class Meta:
        unknown = EXCLUDE

    event = fields.String(required=True)
    recipient = fields.Email(required=True)
    timestamp = UnixTime()
    severity = fields.String(load_default=None)
    reason = fields.String(load_default=None)
    # metadata only: read leniently by _dig, never a reason to quarantine the event
    message = fields.Raw(load_default=None)
    delivery_status = fields.Raw(data_key="delivery-status", load_default=None)


EVENT = MailgunEvent()


def _dig(value: Any, *keys: str) -> Any:
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value


class MailgunParser(EspParser):
    esp = "mailgun"
    known_codes = frozenset(
        {*KINDS, "failed", "accepted", "delivered", "opened", "clicked", "stored"}
    )
    settings = ("SIGNING_KEY",)
    verification = "HMAC-SHA256 of signature.timestamp + token with the webhook signing key"

    def verify(self, request: InboundRequest) -> None:
        try:
            doc = orjson.loads(request.body)
        except orjson.JSONDecodeError:
            raise SignatureInvalid("body is not JSON, so it carries no signature") from None
        sig = doc.get("signature") if isinstance(doc, dict) else None
        if not isinstance(sig, dict):
            raise SignatureInvalid("signature object missing")
        timestamp, token = sig.get("timestamp"), sig.get("token")
        if isinstance(timestamp, int) and not isinstance(timestamp, bool):
            timestamp = str(timestamp)  # documented as an int, sent as a string
        if not (isinstance(timestamp, str) and timestamp.isascii() and timestamp.isdigit()):
            raise SignatureInvalid("signature.timestamp is not Unix seconds")
        if not isinstance(token, str) or not token:
            raise SignatureInvalid("signature.token missing")
        self.check_timestamp(timestamp)
        # a subaccount's event also carries parent-signature, made with the primary account's key
        given = [sig.get(k) for k in ("signature", "parent-signature")]
        signatures = [s.lower() for s in given if isinstance(s, str) and s.isascii() and s]
        if not signatures:
            raise SignatureInvalid("signature missing")
        message = (timestamp + token).encode()  # orjson yields no lone surrogates
        ok = False
        for secret in self.secrets("SIGNING_KEY"):
            expected = hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
            for signature in signatures:
                ok |= equal(expected, signature)
        if not ok:
            raise SignatureInvalid("signature does not match any configured signing key")

    def parse(self, body: bytes) -> ParseResult:
        doc = load_json(body)
        if not isinstance(doc, dict) or not isinstance(doc.get("event-data"), dict):
            raise PayloadInvalid("expected a JSON object with an event-data object")
        token = _dig(doc, "signature", "token")
        if not isinstance(token, str) or not token:
            raise PayloadInvalid("signature.token missing")
        return self._parse_event(doc["event-data"], token)

    def parse_item(self, raw: Any) -> ParseResult:
        """``{"signature": {"token"}, "event-data"}``: the body without the signature and its
        timestamp, since the token keys the event. An event-data object alone, as an older
        release quarantined it, has lost its token and is keyed by content instead."""
        if isinstance(raw, dict) and "event-data" in raw:
            token = _dig(raw, "signature", "token")
            if not isinstance(raw["event-data"], dict) or not isinstance(token, str) or not token:
                raise PayloadInvalid("expected an event-data object and signature.token")
            return self._parse_event(raw["event-data"], token)
        if isinstance(raw, dict):
            return self._parse_event(raw, None)
        raise PayloadInvalid("expected a Mailgun event object")

    def _parse_event(self, item: dict[str, Any], token: str | None) -> ParseResult:
        # what is kept of the request (as quarantined, and as the event's raw): the token, not
        # the signature
        kept = {"signature": {"token": token}, "event-data": item} if token else item
        result = ParseResult()
        code = item.get("event")
        if isinstance(code, str) and code != "failed" and code not in KINDS:
            result.ignored[code] += 1  # accepted, delivered, opened, clicked, stored, ...
            return result
        invalid: list[Quarantined] = []
        for data in validate_items(EVENT, [item], invalid):
            if code == "failed":
                kind = REASONS.get(data["reason"] or "") or SEVERITIES.get(data["severity"] or "")
                if kind is None:
                    invalid.append(Quarantined("failed event without a known severity", item))
                    continue
            else:
                kind = KINDS[data["event"]]
            email = normalize_email(data["recipient"])
            message_id = text(_dig(data["message"], "headers", "message-id"))
            status = data["delivery_status"]
            reason = text(_dig(status, "description")) or text(_dig(status, "message"))
            # event-data.id is only unique per day; the signed token is unique per post
            key = self.event_key(token, email, kind, data["timestamp"], message_id)
            result.events.append(
                HygieneEvent(
                    key=key,
                    source=self.name,
                    esp=self.esp,
                    email=email,
                    kind=kind,
                    occurred_at=data["timestamp"],
                    message_id=message_id,
                    reason=reason or data["reason"],
                    smtp_code=text(_dig(status, "code")),
                    raw=kept,
                )
            )
        result.quarantined += [Quarantined(q.reason, kept) for q in invalid]
        return result
