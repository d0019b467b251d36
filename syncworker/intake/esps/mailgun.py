"""Mailgun webhooks, one event per request, signed with HMAC-SHA256 of timestamp + token: JSON
(``signature`` + ``event-data``), and the legacy form posts older accounts still send, whose
signature and event fields are form fields.

Docs: https://documentation.mailgun.com/docs/mailgun/user-manual/webhooks/securing-webhooks,
https://documentation.mailgun.com/docs/mailgun/user-manual/events/ and, for the legacy posts,
the parameter tables of the retired "Webhooks (deprecated)" page
(https://github.com/mailgun/documentation, source/api-webhooks-deprecated.rst before e31f2ae).
"""

from __future__ import annotations

import hashlib
import hmac
import io
from typing import Any
from urllib.parse import parse_qsl

import orjson
from marshmallow import EXCLUDE, Schema, fields
from werkzeug.formparser import MultiPartParser
from werkzeug.http import parse_options_header

from syncworker.errors import PayloadInvalid, SignatureInvalid
from syncworker.events import HygieneEvent, Kind, normalize_email
from syncworker.intake.contract import (
    EspParser,
    HeaderMap,
    InboundRequest,
    ParseResult,
    Quarantined,
    UnixTime,
    equal,
    load_json,
    text,
    validate_items,
)
from syncworker.intake.fields import Address

# event-data.event -> Kind; `failed` is split by SEVERITIES and REASONS below
KINDS: dict[str, Kind] = {
    "rejected": Kind.BLOCKED,  # Mailgun refused to send (policy or account), nothing reached the MX
    "unsubscribed": Kind.UNSUBSCRIBE,
    "complained": Kind.SPAM_COMPLAINT,
}
SEVERITIES: dict[str, Kind] = {"permanent": Kind.HARD_BOUNCE, "temporary": Kind.SOFT_BOUNCE}
# A `failed` caused by Mailgun's own suppression lists ("Not delivering to previously bounced
# address") names the list; it suppresses at once as that list's reason, whatever the severity
# says (https://documentation.mailgun.com/docs/mailgun/user-manual/events/). Calling a previous
# unsubscribe or complaint a hard bounce would misstate why.
REASONS: dict[str, Kind] = {
    "suppress-bounce": Kind.HARD_BOUNCE,
    "suppress-unsubscribe": Kind.UNSUBSCRIBE,
    "suppress-complaint": Kind.SPAM_COMPLAINT,
}

# Legacy form posts: `event` -> Kind; `dropped` is split below. The legacy bounce webhook fires
# "every time a message experiences a hard bounce".
LEGACY_KINDS: dict[str, Kind] = {
    "bounced": Kind.HARD_BOUNCE,
    "complained": Kind.SPAM_COMPLAINT,
    "unsubscribed": Kind.UNSUBSCRIBE,
}
# `dropped`: Mailgun stopped trying. `old`: it tried for more than 8 hours (temporary failures);
# `hardfail`: the address previously bounced, unsubscribed or complained. The suppress-* reasons
# are from the 2014 edition of the page.
LEGACY_REASONS: dict[str, Kind] = {"old": Kind.SOFT_BOUNCE, **REASONS}
# Mailgun's own codes on a hardfail drop; undocumented, observed by django-anymail
# (anymail/webhooks/mailgun.py, legacy_reject_reasons): 605 previous bounce, 607 previous complaint
LEGACY_CODES: dict[str, Kind] = {"605": Kind.HARD_BOUNCE, "607": Kind.SPAM_COMPLAINT}
# what a hardfail drop's description names, when its code does not say (else: a hard bounce)
LEGACY_DESCRIPTIONS: dict[str, Kind] = {
    "unsubscribed": Kind.UNSUBSCRIBE,
    "complained": Kind.SPAM_COMPLAINT,
}
SIGNATURE_FIELDS = ("timestamp", "token", "signature", "parent-signature")
# the legacy fields an event is read from, kept as its raw (message-headers is read for the
# message id only: it holds every MIME header of the message)
LEGACY_FIELDS = ("event", "recipient", "code", "error", "notification", "reason", "description")
MAX_FORM_FIELDS = 1000  # a legacy post has a few dozen, user variables included


class MailgunEvent(Schema):
    class Meta:
        unknown = EXCLUDE

    event = fields.String(required=True)
    recipient = Address(required=True)
    timestamp = UnixTime()
    severity = fields.String(load_default=None)
    reason = fields.String(load_default=None)
    # metadata only: read leniently by _dig, never a reason to quarantine the event
    message = fields.Raw(load_default=None)
    delivery_status = fields.Raw(data_key="delivery-status", load_default=None)


