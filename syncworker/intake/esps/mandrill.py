"""Mandrill (Mailchimp Transactional) webhooks: a form field `mandrill_events` holding a JSON array
of up to 1,000 message and sync events, signed with X-Mandrill-Signature.

The signature is base64(HMAC-SHA1(webhook key, URL + each POST field's key and value, sorted by
key)), where URL is the webhook URL exactly as entered in Mandrill. Nothing signed carries a time,
so a replayed delivery is caught by the event keys alone.

Docs: https://mailchimp.com/developer/transactional/docs/webhooks/,
https://mailchimp.com/developer/transactional/guides/track-respond-activity-webhooks/ and
https://mandrill.zendesk.com/hc/en-us/articles/360039233253 (sync events)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from typing import Any
from urllib.parse import parse_qsl

from marshmallow import EXCLUDE, Schema, fields

from syncworker.errors import PayloadInvalid, SignatureInvalid
from syncworker.events import HygieneEvent, Kind, content_key, normalize_email
from syncworker.intake.contract import (
    EspParser,
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

# message events: `event` -> Kind. send, delivered, deferral (a delay: Mandrill retries), open,
# click, inbound, and codes Mandrill adds later are ignored.
KINDS: dict[str, Kind] = {
    "hard_bounce": Kind.HARD_BOUNCE,
    "soft_bounce": Kind.SOFT_BOUNCE,
    "spam": Kind.SPAM_COMPLAINT,
    "unsub": Kind.UNSUBSCRIBE,
    # Mandrill refused to send. With the rejection's reason (msg.reject.reason) it is decided by
    # REJECT_REASONS below; without one it stays a counted block, as Mandrill also rejects for
    # its sender's faults (unsigned domain, test-mode limit), which the event does not tell apart
    "reject": Kind.BLOCKED,
}
# sync events have `type` and `action` instead of `event`; their code here is "type:action".
# An address added to (or renewed on) the denylist: `reject.reason` -> Kind. Allowlist changes
# and removals from the denylist (often plain expiry) say nothing new and are ignored.
DENYLIST_CODES = ("blacklist:add", "blacklist:change", "denylist:add", "denylist:change")
# Why an address is on Mandrill's denylist (its reject reasons:
# https://mailchimp.com/developer/transactional/api/rejects/): a send refused for it, or an entry
# added, suppresses at once as that reason; an unnamed or unknown reason is a hard bounce.
DENYLIST_REASONS: dict[str, Kind] = {
    "hard-bounce": Kind.HARD_BOUNCE,
    # Mandrill lists an address after repeated soft bounces, for a while: the cause is temporary
    "soft-bounce": Kind.SOFT_BOUNCE,
    "spam": Kind.SPAM_COMPLAINT,
    "unsub": Kind.UNSUBSCRIBE,
    "custom": Kind.UNSUBSCRIBE,  # added by the sender: an opt-out the sender decided
}
# A `reject` event's msg.reject.reason, where it is not a denylist reason: the send API's reject
# reasons (https://mailchimp.com/developer/transactional/api/messages/send-new-message/). None:
# about the sender or account, not the address, so the event is ignored.
REJECT_REASONS: dict[str, Kind | None] = {
    **DENYLIST_REASONS,
    "invalid": Kind.HARD_BOUNCE,  # the address itself is invalid
    "rule": Kind.BLOCKED,  # one of the sender's rejection rules, often a whole domain
    "invalid-sender": None,
    "unsigned": None,
    "test-mode-limit": None,
}
FIELD = "mandrill_events"
SIGNATURE_HEADER = "X-Mandrill-Signature"
_SMTP_CODE = re.compile(r"(?<!\d)[245]\d\d(?!\d)")


class MandrillMessage(Schema):
    class Meta:
        unknown = EXCLUDE

    email = Address(required=True)
    bounce_description = fields.Raw(load_default=None)
    diag = fields.Raw(load_default=None)
    reject = fields.Raw(load_default=None)  # a reject event's rejection entry, if Mandrill sends it


class MandrillMessageEvent(Schema):
    class Meta:
        unknown = EXCLUDE

    ts = UnixTime()
    message_id = fields.Raw(data_key="_id", load_default=None)
    msg = fields.Nested(MandrillMessage, required=True)


class MandrillReject(Schema):
    class Meta:
        unknown = EXCLUDE

    email = Address(required=True)
    reason = fields.Raw(load_default=None)
    detail = fields.Raw(load_default=None)


class MandrillSyncEvent(Schema):
    class Meta:
        unknown = EXCLUDE

    ts = UnixTime()
    reject = fields.Nested(MandrillReject, required=True)


SCHEMAS: dict[str, Schema] = {code: MandrillMessageEvent() for code in KINDS}
SCHEMAS.update(dict.fromkeys(DENYLIST_CODES, MandrillSyncEvent()))


def _code(item: dict[str, Any]) -> str | None:
    if isinstance(item.get("event"), str):
        return str(item["event"])
    kind, action = item.get("type"), item.get("action")
    if isinstance(kind, str):
        return f"{kind}:{action}" if isinstance(action, str) else kind
    return None


def _rejection(msg: dict[str, Any]) -> dict[str, Any] | None:
    """A reject event's rejection entry, when it names a reason."""
    entry = msg["reject"]
    return entry if isinstance(entry, dict) and text(entry.get("reason")) else None


