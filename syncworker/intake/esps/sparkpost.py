"""SparkPost event webhooks: JSON arrays of ``{"msys": {"<class>": {...}}}`` wrappers, basic auth.

Docs: https://developers.sparkpost.com/api/webhooks/ (payloads, validation ping),
https://support.sparkpost.com/docs/deliverability/bounce-classification-codes and
https://support.sparkpost.com/docs/tech-resources/webhook-authentication
"""

from __future__ import annotations

import re
from typing import Any

from marshmallow import EXCLUDE, Schema, fields

from syncworker.errors import PayloadInvalid
from syncworker.events import HygieneEvent, Kind, normalize_email
from syncworker.intake.auth.basic import BasicAuthParser
from syncworker.intake.contract import (
    ParseResult,
    Quarantined,
    UnixTime,
    load_json,
    text,
    validate_items,
)
from syncworker.intake.fields import Address

# bounce_class -> Kind, for bounce, out_of_band, policy_rejection and generation_rejection events.
# SparkPost's own categories decide; only its Hard and Admin classes are suppression-level.
BOUNCE_CLASSES: dict[str, Kind] = {
    # Hard: the recipient is invalid (10) or none could be determined (30)
    "10": Kind.HARD_BOUNCE,
    "30": Kind.HARD_BOUNCE,
    # Hard in SparkPost's table, but it is the recipient asking to be unsubscribed: saying so is
    # truer than calling the address bounced
    "90": Kind.UNSUBSCRIBE,
    # Soft: DNS failure, mailbox full, too large, timeout, generic, transient failure
    **dict.fromkeys(("20", "21", "22", "23", "24", "40", "70"), Kind.SOFT_BOUNCE),
    # Undetermined: the message did bounce, for a reason SparkPost could not read; counting it
    # towards the soft threshold neither drops it nor suppresses on one unknown answer
    "1": Kind.SOFT_BOUNCE,
    # Block: the receiver refused this sender or content (mail block, spam block or content,
    # prohibited attachment, relaying denied)
    **dict.fromkeys(("50", "51", "52", "53", "54"), Kind.BLOCKED),
    # Admin: SparkPost's policies refused to send (a suppression list is decided by
    # SUPPRESSED below); like Mailgun `rejected`, nothing reached the MX
    "25": Kind.BLOCKED,
}
# Not hygiene: 26 Smart Send suppression (a send-frequency rule), 60 auto-reply and
# 100 challenge-response (the mailbox is alive and answered), 80 a subscribe request.
#
# A send refused because the address is on a suppression list is a bounce of class 25 (once a
# policy_rejection) whose reason says so: "recipient address was suppressed due to customer
# policy" for the account's list, "... due to system policy" for SparkPost's global one
# (https://support.sparkpost.com/docs/tech-resources/preparing-for-async-suppressions); the
# dashboard adds the entry's source, e.g. "(Spam Complaint)", "(Bounce Rule)", "(Unsubscribe
# Rule)" (https://support.sparkpost.com/docs/user-guide/using-suppression-lists). It suppresses
# at once, as its source: source (lower-cased) -> Kind; an unknown or no source is a hard bounce.
SUPPRESSED = re.compile(r"suppressed due to (?:customer|system) policy(?:\s*\(([^)]*)\))?", re.I)
SUPPRESSION_SOURCES: dict[str, Kind] = {
    "bounce rule": Kind.HARD_BOUNCE,
    "spam complaint": Kind.SPAM_COMPLAINT,
    "fbl": Kind.SPAM_COMPLAINT,  # a feedback-loop complaint
    "unsubscribe rule": Kind.UNSUBSCRIBE,
    "unsubscribe": Kind.UNSUBSCRIBE,
}
BOUNCE_TYPES = frozenset({"bounce", "out_of_band", "policy_rejection", "generation_rejection"})
# event type -> Kind where no bounce_class is involved
KINDS: dict[str, Kind] = {
    "spam_complaint": Kind.SPAM_COMPLAINT,
    "list_unsubscribe": Kind.UNSUBSCRIBE,
    "link_unsubscribe": Kind.UNSUBSCRIBE,
}
# `delay` is a retry in progress: SparkPost reports the end of retrying as a `bounce` with a soft
# class, so delays are ignored (as SendGrid `deferred`). injection, delivery, open, click,
# generation_failure (a template error), relay_* and amp_* events are ignored too.


class SparkPostEvent(Schema):
    class Meta:
        unknown = EXCLUDE

    type = fields.String(required=True)
    rcpt_to = Address(required=True)
    timestamp = UnixTime()  # Unix seconds sent as a string
    event_id = fields.Raw(load_default=None)
    message_id = fields.Raw(load_default=None)