EVENT = MailgunEvent()


class LegacyEvent(Schema):
    class Meta:
        unknown = EXCLUDE

    event = fields.String(required=True)
    recipient = fields.Email(required=True)
    timestamp = UnixTime()


LEGACY_EVENT = LegacyEvent()


def _is_form(body: bytes, content_type: str) -> bool:
    """A legacy post: a form by its Content-Type, or, where none is known (a body kept in the
    quarantine, a test), a body that is not JSON but holds a field."""
    mimetype = content_type.partition(";")[0].strip().lower()
    if mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        return True
    if mimetype == "application/json":
        return False
    head = body.lstrip()[:1]
    return head not in (b"{", b"[", b'"', b"") and b"=" in body


def _form(body: bytes, content_type: str) -> list[tuple[str, str]]:
    """The fields of a legacy post, in order (a user variable may repeat an event field's name);
    ValueError if it is not a form. Attachments of a multipart post are not read."""
    mimetype, options = parse_options_header(content_type)
    if mimetype.lower() == "multipart/form-data":
        boundary = options.get("boundary", "")
        if not boundary:
            raise ValueError("multipart body without a boundary")
        parser = MultiPartParser(stream_factory=_in_memory, max_form_parts=MAX_FORM_FIELDS)
        try:
            form, _ = parser.parse(io.BytesIO(body), boundary.encode(), len(body))
        except Exception as exc:  # werkzeug raises its own errors for malformed parts
            raise ValueError(f"malformed multipart body ({type(exc).__name__})") from None
        return [(k, v) for k, values in form.lists() for v in values]
    try:
        decoded = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("form body is not UTF-8") from None
    return parse_qsl(
        decoded, keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS, errors="replace"
    )


def _in_memory(*args: Any, **kwargs: Any) -> io.BytesIO:
    """Where an attachment part goes: memory (the body already is), never a temporary file."""
    return io.BytesIO()


def _signature_fields(body: bytes, content_type: str = "") -> tuple[Any, Any, dict[str, Any]]:
    """The signed timestamp and token of a body, and the values of its signature fields."""
    if _is_form(body, content_type):
        try:
            pairs = _form(body, content_type)
        except ValueError as exc:
            raise SignatureInvalid(f"not a readable form post: {exc}") from None
        # a user variable may share a signature field's name and comes first: Mailgun's own
        # value is the last one (django-anymail, MailgunBaseWebhookView.validate_request)
        fields_ = {k: v for k, v in pairs if k in SIGNATURE_FIELDS}
        if "signature" not in fields_:
            raise SignatureInvalid("timestamp, token or signature field missing")
        return fields_.get("timestamp"), fields_.get("token"), fields_
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise SignatureInvalid("body is not JSON, so it carries no signature") from None
    sig = doc.get("signature") if isinstance(doc, dict) else None
    if not isinstance(sig, dict):
        raise SignatureInvalid("signature object missing")
    timestamp = sig.get("timestamp")
    if isinstance(timestamp, int) and not isinstance(timestamp, bool):
        timestamp = str(timestamp)  # documented as an int, sent as a string
    return timestamp, sig.get("token"), sig


