"""Scaleway Transactional Email webhooks, delivered by a Topics and Events (SNS-compatible) topic.

Docs: https://www.scaleway.com/en/docs/transactional-email/reference-content/webhook-events-payloads/,
https://www.scaleway.com/en/docs/transactional-email/concepts/#webhook-event-type and
https://www.scaleway.com/en/docs/topics-and-events/reference-content/verifying-webhooks/
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields

from syncworker.errors import PayloadInvalid
from syncworker.events import HygieneEvent, Kind, content_key, normalize_email
from syncworker.intake.auth import sns
from syncworker.intake.contract import (
    EspParser,
    InboundRequest,
    IsoTime,
    ParseResult,
    Quarantined,
    invalid_reason,
    text,
)
from syncworker.intake.fields import Address

if TYPE_CHECKING:
    from syncworker.config import SourceConfig

# type -> Kind
KINDS: dict[str, Kind] = {
    "email_dropped": Kind.HARD_BOUNCE,  # "definitively rejected by the destination server"
    "email_mailbox_not_found": Kind.HARD_BOUNCE,
    # temporarily rejected and retried for up to 72 h: keyed by email_id below, so the retries
    # of one email count as one soft bounce
    "email_deferred": Kind.SOFT_BOUNCE,
    # "classified as spam, either by an automated filter or by the recipient": the event does
    # not say which, and a recipient's report must suppress
    "email_spam": Kind.SPAM_COMPLAINT,
}
# email_blocklisted (a send refused by a blocklist) and blocklist_created: blocklist_type -> Kind.
# Scaleway blocklists an address after a "mailbox not found" or "mailbox full" answer
# (https://www.scaleway.com/en/docs/transactional-email/concepts/). The refusal is the
# kind of its cause: a mailbox not found suppresses at once, a full mailbox (a temporary
# blocklist) is a soft bounce. Any other type (unknown_type, or one added later) is still
# Scaleway's own list refusing the address, so it is a hard bounce.
BLOCKLIST_TYPES: dict[str, Kind] = {
    "mailbox_not_found": Kind.HARD_BOUNCE,
    "mailbox_full": Kind.SOFT_BOUNCE,
}
BLOCKLIST_EVENTS = frozenset({"email_blocklisted", "blocklist_created"})
# email_queued, email_delivered and unknown_type say nothing about the address: ignored


class TemEvent(Schema):
    class Meta:
        unknown = EXCLUDE

    id = fields.String(load_default=None)
    email_to = Address(required=True)
    created_at = IsoTime(required=True)
    email_id = fields.String(load_default=None)
    email_response_code = fields.Raw(load_default=None)
    email_response_message = fields.Raw(load_default=None)
    email_error = fields.Raw(load_default=None)
    blocklist_type = fields.String(load_default=None)
    blocklist_reason = fields.Raw(load_default=None)


SCHEMA = TemEvent()


class ScalewayTemParser(EspParser):
    esp = "scaleway_tem"
    known_codes = frozenset(
        {*KINDS, *BLOCKLIST_EVENTS, "email_queued", "email_delivered", "unknown_type"}
    )
    settings = ("TOPIC_ARNS", "CA_BUNDLE")
    optional_settings = {
        "CERT_URL_PATTERN": r"https://messaging\.s3\.[a-z]{2}-[a-z]{3}\.scw\.cloud/[A-Za-z0-9._/-]+",
        "SUBSCRIBE_URL_PATTERN": r"https://sns\.mnq\.[a-z]{2}-[a-z]{3}\.scaleway\.com/\?[^#\s]*",
        "MAX_AGE_S": "86400",  # Scaleway does not document how long it retries a delivery
    }
    verification = (
        "SNS-style RSA signature (SignatureVersion 1 SHA1 / 2 SHA256) with the certificate fetched"
        " over HTTPS from messaging.s3.<region>.scw.cloud and chained to CA_BUNDLE (Scaleway's"
        " sns-trust-chain.pem); TopicArn allow-list; Timestamp ≤ MAX_AGE_S old"
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
            source, self.optional_settings, with_ca=True, clock=clock, http=http
        )

    def verify(self, request: InboundRequest) -> None:
        self.sns.verify(request.body, request.headers)

    def parse(self, body: bytes) -> ParseResult:
        message = sns.load_message(body)
        if message.type != "Notification":
            return self.sns.handshake(message)
        return self.parse_item(sns.message_object(message))

    def parse_item(self, raw: Any) -> ParseResult:
        """The SNS Message object (one event, keyed by its own ids), as quarantined."""
        doc = raw
        if not isinstance(doc, dict):
            raise PayloadInvalid("expected the SNS Message object of a TEM event")
        result = ParseResult()
        code = doc.get("type")
        if not isinstance(code, str):
            result.quarantined.append(Quarantined("event type missing", doc))
            return result
        if code not in KINDS and code not in BLOCKLIST_EVENTS:
            result.ignored[code] += 1
            return result
        try:
            data = SCHEMA.load(doc)
        except ValidationError as exc:
            reason = invalid_reason(exc.messages)
            result.quarantined.append(Quarantined(reason, doc))
            return result
        if code in KINDS:
            kind = KINDS[code]
        else:
            kind = BLOCKLIST_TYPES.get(data["blocklist_type"] or "", Kind.HARD_BOUNCE)
        email = normalize_email(data["email_to"])
        event_id, email_id = text(data["id"]), text(data["email_id"])
        if code == "email_deferred" and email_id:
            key = f"{self.esp}:deferred:{email_id}"
        elif event_id:
            key = f"{self.esp}:{event_id}"  # the event's id, the same in every redelivery
        else:
            key = content_key(self.esp, email, kind, data["created_at"], email_id)
        reason = data["email_response_message"] or data["email_error"] or data["blocklist_reason"]
        result.events.append(
            HygieneEvent(
                key=key,
                source=self.name,
                esp=self.esp,
                email=email,
                kind=kind,
                occurred_at=data["created_at"],
                message_id=email_id,
                reason=text(reason) or data["blocklist_type"],
                smtp_code=text(data["email_response_code"]),
                raw=doc,
            )
        )
        return result