def _kind(code: str, data: dict[str, Any]) -> Kind | None:
    if code in DENYLIST_CODES:
        return DENYLIST_REASONS.get(text(data["reject"]["reason"]) or "", Kind.HARD_BOUNCE)
    rejection = _rejection(data["msg"]) if code == "reject" else None
    if rejection is not None:
        return REJECT_REASONS.get(str(text(rejection["reason"])), Kind.HARD_BOUNCE)
    return KINDS[code]


def form_fields(body: bytes) -> list[tuple[str, str]]:
    """The POST fields of an x-www-form-urlencoded body; ValueError if it does not decode."""
    return parse_qsl(
        body.decode("utf-8"), keep_blank_values=True, errors="strict", max_num_fields=100
    )


class MandrillParser(EspParser):
    esp = "mandrill"
    known_codes = frozenset(
        {*SCHEMAS, "send", "delivered", "deferral", "open", "click", "inbound"}
        | {"blacklist:remove", "denylist:remove", "whitelist:add", "whitelist:remove"}
        | {"allowlist:add", "allowlist:remove"}
    )
    settings = ("WEBHOOK_KEY",)
    # the URL exactly as entered in Mandrill, if not SYNCWORKER_PUBLIC_URL + /webhooks/<name>
    optional_settings = {"WEBHOOK_URL": ""}
    verification = "X-Mandrill-Signature: HMAC-SHA1 of the webhook URL + sorted POST fields"
    signs_url = True

    def verify(self, request: InboundRequest) -> None:
        given = request.headers.get(SIGNATURE_HEADER, "").strip()
        if not given:
            raise SignatureInvalid("X-Mandrill-Signature header missing")
        if not given.isascii():
            raise SignatureInvalid("X-Mandrill-Signature is not base64")
        try:
            pairs = form_fields(request.body)
        except ValueError:  # UnicodeDecodeError, or too many fields
            raise SignatureInvalid("body is not a form, so it cannot carry the signature") from None
        url = self.source.get("WEBHOOK_URL") or request.url
        signed = url + "".join(k + v for k, v in sorted(pairs, key=lambda kv: kv[0]))
        message = signed.encode("utf-8", "replace")  # a URL with lone surrogates cannot match
        ok = False
        for key in self.secrets("WEBHOOK_KEY"):
            digest = hmac.new(key.encode(), message, hashlib.sha1).digest()
            ok |= equal(base64.b64encode(digest), given)
        if not ok:
            raise SignatureInvalid(f"signature does not match any configured key (for {url})")

    def parse(self, body: bytes) -> ParseResult:
        try:
            values = [v for k, v in form_fields(body) if k == FIELD]
        except ValueError:
            raise PayloadInvalid("body is not an x-www-form-urlencoded form") from None
        if len(values) != 1:
            raise PayloadInvalid(f"expected one {FIELD} form field, got {len(values)}")
        items = load_json(values[0], FIELD)
        if not isinstance(items, list):
            raise PayloadInvalid(f"expected {FIELD} to be a JSON array")
        return self._parse_items(items)  # an empty array is Mandrill's test delivery

    def parse_item(self, raw: Any) -> ParseResult:
        """One event of the ``mandrill_events`` array, as quarantined."""
        return self._parse_items([raw])

    def _parse_items(self, items: list[Any]) -> ParseResult:
        result = ParseResult()
        for item in items:
            code = _code(item) if isinstance(item, dict) else None
            if code is None:
                why = "event code missing" if isinstance(item, dict) else "event is not an object"
                result.quarantined.append(Quarantined(why, item))
            elif code not in SCHEMAS:
                result.ignored[code] += 1
            else:
                for data in validate_items(SCHEMAS[code], [item], result.quarantined):
                    kind = _kind(code, data)
                    if kind is None:
                        result.ignored[code] += 1
                    else:
                        result.events.append(self._event(code, item, data, kind))
        return result

    def _event(
        self, code: str, item: dict[str, Any], data: dict[str, Any], kind: Kind
    ) -> HygieneEvent:
        if code in KINDS:
            msg = data["msg"]
            email, message_id = normalize_email(msg["email"]), text(data["message_id"])
            diag, reason = text(msg["diag"]), text(msg["bounce_description"])
            rejection = _rejection(msg)
            if rejection is not None:
                reason = text(rejection.get("reason")) or text(rejection.get("detail"))
        else:
            entry = data["reject"]
            email, message_id = normalize_email(entry["email"]), None
            diag, reason = None, text(entry["reason"]) or text(entry["detail"])
        found = _SMTP_CODE.search(diag) if diag else None
        return HygieneEvent(
            # Mandrill sends no event id; _id is the message's, shared by all its events
            key=content_key(self.esp, email, kind, data["ts"], message_id),
            source=self.name,
            esp=self.esp,
            email=email,
            kind=kind,
            occurred_at=data["ts"],
            message_id=message_id,
            reason=diag or reason,
            smtp_code=found.group() if found else None,
            raw=item,
        )
