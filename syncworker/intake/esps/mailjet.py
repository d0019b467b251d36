"""Mailjet Event API: one event object, or a grouped array of them ("Version 2"), basic auth.

Docs: https://dev.mailjet.com/email/guides/webhooks/ (Event API) and
https://documentation.mailjet.com/hc/en-us/articles/360043578154
"""

from __future__ import annotations

from typing import Any

from marshmallow import EXCLUDE, Schema, fields, validate

from syncworker.errors import PayloadInvalid, SignatureInvalid
from syncworker.events import HygieneEvent, Kind, content_key, normalize_email
from syncworker.intake.base import (
    EspParser,
    InboundRequest,
    ParseResult,
    Quarantined,
    check_basic_auth,
    load_json,
    validate_items,
)

# event -> Kind; `bounce` and `blocked` are refined by BOUNCES and BLOCKED_ERRORS below
KINDS: dict[str, Kind] = {"spam": Kind.SPAM_COMPLAINT, "unsub": Kind.UNSUBSCRIBE}
BOUNCES: dict[bool, Kind] = {True: Kind.HARD_BOUNCE, False: Kind.SOFT_BOUNCE}  # by `hard_bounce`
# blocked: `error` -> Kind. Mailjet says only "preblocked" stops all mail to the contact;
# "duplicate in campaign" and the rest block one message, so they say nothing about the address.
BLOCKED_ERRORS: dict[str, Kind] = {"preblocked": Kind.BLOCKED}
MAX_TS = 253_402_300_799  # 9999-12-31


class MailjetEvent(Schema):
    class Meta:
        unknown = EXCLUDE

    email = fields.Email(required=True)
    time = fields.Float(required=True, validate=validate.Range(0, MAX_TS))
    MessageID = fields.Raw(load_default=None)


class MailjetBounce(MailjetEvent):
    hard_bounce = fields.Boolean(load_default=False)
    error = fields.Raw(load_default=None)


class MailjetBlocked(MailjetEvent):
    error = fields.String(load_default=None)


class MailjetSpam(MailjetEvent):
    source = fields.Raw(load_default=None)


class MailjetUnsub(MailjetEvent):
    mj_list_id = fields.Raw(load_default=None)


SCHEMAS: dict[str, Schema] = {
    "bounce": MailjetBounce(),
    "blocked": MailjetBlocked(),
    "spam": MailjetSpam(),
    "unsub": MailjetUnsub(),
}


def _id(value: Any) -> str | None:
    """A numeric id as text. MessageID exceeds 2**53: a float has lost digits, so it is dropped."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value) if value else None
    if isinstance(value, str) and value.strip() not in ("", "0"):
        return value.strip()
    return None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _kind(code: str, data: dict[str, Any]) -> Kind | None:
    if code == "bounce":
        return BOUNCES[data["hard_bounce"]]
    if code == "blocked":
        return BLOCKED_ERRORS.get((data["error"] or "").strip().lower())
    return KINDS[code]


class MailjetParser(EspParser):
    esp = "mailjet"
    settings = ("USERNAME", "PASSWORD")
    verification = "HTTP Basic credentials in the callback URL"

    def verify(self, request: InboundRequest) -> None:
        pairs = [(u, p) for u in self.secrets("USERNAME") for p in self.secrets("PASSWORD")]
        try:
            check_basic_auth(request, pairs)
        except ValueError:  # non-ASCII Authorization header: base64 refuses it with ValueError
            raise SignatureInvalid("basic auth header malformed") from None

    def parse(self, body: bytes) -> ParseResult:
        doc = load_json(body)
        # grouping off: one bare object; grouping on: an array, possibly empty
        items = [doc] if isinstance(doc, dict) else doc
        if not isinstance(items, list):
            raise PayloadInvalid("expected a JSON object or an array of them")
        result = ParseResult()
        for item in items:
            code = item.get("event") if isinstance(item, dict) else None
            if not isinstance(code, str):
                why = "event code missing" if isinstance(item, dict) else "event is not an object"
                result.quarantined.append(Quarantined(why, item))
                continue
            schema = SCHEMAS.get(code)
            if schema is None:  # sent, open, click, and event types Mailjet adds later
                result.ignored[code] += 1
                continue
            for data in validate_items(schema, [item], result.quarantined):
                kind = _kind(code, data)
                if kind is None:
                    result.ignored[code] += 1
                    continue
                email = normalize_email(data["email"])
                message_id = _id(data["MessageID"])
                reason = _text(data.get("error")) or _text(data.get("source"))
                result.events.append(
                    HygieneEvent(
                        # Mailjet sends no event id
                        key=content_key(self.esp, email, kind, data["time"], message_id),
                        source=self.name,
                        esp=self.esp,
                        email=email,
                        kind=kind,
                        occurred_at=data["time"],
                        message_id=message_id,
                        reason=reason,
                        list_id=_id(data.get("mj_list_id")),
                        raw=item,
                    )
                )
        return result