class SparkPostBounce(SparkPostEvent):
    bounce_class = fields.Raw(required=True)
    raw_reason = fields.Raw(load_default=None)
    reason = fields.Raw(load_default=None)
    error_code = fields.Raw(load_default=None)


class SparkPostComplaint(SparkPostEvent):
    fbtype = fields.Raw(load_default=None)


SCHEMAS: dict[str, Schema] = dict.fromkeys(BOUNCE_TYPES, SparkPostBounce())
SCHEMAS.update(
    spam_complaint=SparkPostComplaint(),
    list_unsubscribe=SparkPostEvent(),
    link_unsubscribe=SparkPostEvent(),
)


def _kind(code: str, data: dict[str, Any]) -> Kind | None:
    if code in BOUNCE_TYPES:
        reason = text(data["raw_reason"]) or text(data["reason"]) or ""
        if suppressed := SUPPRESSED.search(reason):
            source = (suppressed.group(1) or "").strip().lower()
            return SUPPRESSION_SOURCES.get(source, Kind.HARD_BOUNCE)
        return BOUNCE_CLASSES.get(text(data["bounce_class"]) or "")
    return KINDS[code]


def _unwrap(wrapper: Any, result: ParseResult) -> dict[str, Any] | None:
    """The event inside one ``msys`` wrapper; None for a ping or a wrapper that was quarantined."""
    msys = wrapper.get("msys") if isinstance(wrapper, dict) else None
    if not isinstance(msys, dict):
        result.quarantined.append(Quarantined("not an msys wrapper", wrapper))
        return None
    if not msys:  # {"msys": {}}: the ping sent when a webhook is created or validated
        return None
    if len(msys) != 1:
        result.quarantined.append(Quarantined("more than one event class in a wrapper", wrapper))
        return None
    (item,) = msys.values()
    if not isinstance(item, dict):
        result.quarantined.append(Quarantined("event is not an object", wrapper))
        return None
    return item


class SparkPostParser(BasicAuthParser):
    esp = "sparkpost"
    known_codes = frozenset(
        {*SCHEMAS, *KINDS, "delay", "injection", "delivery", "open", "initial_open", "click"}
        | {"generation_failure", "amp_open", "amp_initial_open", "amp_click"}
        | {"relay_injection", "relay_rejection", "relay_delivery", "relay_tempfail"}
        | {"relay_permfail"}
    )
    verification = "HTTP Basic credentials (the webhook's Basic Auth setting)"

    def parse(self, body: bytes) -> ParseResult:
        doc = load_json(body)
        if isinstance(doc, dict) and "msys" in doc:
            doc = [doc]  # the validate endpoint posts its sample message as a bare wrapper
        if not isinstance(doc, list):
            raise PayloadInvalid("expected a JSON array of msys wrappers")
        return self._parse_wrappers(doc)

    def parse_item(self, raw: Any) -> ParseResult:
        """One ``msys`` wrapper of a batch, as quarantined (and as each event's ``raw``)."""
        return self._parse_wrappers([raw])

    def _parse_wrappers(self, wrappers: list[Any]) -> ParseResult:
        result = ParseResult()
        for wrapper in wrappers:
            item = _unwrap(wrapper, result)
            if item is None:
                continue
            code = item.get("type")
            if not isinstance(code, str):
                result.quarantined.append(Quarantined("event type missing", wrapper))
                continue
            schema = SCHEMAS.get(code)
            if schema is None:
                result.ignored[code] += 1
                continue
            invalid: list[Quarantined] = []
            valid = validate_items(schema, [item], invalid)
            result.quarantined += [Quarantined(q.reason, wrapper) for q in invalid]
            for data in valid:
                kind = _kind(code, data)
                if kind is None:
                    result.ignored[code] += 1
                    continue
                email = normalize_email(data["rcpt_to"])
                message_id = text(data["message_id"])
                # event_id is unique per event and kept when SparkPost retries a batch
                event_id = text(data["event_id"])
                key = self.event_key(event_id, email, kind, data["timestamp"], message_id)
                result.events.append(
                    HygieneEvent(
                        key=key,
                        source=self.name,
                        esp=self.esp,
                        email=email,
                        kind=kind,
                        occurred_at=data["timestamp"],
                        message_id=message_id,
                        reason=text(data.get("raw_reason")) or text(data.get("reason")),
                        smtp_code=text(data.get("error_code")),
                        raw=wrapper,
                    )
                )
        return result