def _legacy_message_id(pairs: list[tuple[str, str]]) -> str | None:
    """Message-Id (delivered posts) or the Message-Id in message-headers (bounced, dropped,
    complained), without angle brackets, as the JSON events give it."""
    found = next((v for k, v in pairs if k.lower() == "message-id"), None)
    if found is None:
        raw = next((v for k, v in pairs if k == "message-headers"), None)
        try:
            headers = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            headers = None
        for header in headers if isinstance(headers, list) else ():
            if isinstance(header, list) and len(header) == 2 and isinstance(header[0], str):
                if header[0].lower() == "message-id":
                    found = header[1] if isinstance(header[1], str) else None
                    break
    return text(found.strip().removeprefix("<").removesuffix(">")) if found else None


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
    verification = (
        "HMAC-SHA256 of timestamp + token with the webhook signing key (JSON signature object,"
        " or form fields of a legacy post); each signature accepted once"
    )

    def verify(self, request: InboundRequest) -> None:
        timestamp, token, sig = _signature_fields(request.body, _content_type(request.headers))
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

    def replay_nonce(self, request: InboundRequest) -> str | None:
        """The signed timestamp and token. The signature covers only these, not the event, so
        within the skew a captured one could carry any event-data: each pair is accepted once,
        as the securing-webhooks page advises (cache the token, refuse a repeat). Mailgun
        retries 5 minutes to hours apart (user-manual/events/webhooks), beyond the skew, so a
        retry that verifies at all carries a fresh timestamp: keyed on both, it is never
        refused, whether or not Mailgun draws a new token for it."""
        timestamp, token, _ = _signature_fields(request.body, _content_type(request.headers))
        return f"{timestamp}:{token}"

    def parse_request(self, request: InboundRequest) -> ParseResult:
        """A legacy post is read with its Content-Type (a multipart one needs the boundary)."""
        content_type = _content_type(request.headers)
        if _is_form(request.body, content_type):
            return self._parse_form(request.body, content_type)
        return self.parse(request.body)

    def kept_headers(self, headers: HeaderMap) -> dict[str, str]:
        """A multipart legacy post cannot be read again without its boundary."""
        content_type = _content_type(headers)
        if content_type.lower().startswith("multipart/"):
            return {"Content-Type": content_type}
        return {}

    def parse(self, body: bytes) -> ParseResult:
        if _is_form(body, ""):
            return self._parse_form(body, "")
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
        release quarantined it, has lost its token and is keyed by content instead. A legacy
        post is kept as ``{"signature": {"token", "timestamp"}, "legacy": {field: value}}``:
        its timestamp is the event's time."""
        if isinstance(raw, dict) and "legacy" in raw:
            token, timestamp = _dig(raw, "signature", "token"), _dig(raw, "signature", "timestamp")
            fields_ = raw["legacy"]
            valid = isinstance(fields_, dict) and all(isinstance(v, str) for v in fields_.values())
            if not (valid and isinstance(token, str) and token and isinstance(timestamp, str)):
                raise PayloadInvalid("expected legacy fields (text) and signature.token, timestamp")
            return self._parse_legacy(fields_, token, timestamp)
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

    def _parse_form(self, body: bytes, content_type: str) -> ParseResult:
        try:
            pairs = _form(body, content_type)
        except ValueError as exc:
            raise PayloadInvalid(str(exc)) from None
        sig = {k: v for k, v in pairs if k in ("token", "timestamp")}  # the last: Mailgun's
        token, timestamp = sig.get("token"), sig.get("timestamp")
        if not token or timestamp is None:
            raise PayloadInvalid("token or timestamp field missing")
        # an event field's first value is Mailgun's; a user variable of that name comes after
        kept: dict[str, str] = {}
        for name, value in pairs:
            if name in LEGACY_FIELDS and name not in kept:
                kept[name] = value
        if (message_id := _legacy_message_id(pairs)) is not None:
            kept["Message-Id"] = message_id
        return self._parse_legacy(kept, token, timestamp)

    def _parse_legacy(self, item: dict[str, str], token: str, timestamp: str) -> ParseResult:
        kept = {"signature": {"token": token, "timestamp": timestamp}, "legacy": item}
        result = ParseResult()
        code = item.get("event")
        if isinstance(code, str) and code != "dropped" and code not in LEGACY_KINDS:
            result.ignored[code] += 1  # delivered, opened, clicked
            return result
        invalid: list[Quarantined] = []
        for data in validate_items(LEGACY_EVENT, [{**item, "timestamp": timestamp}], invalid):
            kind = LEGACY_KINDS.get(data["event"]) or _dropped_kind(item)
            email = normalize_email(data["recipient"])
            message_id = text(item.get("Message-Id"))
            reason = item.get("error") or item.get("notification") or item.get("description")
            result.events.append(
                HygieneEvent(
                    key=self.event_key(token, email, kind, data["timestamp"], message_id),
                    source=self.name,
                    esp=self.esp,
                    email=email,
                    kind=kind,
                    occurred_at=data["timestamp"],
                    message_id=message_id,
                    reason=text(reason) or text(item.get("reason")),
                    smtp_code=text(item.get("code")),
                    raw=kept,
                )
            )
        result.quarantined += [Quarantined(q.reason, kept) for q in invalid]
        return result


def _dropped_kind(item: dict[str, str]) -> Kind:
    """What a legacy ``dropped`` post means: by its reason, then its code, then what its
    description names; a hardfail that says no more is a previous bounce."""
    reason = item.get("reason", "").strip().lower()
    if reason in LEGACY_REASONS:
        return LEGACY_REASONS[reason]
    if (by_code := LEGACY_CODES.get(item.get("code", "").strip())) is not None:
        return by_code
    description = item.get("description", "").lower()
    found = [kind for word, kind in LEGACY_DESCRIPTIONS.items() if word in description]
    return found[0] if found else Kind.HARD_BOUNCE


def _content_type(headers: HeaderMap) -> str:
    return headers.get("Content-Type", "")
