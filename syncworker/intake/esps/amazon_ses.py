"""Amazon SES bounce, complaint and subscription events, delivered by an SNS HTTPS subscription.

Docs: https://docs.aws.amazon.com/ses/latest/dg/notification-contents.html (SES notifications),
https://docs.aws.amazon.com/ses/latest/dg/event-publishing-retrieving-sns-contents.html (event
publishing) and https://docs.aws.amazon.com/sns/latest/dg/sns-verify-signature-of-message.html
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
from marshmallow import EXCLUDE, Schema, ValidationError, fields

from syncworker.events import HygieneEvent, Kind, normalize_email
from syncworker.intake import sns
from syncworker.intake.base import (
    EspParser,
    InboundRequest,
    IsoTime,
    ParseResult,
    Quarantined,
    text,
    validate_items,
)

if TYPE_CHECKING:
    from syncworker.config import SourceConfig

# Bounce: bounce.bounceType -> Kind
BOUNCE_TYPES: dict[str, Kind] = {
    "Permanent": Kind.HARD_BOUNCE,
    # event publishing sends a Transient bounce only once SES has stopped retrying
    "Transient": Kind.SOFT_BOUNCE,
    # SES could not tell why: counted towards the soft-bounce threshold, not suppressed at once
    "Undetermined": Kind.SOFT_BOUNCE,
}
# bounce.bounceSubType -> Kind, overriding the type; None: about the message, not the address
BOUNCE_SUBTYPES: dict[str, Kind | None] = {
    # the account-level list holds bounces, complaints and manual entries: SES's policy, not
    # the mailbox's answer (a Suppressed bounce, SES's global list, is a hard bounce)
    "OnAccountSuppressionList": Kind.BLOCKED,
    "MessageTooLarge": None,
    "ContentRejected": None,
    "AttachmentRejected": None,
}
# Complaint -> spam_complaint, except feedback types that report no complaint
NOT_COMPLAINTS = frozenset({"not-spam"})
# Subscription (list management): newTopicPreferences.unsubscribeAll true -> unsubscribe; false
# after true -> resubscribe; per-topic changes are ignored. Delivery, Send, Reject (a virus in the
# content), Open, Click, Rendering Failure and DeliveryDelay say nothing final about the address.
TOPIC_VALIDATION = "Successfully validated SNS topic for Amazon SES event publishing."


class _Lenient(Schema):
    class Meta:
        unknown = EXCLUDE


class SesRecipient(_Lenient):
    emailAddress = fields.Email(required=True)
    status = fields.Raw(load_default=None)
    diagnosticCode = fields.Raw(load_default=None)


class SesMail(_Lenient):
    messageId = fields.Raw(load_default=None)
    destination = fields.List(fields.Raw(), load_default=list)


class SesBounce(_Lenient):
    bounceType = fields.String(required=True)
    bounceSubType = fields.String(load_default=None)
    bouncedRecipients = fields.List(fields.Raw(), required=True)
    timestamp = IsoTime(required=True)


class SesComplaint(_Lenient):
    complainedRecipients = fields.List(fields.Raw(), required=True)
    complaintFeedbackType = fields.String(load_default=None)
    timestamp = IsoTime(required=True)


class TopicPreferences(_Lenient):
    unsubscribeAll = fields.Boolean(load_default=False)


class SesSubscription(_Lenient):
    contactList = fields.String(load_default=None)
    source = fields.Raw(load_default=None)
    timestamp = IsoTime(required=True)
    newTopicPreferences = fields.Nested(TopicPreferences, required=True)
    oldTopicPreferences = fields.Nested(TopicPreferences, load_default=None)


def _message_schema(name: str, detail: type[Schema]) -> Schema:
    """The notification (``mail`` + one detail object); both dialects share it."""
    return Schema.from_dict(
        {
            "mail": fields.Nested(SesMail, load_default=dict),
            name: fields.Nested(detail, required=True),
        }
    )(unknown=EXCLUDE)


SCHEMAS: dict[str, Schema] = {
    "Bounce": _message_schema("bounce", SesBounce),
    "Complaint": _message_schema("complaint", SesComplaint),
    "Subscription": _message_schema("subscription", SesSubscription),
}
RECIPIENT = SesRecipient()


class AmazonSesParser(EspParser):
    esp = "amazon_ses"
    settings = ("TOPIC_ARNS",)
    optional_settings = {
        "CERT_URL_PATTERN": r"https://sns\.[a-z0-9-]{3,}\.amazonaws\.com(\.cn)?/[A-Za-z0-9._/-]+\.pem",
        "SUBSCRIBE_URL_PATTERN": r"https://sns\.[a-z0-9-]{3,}\.amazonaws\.com(\.cn)?/\?[^#\s]*",
        "MAX_AGE_S": "7200",  # SNS retries an HTTP/S delivery for at most an hour
    }
    verification = (
        "SNS signature (RSA, SignatureVersion 1 SHA1 / 2 SHA256) with the certificate fetched over"
        " HTTPS from sns.<region>.amazonaws.com; TopicArn allow-list; Timestamp ≤ MAX_AGE_S old"
    )

    def __init__(
        self,
        source: SourceConfig,
        *,
        clock: Callable[[], float] = time.time,
        http: sns.HttpGet = sns.http_get,
    ) -> None:
        super().__init__(source, clock=clock)
        self.sns = sns.SnsVerifier.from_source(
            source, self.optional_settings, clock=clock, http=http
        )

    def verify(self, request: InboundRequest) -> None:
        self.sns.verify(request.body)

    def parse(self, body: bytes) -> ParseResult:
        message = sns.load_message(body)
        if message.type != "Notification":
            return self.sns.handshake(message)
        result = ParseResult()
        if message.message.strip() == TOPIC_VALIDATION:  # sent once, when the topic is set up
            result.ignored["TopicValidation"] += 1
            return result
        doc = sns.message_object(message)
        code = doc.get("eventType") or doc.get("notificationType")
        if not isinstance(code, str):
            result.quarantined.append(Quarantined("eventType/notificationType missing", doc))
            return result
        schema = SCHEMAS.get(code)
        if schema is None:
            result.ignored[code] += 1
            return result
        try:
            data = schema.load(doc)
        except ValidationError as exc:
            reason = f"invalid: {orjson.dumps(exc.messages).decode()}"
            result.quarantined.append(Quarantined(reason, doc))
            return result
        kind, label, detail, recipients = _classify(code, data)
        if kind is None:
            result.ignored[label] += 1
        elif not recipients:
            result.quarantined.append(Quarantined("no recipients", doc))
        else:
            for recipient in validate_items(RECIPIENT, recipients, result.quarantined):
                result.events.append(self._event(message, data, detail, recipient, kind, doc))
        return result

    def _event(
        self,
        message: sns.SnsMessage,
        data: dict[str, Any],
        detail: dict[str, Any],
        recipient: dict[str, Any],
        kind: Kind,
        doc: dict[str, Any],
    ) -> HygieneEvent:
        email = normalize_email(recipient["emailAddress"])
        reason = text(recipient["diagnosticCode"]) or text(detail.get("complaintFeedbackType"))
        if "bounceType" in detail:
            reason = reason or "/".join(
                filter(None, (detail["bounceType"], detail["bounceSubType"]))
            )
        return HygieneEvent(
            # one SNS message per notification, redelivered with the same MessageId
            key=f"{self.esp}:{message.message_id}:{email}",
            source=self.name,
            esp=self.esp,
            email=email,
            kind=kind,
            occurred_at=detail["timestamp"],
            message_id=text(data["mail"].get("messageId")),
            reason=reason or text(detail.get("source")),
            smtp_code=text(recipient["status"]),
            list_id=text(detail.get("contactList")),
            raw=doc,
        )


def _classify(
    code: str, data: dict[str, Any]
) -> tuple[Kind | None, str, dict[str, Any], list[Any]]:
    """(kind or None, the label counted when ignored, the detail object, its recipients)."""
    if code == "Bounce":
        bounce = data["bounce"]
        sub = bounce["bounceSubType"] or ""
        kind = (
            BOUNCE_SUBTYPES[sub]
            if sub in BOUNCE_SUBTYPES
            else BOUNCE_TYPES.get(bounce["bounceType"])
        )
        return kind, f"Bounce:{sub or bounce['bounceType']}", bounce, bounce["bouncedRecipients"]
    if code == "Complaint":
        complaint = data["complaint"]
        feedback = complaint["complaintFeedbackType"]
        kind = None if feedback in NOT_COMPLAINTS else Kind.SPAM_COMPLAINT
        return kind, f"Complaint:{feedback}", complaint, complaint["complainedRecipients"]
    subscription = data["subscription"]
    old = subscription["oldTopicPreferences"] or {}
    if subscription["newTopicPreferences"]["unsubscribeAll"]:
        kind = Kind.UNSUBSCRIBE
    else:
        kind = Kind.RESUBSCRIBE if old.get("unsubscribeAll") else None
    # SES names no recipient in the subscription object: the message went to one address
    recipients = [
        {"emailAddress": a} if isinstance(a, str) else a
        for a in data["mail"].get("destination", [])
    ]
    return kind, "Subscription:topics", subscription, recipients
