"""Resend webhooks: one JSON event per request, signed by Svix (Standard Webhooks, svix-* headers).

Docs: https://resend.com/docs/dashboard/webhooks/event-types (every type and its payload),
https://resend.com/docs/dashboard/emails/email-bounces (bounce types and subtypes),
https://resend.com/docs/dashboard/webhooks/verify-webhooks-requests and
https://resend.com/docs/dashboard/emails/email-suppressions (suppression origins)
"""

from __future__ import annotations

from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate

from syncworker.errors import PayloadInvalid
from syncworker.events import HygieneEvent, Kind, content_key, normalize_email
from syncworker.intake.contract import (
    IsoTime,
    ParseResult,
    Quarantined,
    load_json,
    text,
    validate_items,
)
from syncworker.intake.esps.standard_webhooks import MessageKeyedParser
from syncworker.intake.fields import Address, load_address

# type -> Kind for types whose kind needs no second field
KINDS: dict[str, Kind] = {
    "email.complained": Kind.SPAM_COMPLAINT,
    # Resend did not send: the address is on the account suppression list, which only an earlier
    # hard bounce, complaint or manual entry puts it on. The event does not say which, so it is a
    # hard bounce, suppressed at once (https://resend.com/docs/dashboard/emails/email-suppressions)
    "email.suppressed": Kind.HARD_BOUNCE,
}
# email.bounced: data.bounce.type -> Kind. A bounce without a type (older payloads) is hard, as
# the event is documented: "the recipient's mail server permanently rejected the email".
BOUNCE_TYPES: dict[str, Kind] = {
    "Permanent": Kind.HARD_BOUNCE,  # subtypes Suppressed / OnAccountSuppressionList included
    "Transient": Kind.SOFT_BOUNCE,
    "Temporary": Kind.SOFT_BOUNCE,  # the spelling of the email.bounced field description
    "Undetermined": Kind.SOFT_BOUNCE,  # no reason known: counted, not suppressed at once
}
# suppression.added: data.origin -> Kind; a manual entry is an opt-out made by the sender
SUPPRESSION_ORIGINS: dict[str, Kind] = {
    "bounce": Kind.HARD_BOUNCE,
    "complaint": Kind.SPAM_COMPLAINT,
    "manual": Kind.UNSUBSCRIBE,
}
# contact.created / contact.updated with unsubscribed true -> unsubscribe. unsubscribed false is
# not a resubscribe: contact.updated fires on any change (a name, a segment) and would clear
# opt-outs made elsewhere. suppression.removed of a manual entry -> resubscribe (it undoes the
# opt-out above); a removed bounce or complaint entry clears nothing here.
# email.delivery_delayed is a delay, not a bounce; email.failed is a sending error (quota, API key,
# domain); both are ignored, as are sent, delivered, opened, clicked, scheduled, received, domain.*
# and inbox.*.


