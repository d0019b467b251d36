"""Mailjet Event API: one event object, or a grouped array of them ("Version 2"), basic auth.

Docs: https://dev.mailjet.com/email/guides/webhooks/ (Event API) and
https://documentation.mailjet.com/hc/en-us/articles/360043578154
"""

from __future__ import annotations

from typing import Any

from marshmallow import EXCLUDE, Schema, fields

from syncworker.errors import PayloadInvalid
from syncworker.events import HygieneEvent, Kind, content_key, normalize_email
from syncworker.intake.auth.basic import BasicAuthParser
from syncworker.intake.contract import (
    ParseResult,
    UnixTime,
    hygiene_items,
    load_json,
)
from syncworker.intake.fields import Address

# event -> Kind; `bounce` and `blocked` are refined by BOUNCES and SUPPRESSION_ERRORS below
KINDS: dict[str, Kind] = {"spam": Kind.SPAM_COMPLAINT, "unsub": Kind.UNSUBSCRIBE}
BOUNCES: dict[bool, Kind] = {True: Kind.HARD_BOUNCE, False: Kind.SOFT_BOUNCE}  # by `hard_bounce`
# `error` -> Kind where Mailjet did not send because of its own lists, for bounce and blocked
# events alike; these suppress at once
# (https://dev.mailjet.com/email/guides/webhooks/#possible-values-for-errors):
SUPPRESSION_ERRORS: dict[str, Kind] = {
    # "an address that recently (or repeatedly) bounced. We didn't try to send it"
    "preblocked": Kind.HARD_BOUNCE,
    # "a recipient that has reported a previous message from this account as spam"
    "spam reporter": Kind.SPAM_COMPLAINT,
    # "a blacklisted recipient for this account": the sender's own exclusion list, an opt-out
    "blacklisted": Kind.UNSUBSCRIBE,
}
# Other blocked errors ("duplicate in campaign", template errors, "sender blocked", "content
# blocked", ...) block one message, so they say nothing about the address and are ignored.


class MailjetEvent(Schema):
    class Meta:
        unknown = EXCLUDE

    email = Address(required=True)
    time = UnixTime()
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


# sent, open, click, and event types Mailjet adds later have no schema: they are ignored
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
    """A string field as text. Unlike ``base.text``, a number here is not taken as text."""
    return value if isinstance(value, str) and value else None


def _kind(code: str, data: dict[str, Any]) -> Kind | None:
    if code in ("bounce", "blocked"):
        error = data["error"]
        listed = SUPPRESSION_ERRORS.get(error.strip().lower() if isinstance(error, str) else "")
        if listed is not None or code == "blocked":
            return listed
        return BOUNCES[data["hard_bounce"]]
    return KINDS[code]


class MailjetParser(BasicAuthParser):
    esp = "mailjet"
    known_codes = frozenset({*SCHEMAS, "sent", "open", "click"})
    verification = "HTTP Basic credentials in the callback URL"

    def parse(self, body: bytes) -> ParseResult:
        doc = load_json(body)
        # grouping off: one bare object; grouping on: an array, possibly empty
        items = [doc] if isinstance(doc, dict) else doc
        if not isinstance(items, list):
            raise PayloadInvalid("expected a JSON object or an array of them")
        return self._parse_items(items)

    def parse_item(self, raw: Any) -> ParseResult:
        """One event (of a group, or alone), as quarantined."""
        return self._parse_items([raw])

    def _parse_items(self, items: list[Any]) -> ParseResult:
        result = ParseResult()
        for item, data, kind in hygiene_items(items, SCHEMAS, _kind, result):
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
