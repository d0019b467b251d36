"""EmailLabs (Vercom) delivery-report webhooks: a JSON array of status reports, HTTP Basic auth.

Docs: https://newpanel.docs.emaillabs.io/en/account/settings/webhooks/webhook-configuration,
https://newpanel.docs.emaillabs.io/en/account/settings/webhooks/data-transmission and
https://docs.emaillabs.io/panel-analityczny/dostarczalnosc-wiadomosci/statusy-wiadomosci

The panel offers Basic auth, which this module requires. EmailLabs also signs a "hash" with a
generated SecretKey but publishes its exact form only in the API reference (apidocs.emaillabs.io),
which we could not read; a third-party receiver documents X-Webhook-Checksum = hex SHA-1 of
``SecretKey|X-Webhook-Date|Request-Id``. It covers no body, and X-Webhook-Date has no documented
format, so no skew is bounded. The check runs only when SECRET_KEY is set; a wrong scheme should
show at once, as the panel saves a webhook only after its "Test" call gets a 200.
"""

from __future__ import annotations

import hashlib
from typing import Any

from marshmallow import EXCLUDE, Schema, fields

from syncworker.errors import PayloadInvalid, SignatureInvalid
from syncworker.events import HygieneEvent, Kind, content_key, normalize_email
from syncworker.intake.auth.basic import BasicAuthParser, basic_credentials
from syncworker.intake.contract import (
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

# `status` (lower-cased) -> Kind. Not hygiene: injected, ok (delivered; off unless support turns
# it on), deferred (held by EmailLabs itself), open, track (click).
STATUSES: dict[str, Kind] = {
    "hardbounce": Kind.HARD_BOUNCE,  # permanent; EmailLabs blacklists the address itself
    "softbounce": Kind.SOFT_BOUNCE,  # temporary: full mailbox, server down, message too big
    # the receiving server refused this message as spam or as dangerous: a block of the message,
    # not a complaint by the recipient, so it counts towards the threshold like other blocks
    "spambounce": Kind.BLOCKED,
    # the "Feedback" status, "i.e. spam_complaint" in the docs; whether the webhook sends it, and
    # under which of the two names, is unconfirmed
    "spam_complaint": Kind.SPAM_COMPLAINT,
    "feedback": Kind.SPAM_COMPLAINT,
}
# "dropped" is ignored: EmailLabs sends it both for blacklisted addresses (the blacklist reason is
# not a documented field) and when the account's daily or monthly limit is used up, so counting it
# as a block would suppress whole lists after a quota overrun.
CHECKSUM_HEADER = "X-Webhook-Checksum"
DATE_HEADER = "X-Webhook-Date"
REQUEST_ID_HEADER = "Request-Id"
_HEX = frozenset("0123456789abcdef")


class EmailLabsRecipient(Schema):
    class Meta:
        unknown = EXCLUDE

    email = Address(required=True)
    messageId = fields.Raw(load_default=None)


class EmailLabsReport(Schema):
    class Meta:
        unknown = EXCLUDE

    to = fields.Nested(EmailLabsRecipient, required=True)
    statusTime = UnixTime()
    statusDesc = fields.Raw(load_default=None)


REPORT = EmailLabsReport()


def checksum(secret: str, date: str, request_id: str) -> str:
    """The X-Webhook-Checksum EmailLabs is said to send (hex SHA-1; second-hand, see above)."""
    material = f"{secret}|{date}|{request_id}".encode("utf-8", "surrogatepass")
    return hashlib.sha1(material).hexdigest()


def _message_id(value: Any) -> str | None:
    """The message_id set at send time; EmailLabs may wrap it in angle brackets."""
    found = text(value)
    return text(found.strip().removeprefix("<").removesuffix(">").strip()) if found else None


class EmailLabsParser(BasicAuthParser):
    esp = "emaillabs"
    known_codes = frozenset({*STATUSES, "dropped", "injected", "ok", "deferred", "open", "track"})
    # SECRET_KEY_PREVIOUS is listed so the checksum secret can be rotated like the others
    optional_settings = {"SECRET_KEY": "", "SECRET_KEY_PREVIOUS": ""}
    verification = (
        "HTTP Basic credentials set in the panel; with SECRET_KEY also X-Webhook-Checksum"
        " (SHA-1 of SecretKey|X-Webhook-Date|Request-Id)"
    )

    def verify(self, request: InboundRequest) -> None:
        # the credentials and the SecretKey are set in one webhook form of the panel, so they
        # rotate together: all three must come from one generation
        generations = self.generations("USERNAME", "PASSWORD", "SECRET_KEY")
        if not any(secret for _, _, secret in generations):
            super().verify(request)
            return
        user, password = basic_credentials(request)
        given = request.headers.get(CHECKSUM_HEADER, "").strip().lower()
        date = request.headers.get(DATE_HEADER, "")
        request_id = request.headers.get(REQUEST_ID_HEADER, "")
        if not (given and date and request_id):
            raise SignatureInvalid("checksum, date or request id header missing")
        if len(given) != 40 or not set(given) <= _HEX:
            raise SignatureInvalid("checksum header is not a hex SHA-1")
        ok = False
        for want_user, want_password, secret in generations:  # no early exit: all are compared
            match = equal(user, want_user) & equal(password, want_password)
            if secret:
                match &= equal(checksum(secret, date, request_id), given)
            ok |= match
        if not ok:
            raise SignatureInvalid("credentials or checksum does not match one configured pair")

    def parse(self, body: bytes) -> ParseResult:
        doc = load_json(body)
        # documented: an array of reports; a lone report object is taken as a batch of one
        items = [doc] if isinstance(doc, dict) else doc
        if not isinstance(items, list):
            raise PayloadInvalid("expected a JSON array of status reports")
        return self._parse_items(items)

    def parse_item(self, raw: Any) -> ParseResult:
        """One status report of a batch, as quarantined."""
        return self._parse_items([raw])

    def _parse_items(self, items: list[Any]) -> ParseResult:
        result = ParseResult()
        for item in items:
            status = item.get("status") if isinstance(item, dict) else None
            if not isinstance(status, str) or not status.strip():
                why = "status missing" if isinstance(item, dict) else "report is not an object"
                result.quarantined.append(Quarantined(why, item))
                continue
            code = status.strip().lower()
            kind = STATUSES.get(code)
            if kind is None:
                result.ignored[code] += 1
                continue
            for data in validate_items(REPORT, [item], result.quarantined):
                result.events.append(self._event(item, data, kind))
        return result

    def _event(self, item: dict[str, Any], data: dict[str, Any], kind: Kind) -> HygieneEvent:
        email = normalize_email(data["to"]["email"])
        message_id = _message_id(data["to"]["messageId"])
        occurred_at = data["statusTime"]
        return HygieneEvent(
            # a report carries no id of its own; Request-Id names the POST, not the report
            key=content_key(self.esp, email, kind, occurred_at, message_id),
            source=self.name,
            esp=self.esp,
            email=email,
            kind=kind,
            occurred_at=occurred_at,
            message_id=message_id,
            reason=text(data["statusDesc"]),
            raw=item,
        )
