"""Postmark bounce, spam-complaint and subscription-change webhooks (one JSON object, basic auth).

Docs: https://postmarkapp.com/developer/webhooks/bounce-webhook,
https://postmarkapp.com/developer/webhooks/subscription-change-webhook and
https://postmarkapp.com/developer/api/bounce-api#bounce-types
"""

from __future__ import annotations

from typing import Any

from marshmallow import EXCLUDE, Schema, fields

from syncworker.errors import PayloadInvalid
from syncworker.events import HygieneEvent, Kind, normalize_email
from syncworker.intake.auth.basic import BasicAuthParser
from syncworker.intake.contract import (
    IsoTime,
    ParseResult,
    Quarantined,
    load_json,
    text,
    validate_items,
)
from syncworker.intake.fields import Address

# RecordType "Bounce": Type -> Kind. Other types (AutoResponder, AddressChange, Subscribe,
# OpenRelayTest, VirusNotification, Unknown, SMTPApiError, ...) say nothing about the address.
BOUNCE_TYPES: dict[str, Kind] = {
    "HardBounce": Kind.HARD_BOUNCE,
    "BadEmailAddress": Kind.HARD_BOUNCE,
    # temporary by definition (full mailbox, greylisting, DNS lookup failure): they count towards
    # the soft-bounce threshold instead of suppressing the address at once
    "SoftBounce": Kind.SOFT_BOUNCE,
    "Transient": Kind.SOFT_BOUNCE,
    "DnsError": Kind.SOFT_BOUNCE,
    "SpamNotification": Kind.SPAM_COMPLAINT,
    "SpamComplaint": Kind.SPAM_COMPLAINT,
    # the receiving server refused by its own policy (an ISP block, the sender's DMARC policy):
    # counted, not suppressed at once
    "Blocked": Kind.BLOCKED,
    "DMARCPolicy": Kind.BLOCKED,
    # the address is on Postmark's suppression list because the sender deactivated it: an
    # opt-out decided by the sender, as SuppressionReason ManualSuppression below
    # (https://postmarkapp.com/developer/api/bounce-api#bounce-types)
    "ManuallyDeactivated": Kind.UNSUBSCRIBE,
    "Unsubscribe": Kind.UNSUBSCRIBE,
}
# RecordType "SubscriptionChange" with SuppressSending true: SuppressionReason -> Kind
SUPPRESSION_REASONS: dict[str, Kind] = {
    "HardBounce": Kind.HARD_BOUNCE,
    "SpamComplaint": Kind.SPAM_COMPLAINT,
    "ManualSuppression": Kind.UNSUBSCRIBE,  # an opt-out, by the recipient (Origin) or the sender
}


# The schemas hold the fields that must be valid for an event to be used; the free-form ones
# (ID, MessageID, Details, MessageStream) are read from the item with text(), which takes any
# JSON value, so declaring them would cost a field's work per event and check nothing.
class PostmarkSpamComplaint(Schema):
    class Meta:
        unknown = EXCLUDE

    email = Address(required=True, data_key="Email")
    occurred_at = IsoTime(required=True, data_key="BouncedAt")


class PostmarkBounce(PostmarkSpamComplaint):
    Type = fields.String(required=True)


class PostmarkSubscriptionChange(Schema):
    class Meta:
        unknown = EXCLUDE

    email = Address(required=True, data_key="Recipient")
    occurred_at = IsoTime(required=True, data_key="ChangedAt")
    SuppressSending = fields.Boolean(load_default=None)
    reason = fields.String(load_default=None, data_key="SuppressionReason")


SCHEMAS: dict[str, Schema] = {
    "Bounce": PostmarkBounce(),
    "SpamComplaint": PostmarkSpamComplaint(),
    "SubscriptionChange": PostmarkSubscriptionChange(),
}


def _kind(record: str, data: dict[str, Any]) -> Kind | None:
    if record == "Bounce":
        return BOUNCE_TYPES[data["Type"]]
    if record == "SpamComplaint":
        return Kind.SPAM_COMPLAINT
    suppress = data["SuppressSending"]
    if suppress is None:  # absent on some payloads (django-anymail #447): no change is known
        return None
    if not suppress:
        return Kind.RESUBSCRIBE
    return SUPPRESSION_REASONS.get(data["reason"] or "", Kind.UNSUBSCRIBE)


class PostmarkParser(BasicAuthParser):
    esp = "postmark"
    # Bounce types that are not hygiene events are counted as Bounce:<Type>
    known_codes = frozenset(
        {*SCHEMAS, "Delivery", "Open", "Click"}
        | {f"Bounce:{t}" for t in (
            "Subscribe", "AutoResponder", "AddressChange", "ChallengeVerification",
            "OpenRelayTest", "VirusNotification", "Unconfirmed", "SMTPApiError",
            "TemplateRenderingFailed", "InboundError", "Unknown",
        )}
    )  # fmt: skip
    verification = "HTTP Basic credentials in the webhook URL"

    def parse(self, body: bytes) -> ParseResult:
        return self.parse_item(load_json(body))

    def parse_item(self, raw: Any) -> ParseResult:
        """The body is the one event, so a quarantined item is parsed like a body."""
        item = raw
        if not isinstance(item, dict):
            raise PayloadInvalid("expected one JSON object")
        result = ParseResult()
        record = item.get("RecordType")
        bounce_type = item.get("Type")
        if not isinstance(record, str):
            result.quarantined.append(Quarantined("RecordType missing", item))
        elif (
            record == "Bounce" and isinstance(bounce_type, str) and bounce_type not in BOUNCE_TYPES
        ):
            result.ignored[f"Bounce:{bounce_type}"] += 1  # AutoResponder, Subscribe, ...
        elif record not in SCHEMAS:  # Delivery, Open, Click, and record types added later
            result.ignored[record] += 1
        else:
            for data in validate_items(SCHEMAS[record], [item], result.quarantined):
                kind = _kind(record, data)
                if kind is None:
                    result.ignored[record] += 1
                else:
                    result.events.append(self._event(record, item, data, kind))
        return result

    def _event(
        self, record: str, item: dict[str, Any], data: dict[str, Any], kind: Kind
    ) -> HygieneEvent:
        email = normalize_email(data["email"])
        message_id = text(item.get("MessageID"))
        record_id = text(item.get("ID"))
        # the bounce record's own id, stable across retries
        record_key = f"{record}:{record_id}" if record_id else None
        key = self.event_key(record_key, email, kind, data["occurred_at"], message_id)
        # suppressions are per message stream, so an (un)subscription is scoped to its stream
        scoped = kind in (Kind.UNSUBSCRIBE, Kind.RESUBSCRIBE)
        details = data["reason"] if record == "SubscriptionChange" else item.get("Details")
        return HygieneEvent(
            key=key,
            source=self.name,
            esp=self.esp,
            email=email,
            kind=kind,
            occurred_at=data["occurred_at"],
            message_id=message_id,
            reason=text(details) or data.get("Type"),
            list_id=text(item.get("MessageStream")) if scoped else None,
            raw=item,
        )