class Recipients(fields.Field[list[str]]):
    """The addresses of ``to``, each valid, without repeats."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> list[str]:
        if not isinstance(value, list) or not value:
            raise ValidationError("Expected a list of addresses.")
        return list(dict.fromkeys(load_address(entry) for entry in value))  # display names too


# Types whose ``to`` is documented as "Array of impacted recipient email addresses"
# (https://resend.com/docs/webhooks/emails/bounced, .../complained): one event per address. For
# the others the docs do not say whether ``to`` names only the affected recipients, so an event
# naming several is quarantined rather than guessed at (it could suppress the wrong address).
IMPACTED_RECIPIENTS = frozenset({"email.bounced", "email.complained"})


class ResendBounce(Schema):
    class Meta:
        unknown = EXCLUDE

    type = fields.String(load_default=None, validate=validate.OneOf(BOUNCE_TYPES))
    subType = fields.String(load_default=None)
    message = fields.String(load_default=None)


class ResendEmail(Schema):
    class Meta:
        unknown = EXCLUDE

    to = Recipients(required=True)
    email_id = fields.Raw(load_default=None)
    bounce = fields.Nested(ResendBounce, load_default=None)
    suppressed = fields.Raw(load_default=None)


class ResendContact(Schema):
    class Meta:
        unknown = EXCLUDE

    email = Address(required=True)
    unsubscribed = fields.Boolean(load_default=False)
    audience_id = fields.Raw(load_default=None)


class ResendSuppression(Schema):
    class Meta:
        unknown = EXCLUDE

    email = Address(required=True)
    origin = fields.String(required=True, validate=validate.OneOf(SUPPRESSION_ORIGINS))
    source_id = fields.Raw(load_default=None)


class ResendEvent(Schema):
    class Meta:
        unknown = EXCLUDE

    created_at = IsoTime(required=True)  # when the event happened; data.created_at is the email's


class ResendEmailEvent(ResendEvent):
    data = fields.Nested(ResendEmail, required=True)


class ResendContactEvent(ResendEvent):
    data = fields.Nested(ResendContact, required=True)


class ResendSuppressionEvent(ResendEvent):
    data = fields.Nested(ResendSuppression, required=True)


# types without a schema are not hygiene events, or ones Resend added since: they are ignored
SCHEMAS: dict[str, Schema] = {code: ResendEmailEvent() for code in (*KINDS, "email.bounced")}
SCHEMAS.update(dict.fromkeys(("contact.created", "contact.updated"), ResendContactEvent()))
SCHEMAS.update(
    dict.fromkeys(("suppression.added", "suppression.removed"), ResendSuppressionEvent())
)


def _kind(code: str, data: dict[str, Any]) -> Kind | None:
    if code == "email.bounced":
        bounce = data["bounce"] or {}
        return BOUNCE_TYPES[bounce["type"]] if bounce.get("type") else Kind.HARD_BOUNCE
    if code.startswith("contact."):
        return Kind.UNSUBSCRIBE if data["unsubscribed"] else None
    if code == "suppression.added":
        return SUPPRESSION_ORIGINS[data["origin"]]
    if code == "suppression.removed":
        return Kind.RESUBSCRIBE if data["origin"] == "manual" else None
    return KINDS[code]


def _reason(data: dict[str, Any]) -> str | None:
    for detail in (data.get("bounce"), data.get("suppressed")):
        if isinstance(detail, dict):
            return text(detail.get("message")) or text(detail.get("subType") or detail.get("type"))
    return text(data.get("origin"))


def _narrowed(doc: dict[str, Any], email: str) -> dict[str, Any]:
    """The event as if it had named only ``email`` in ``to``."""
    return {**doc, "data": {**doc["data"], "to": [email]}}


class ResendParser(MessageKeyedParser):
    esp = "resend"
    known_codes = frozenset(
        {*SCHEMAS, "email.sent", "email.delivered", "email.delivery_delayed", "email.failed"}
        | {"email.scheduled", "email.opened", "email.clicked", "email.received"}
        | {"contact.deleted", "domain.created", "domain.updated", "domain.deleted"}
    )
    settings = ("SIGNING_SECRET",)
    verification = "Svix: HMAC-SHA256 of svix-id.svix-timestamp.body, whsec_ secret; skew ≤ 5 min"

    def parse(self, body: bytes) -> ParseResult:
        return self.parse_event(load_json(body))

    def parse_event(self, item: Any) -> ParseResult:
        """The body is the one event."""
        doc = item
        if not isinstance(doc, dict):
            raise PayloadInvalid("expected one JSON object")
        result = ParseResult()
        code = doc.get("type")
        if not isinstance(code, str):
            result.quarantined.append(Quarantined("event type missing", doc))
        elif code not in SCHEMAS:
            result.ignored[code] += 1
        else:
            for loaded in validate_items(SCHEMAS[code], [doc], result.quarantined):
                data: dict[str, Any] = loaded["data"]
                kind = _kind(code, data)
                emails: list[str] = data.get("to") or [normalize_email(data["email"])]
                if kind is None:
                    result.ignored[code] += 1
                elif len(emails) > 1 and code not in IMPACTED_RECIPIENTS:
                    why = "Several recipients: the event does not say which one it is about."
                    result.quarantined.append(Quarantined(why, doc))
                else:
                    for email in emails:
                        # each event's raw names its one recipient, so parse_item gives it back
                        raw = doc if len(emails) == 1 else _narrowed(doc, email)
                        result.events.append(
                            self._event(raw, email, loaded["created_at"], data, kind)
                        )
        return result

    def _event(
        self, doc: dict[str, Any], email: str, occurred_at: float, data: dict[str, Any], kind: Kind
    ) -> HygieneEvent:
        message_id = text(data.get("email_id")) or text(data.get("source_id"))
        return HygieneEvent(
            # the body carries no event id (email_id is per message): a content hash here, which
            # MessageKeyedParser replaces with the svix-id Resend repeats on every retry
            key=content_key(self.esp, email, kind, occurred_at, message_id),
            source=self.name,
            esp=self.esp,
            email=email,
            kind=kind,
            occurred_at=occurred_at,
            message_id=message_id,
            reason=_reason(data),
            list_id=text(data.get("audience_id")),
            raw=doc,
        )
