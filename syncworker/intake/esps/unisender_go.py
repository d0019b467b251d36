"""Unisender Go webhooks: {"auth", "events_by_user": [{"events": [...]}]}, or one flat event when
the webhook has "use single event" on; `auth` authenticates the body.

`auth` is the MD5 hex of the body as sent, with the auth value replaced by the API key of the
user or project that registered the webhook. Unisender escapes "/" as "\\/", so the check works
on the raw bytes: re-serialized JSON would hash differently (django-anymail #398).

Docs: https://godocs.unisender.ru/web-api-ref#callback-format and
https://godocs.unisender.ru/email-statuses
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from typing import Any

import orjson
from marshmallow import EXCLUDE, Schema, ValidationError, fields

from syncworker.errors import PayloadInvalid, SignatureInvalid
from syncworker.events import HygieneEvent, Kind, content_key, normalize_email
from syncworker.intake.contract import (
    EspParser,
    InboundRequest,
    ParseResult,
    Quarantined,
    equal,
    invalid_reason,
    load_json,
    text,
)
from syncworker.intake.fields import Address

# event_data.status -> Kind for event_name "transactional_email_status". sent, delivered, opened
# and clicked are ignored, as are other event names (transactional_spam_block concerns Unisender's
# own SMTP servers, not an address).
STATUSES: dict[str, Kind] = {
    "hard_bounced": Kind.HARD_BOUNCE,
    "soft_bounced": Kind.SOFT_BOUNCE,
    "spam": Kind.SPAM_COMPLAINT,
    "unsubscribed": Kind.UNSUBSCRIBE,
    "subscribed": Kind.RESUBSCRIBE,  # the recipient undid an unsubscribe from the same message
}
# A bounce's delivery_info.delivery_status says why; where that is not the mailbox, it decides.
# Meanings: https://godocs.unisender.ru/email-statuses (the same codes as UniOne's docs).
DELIVERY_STATUSES: dict[str, Kind | None] = {
    # not sent because of Unisender's own lists: these suppress at once, as their cause
    "err_unsubscribed": Kind.UNSUBSCRIBE,  # the address unsubscribed earlier
    # "numerous delivery failures lead to mark this email address as permanently unavailable"
    "err_unreachable": Kind.HARD_BOUNCE,
    # "sending has been canceled because the email address is temporarily unavailable": a
    # temporary listing, so its cause is a soft bounce
    "err_skip_letter": Kind.SOFT_BOUNCE,
    # the receiving server refused by its policy: counted blocks
    "err_blacklisted": Kind.BLOCKED,  # "sender IP or sender domain is found in a black list"
    "err_spam_rejected": Kind.BLOCKED,  # the receiving server refused the message as spam
    # "sending has been canceled because the campaign has been blocked as a spam": the campaign,
    # not the address
    "err_spam_skipped": None,
    "err_too_large": None,  # the message was too big: nothing is wrong with the address
    "err_will_retry": None,  # a soft bounce Unisender will retry: a delay, not a failure yet
}
STATUS_EVENT = "transactional_email_status"
_MD5 = re.compile(rb"[0-9a-fA-F]{32}")


class UnisenderTime(fields.Field[float]):
    """``2015-11-30 15:09:42`` (UTC, no zone) as Unix seconds."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> float:
        try:
            moment = datetime.fromisoformat(value)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            seconds = moment.timestamp()
        except (TypeError, ValueError, OverflowError):
            raise ValidationError("Not a YYYY-MM-DD HH:MM:SS time.") from None
        if seconds < 0:
            raise ValidationError("Time before 1970.")
        return seconds


class UnisenderEvent(Schema):
    class Meta:
        unknown = EXCLUDE

    email = Address(required=True)
    status = fields.String(required=True)
    event_time = UnisenderTime(required=True)
    job_id = fields.Raw(load_default=None)
    delivery_info = fields.Raw(load_default=None)


EVENT = UnisenderEvent()


def _kind(data: dict[str, Any]) -> Kind | None:
    kind = STATUSES[data["status"]]
    info = data["delivery_info"]
    detail = info.get("delivery_status") if isinstance(info, dict) else None
    if not isinstance(detail, str):  # {} or [] cannot be looked up: no detail is known
        detail = None
    if kind in (Kind.HARD_BOUNCE, Kind.SOFT_BOUNCE) and detail in DELIVERY_STATUSES:
        return DELIVERY_STATUSES[detail]
    return kind


