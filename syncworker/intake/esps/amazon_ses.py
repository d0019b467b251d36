"""Amazon SES bounce, complaint and subscription events, delivered by an SNS HTTPS subscription.

Docs: https://docs.aws.amazon.com/ses/latest/dg/notification-contents.html (SES notifications),
https://docs.aws.amazon.com/ses/latest/dg/event-publishing-retrieving-sns-contents.html (event
publishing) and https://docs.aws.amazon.com/sns/latest/dg/sns-verify-signature-of-message.html
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields

from syncworker.errors import PayloadInvalid
from syncworker.events import HygieneEvent, Kind, normalize_email
from syncworker.intake.auth import sns
from syncworker.intake.contract import (
    EspParser,
    InboundRequest,
    IsoTime,
    ParseResult,
    Quarantined,
    invalid_reason,
    text,
    validate_items,
)
from syncworker.intake.fields import Address

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
    # SES did not send because the address is on its global (Suppressed) or the account-level
    # suppression list: proof of an earlier hard bounce or complaint, so it suppresses at once.
    # The account list's entry reason (BOUNCE or COMPLAINT) is not in the notification, so it is
    # a hard bounce. https://docs.aws.amazon.com/ses/latest/dg/notification-contents.html
    "Suppressed": Kind.HARD_BOUNCE,
    "OnAccountSuppressionList": Kind.HARD_BOUNCE,
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
    emailAddress = Address(required=True)
    status = fields.Raw(load_default=None)
    diagnosticCode = fields.Raw(load_default=None)


class SesMail(_Lenient):
    messageId = fields.Raw(load_default=None)
    destination = fields.List(fields.Raw(allow_none=True), load_default=list)


class SesBounce(_Lenient):
    bounceType = fields.String(required=True)
    bounceSubType = fields.String(load_default=None)
    # a null recipient is quarantined alone (validate_items), not with the recipients beside it
    bouncedRecipients = fields.List(fields.Raw(allow_none=True), required=True)
    timestamp = IsoTime(required=True)


class SesComplaint(_Lenient):
    complainedRecipients = fields.List(fields.Raw(allow_none=True), required=True)
    complaintFeedbackType = fields.String(load_default=None)
    # OnAccountSuppressionList: not sent, the address is on the account's list for a complaint
    complaintSubType = fields.String(load_default=None)
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
NOTIFICATION_KEYS = frozenset({"mail", "notificationType", "eventType"})


class AmazonSesParser(EspParser):
    esp = "amazon_ses"
    known_codes = frozenset(
        {*SCHEMAS, "TopicValidation", "Subscription:topics"}
        | {"Delivery", "Send", "Reject", "Open", "Click", "Rendering Failure", "DeliveryDelay"}
        | {f"Bounce:{sub}" for sub, kind in BOUNCE_SUBTYPES.items() if kind is None}
        | {f"Complaint:{feedback}" for feedback in NOT_COMPLAINTS}
    )
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
        self.sns.verify(request.body, request.headers)

    def parse(self, body: bytes) -> ParseResult:
        message = sns.load_message(body)
        if message.type != "Notification":
            return self.sns.handshake(message)
        result = ParseResult()
        if message.message.strip() == TOPIC_VALIDATION:  # sent once, when the topic is set up
            result.ignored["TopicValidation"] += 1
            return result
        return self._parse_message(message.message_id, sns.message_object(message))

    def parse_item(self, raw: Any) -> ParseResult:
        """``{"MessageId", "Message"}``: the SNS message id (it keys the events) and the Message
        object, narrowed to one recipient where the rest of them were used. A Message object
        alone, as an older release quarantined it, is keyed by content instead."""
        if isinstance(raw, dict) and isinstance(raw.get("Message"), dict):
            message_id = raw.get("MessageId")
            if not isinstance(message_id, str) or not message_id:
                raise PayloadInvalid("MessageId missing")
            return self._parse_message(message_id, raw["Message"])
        if isinstance(raw, dict) and not NOTIFICATION_KEYS.isdisjoint(raw):
            return self._parse_message(None, raw)
        # an older release quarantined a bad recipient alone, without its notification
        raise PayloadInvalid("a recipient without its notification: cannot be parsed again")

    def _parse_message(self, message_id: str | None, doc: dict[str, Any]) -> ParseResult:
        result = ParseResult()
        whole = _kept(message_id, doc)
        code = doc.get("eventType") or doc.get("notificationType")
        if not isinstance(code, str):
            result.quarantined.append(Quarantined("eventType/notificationType missing", whole))
            return result
        schema = SCHEMAS.get(code)
        if schema is None:
            result.ignored[code] += 1
            return result
        try:
            data = schema.load(doc)
        except ValidationError as exc:
            reason = invalid_reason(exc.messages)
            result.quarantined.append(Quarantined(reason, whole))
            return result
        kind, label, detail, path = _classify(code, data)
        recipients = _dig(data, *path)
        if kind is None:
            result.ignored[label] += 1
        elif not recipients:
            result.quarantined.append(Quarantined("no recipients", whole))
        else:
            for index, recipient in enumerate(recipients):
                # each event, and each bad recipient, keeps the message with that recipient only
                # (replayed alone, it yields that one event)
                kept = (
                    whole
                    if len(recipients) == 1
                    else _kept(message_id, _narrowed(doc, path, index))
                )
                if code == "Subscription" and isinstance(recipient, str):
                    recipient = {"emailAddress": recipient}
                invalid: list[Quarantined] = []
                for valid in validate_items(RECIPIENT, [recipient], invalid):
                    result.events.append(self._event(message_id, data, detail, valid, kind, kept))
                result.quarantined += [Quarantined(q.reason, kept) for q in invalid]
        return result

    def _event(
        self,
        message_id: str | None,
        data: dict[str, Any],
        detail: dict[str, Any],
        recipient: dict[str, Any],
        kind: Kind,
        raw: dict[str, Any],
    ) -> HygieneEvent:
        email = normalize_email(recipient["emailAddress"])
        reason = (
            text(recipient["diagnosticCode"])
            or text(detail.get("complaintFeedbackType"))
            or text(detail.get("complaintSubType"))
        )
        if "bounceType" in detail:
            reason = reason or "/".join(
                filter(None, (detail["bounceType"], detail["bounceSubType"]))
            )
        ses_message_id = text(data["mail"].get("messageId"))
        # one SNS message per notification, redelivered with the same MessageId
        vendor_id = f"{message_id}:{email}" if message_id else None
        return HygieneEvent(
            key=self.event_key(vendor_id, email, kind, detail["timestamp"], ses_message_id),
            source=self.name,
            esp=self.esp,
            email=email,
            kind=kind,
            occurred_at=detail["timestamp"],
            message_id=ses_message_id,
            reason=reason or text(detail.get("source")),
            smtp_code=text(recipient["status"]),
            list_id=text(detail.get("contactList")),
            raw=raw,
        )


# where each notification lists its recipients: SES names no recipient in the subscription
# object, as the message went to one address
RECIPIENTS: dict[str, tuple[str, str]] = {
    "Bounce": ("bounce", "bouncedRecipients"),
    "Complaint": ("complaint", "complainedRecipients"),
    "Subscription": ("mail", "destination"),
}


def _classify(
    code: str, data: dict[str, Any]
) -> tuple[Kind | None, str, dict[str, Any], tuple[str, str]]:
    """(kind or None, the label counted when ignored, the detail object, its recipients' path)."""
    path = RECIPIENTS[code]
    if code == "Bounce":
        bounce = data["bounce"]
        sub = bounce["bounceSubType"] or ""
        kind = (
            BOUNCE_SUBTYPES[sub]
            if sub in BOUNCE_SUBTYPES
            else BOUNCE_TYPES.get(bounce["bounceType"])
        )
        return kind, f"Bounce:{sub or bounce['bounceType']}", bounce, path
    if code == "Complaint":
        complaint = data["complaint"]
        feedback = complaint["complaintFeedbackType"]
        kind = None if feedback in NOT_COMPLAINTS else Kind.SPAM_COMPLAINT
        return kind, f"Complaint:{feedback}", complaint, path
    subscription = data["subscription"]
    old = subscription["oldTopicPreferences"] or {}
    if subscription["newTopicPreferences"]["unsubscribeAll"]:
        kind = Kind.UNSUBSCRIBE
    else:
        kind = Kind.RESUBSCRIBE if old.get("unsubscribeAll") else None
    return kind, "Subscription:topics", subscription, path


def _dig(value: Any, *keys: str) -> Any:
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _kept(message_id: str | None, doc: dict[str, Any]) -> dict[str, Any]:
    """What a quarantined item (and an event's raw) holds: the SNS MessageId keys the events."""
    return {"MessageId": message_id, "Message": doc} if message_id else doc


def _narrowed(doc: dict[str, Any], path: tuple[str, str], index: int) -> dict[str, Any]:
    """The notification with only its ``index``-th recipient."""
    holder, field = path
    return {**doc, holder: {**doc[holder], field: [doc[holder][field][index]]}}