def _events(doc: dict[str, Any]) -> list[tuple[Any, Any]]:
    """(raw event, its data object) for each event of either payload form."""
    if "events_by_user" not in doc:
        if "event_name" not in doc:
            raise PayloadInvalid("expected events_by_user, or one event with event_name")
        flat = {k: v for k, v in doc.items() if k != "auth"}
        # kept in a grouped event's shape, so that a quarantined one is read as it was
        return [({"event_name": flat["event_name"], "event_data": flat}, flat)]
    groups = doc["events_by_user"]
    if not isinstance(groups, list):
        raise PayloadInvalid("events_by_user is not an array")
    found: list[tuple[Any, Any]] = []
    for group in groups:  # documented as a one-element array
        events = group.get("events") if isinstance(group, dict) else None
        if not isinstance(events, list):
            raise PayloadInvalid("events_by_user[].events is not an array")
        for event in events:
            if isinstance(event, dict) and "event_data" not in event:
                # kept with an explicit null, so that a replay does not read it as a flat event
                event = {**event, "event_data": None}
            found.append((event, event.get("event_data") if isinstance(event, dict) else None))
    return found


class UnisenderGoParser(EspParser):
    esp = "unisender_go"
    known_codes = frozenset(
        {*STATUSES, "sent", "delivered", "opened", "clicked", "transactional_spam_block"}
    )
    settings = ("API_KEY",)
    verification = "`auth` field: MD5 of the raw body with `auth` replaced by the API key"

    def verify(self, request: InboundRequest) -> None:
        try:
            doc = orjson.loads(request.body)
        except orjson.JSONDecodeError:
            raise SignatureInvalid("body is not JSON, so it carries no auth field") from None
        given = doc.get("auth") if isinstance(doc, dict) else None
        if not isinstance(given, str) or not _MD5.fullmatch(given.encode()):
            raise SignatureInvalid("auth field missing or not an MD5 hex digest")
        ok = False
        for key in self.secrets("API_KEY"):
            unsigned = request.body.replace(given.encode(), key.encode())
            ok |= equal(hashlib.md5(unsigned).hexdigest(), given.lower())
        if not ok:
            raise SignatureInvalid("auth does not match any configured API key")

    def parse(self, body: bytes) -> ParseResult:
        doc = load_json(body)
        if not isinstance(doc, dict):
            raise PayloadInvalid("expected a JSON object")
        return self._parse_events(_events(doc))

    def parse_item(self, raw: Any) -> ParseResult:
        """One event as quarantined: ``{"event_name", "event_data"}``, as in a grouped body; a
        flat single event is kept so too, its fields (without ``auth``) as the event_data. An
        object without event_data is a flat event as an older release kept it."""
        if isinstance(raw, dict) and "event_data" not in raw:
            return self._parse_events([(raw, raw)])
        return self._parse_events([(raw, raw.get("event_data") if isinstance(raw, dict) else None)])

    def _parse_events(self, events: list[tuple[Any, Any]]) -> ParseResult:
        result = ParseResult()
        for raw, data in events:
            name = raw.get("event_name") if isinstance(raw, dict) else None
            status = data.get("status") if isinstance(data, dict) else None
            if not isinstance(name, str):
                why = "event_name missing" if isinstance(raw, dict) else "event is not an object"
                result.quarantined.append(Quarantined(why, raw))
            elif name != STATUS_EVENT:
                result.ignored[name] += 1
            elif not isinstance(status, str):
                result.quarantined.append(Quarantined("event_data.status missing", raw))
            elif status not in STATUSES:
                result.ignored[status] += 1
            else:
                try:
                    valid = EVENT.load(data)
                except ValidationError as exc:
                    why = invalid_reason(exc.messages)
                    result.quarantined.append(Quarantined(why, raw))
                    continue
                kind = _kind(valid)
                if kind is None:
                    result.ignored[status] += 1
                else:
                    result.events.append(self._event(raw, valid, kind))
        return result

    def _event(self, raw: dict[str, Any], data: dict[str, Any], kind: Kind) -> HygieneEvent:
        email = normalize_email(data["email"])
        message_id = text(data["job_id"])
        info = data["delivery_info"] if isinstance(data["delivery_info"], dict) else {}
        reason = text(info.get("destination_response")) or text(info.get("delivery_status"))
        return HygieneEvent(
            # Unisender sends no event id (its ID header changes on every retry)
            key=content_key(self.esp, email, kind, data["event_time"], message_id),
            source=self.name,
            esp=self.esp,
            email=email,
            kind=kind,
            occurred_at=data["event_time"],
            message_id=message_id,
            reason=reason,
            raw=raw,
        )
