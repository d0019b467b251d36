"""Brevo (ex-Sendinblue) transactional email webhooks: one JSON object, or an array when batched.

Brevo signs nothing: a request proves itself with a bearer token or HTTP Basic credentials in the
webhook URL, both set when the webhook is created.

Docs: https://developers.brevo.com/docs/transactional-webhooks,
https://developers.brevo.com/docs/batch-webhooks and
https://developers.brevo.com/docs/username-and-password-authentication
"""

from __future__ import annotations

from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, post_load, validate

from syncworker.errors import PayloadInvalid, SignatureInvalid
from syncworker.events import HygieneEvent, Kind, content_key, normalize_email
from syncworker.intake.auth.basic import check_basic_auth
from syncworker.intake.contract import (
    MAX_TS,
    EspParser,
    InboundRequest,
    ParseResult,
    equal,
    hygiene_items,
    load_json,
    text,
)
from syncworker.intake.fields import Address

# event -> Kind. request, delivered, deferred (a delay: Brevo retries), opened, unique_opened,
# proxy_open, unique_proxy_open, click and error (a send failure on Brevo's side) are ignored.
KINDS: dict[str, Kind] = {
    "hard_bounce": Kind.HARD_BOUNCE,
    # Brevo found the address itself invalid (syntax or a dead domain): nothing will ever arrive
    "invalid_email": Kind.HARD_BOUNCE,
    "soft_bounce": Kind.SOFT_BOUNCE,
    # Brevo did not send: the address is on its transactional blocklist, which holds earlier hard
    # bounces, spam complaints, unsubscriptions and contacts the account blocked
    # (https://developers.brevo.com/reference/get-transac-blocked-contacts). The event does not
    # say which, so it is a hard bounce, suppressed at once, with Brevo's reason text.
    "blocked": Kind.HARD_BOUNCE,
    "spam": Kind.SPAM_COMPLAINT,
    "complaint": Kind.SPAM_COMPLAINT,
    # the docs' event list says "unsubscribed", payloads seen by django-anymail say "unsubscribe"
    "unsubscribe": Kind.UNSUBSCRIBE,
    "unsubscribed": Kind.UNSUBSCRIBE,
}
# ts_epoch is documented in milliseconds, yet Brevo's own examples show seconds; as milliseconds
# a value below this would fall in 1973, as seconds above it in the year 5138
_MS_FROM = 1e11


class BrevoEvent(Schema):
    class Meta:
        unknown = EXCLUDE

    email = Address(required=True)
    # ts_epoch is the one time Brevo keeps in UTC; ts_event (seconds) is the documented fallback
    ts_epoch = fields.Float(load_default=None, validate=validate.Range(0, MAX_TS * 1000))
    ts_event = fields.Float(load_default=None, validate=validate.Range(0, MAX_TS))
    message_id = fields.Raw(data_key="message-id", load_default=None)
    reason = fields.Raw(load_default=None)

    @post_load
    def occurred_at(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        epoch, event = data["ts_epoch"], data["ts_event"]
        if epoch is not None:
            data["occurred_at"] = epoch / 1000 if epoch >= _MS_FROM else epoch
        elif event is not None:
            data["occurred_at"] = event
        else:
            raise ValidationError("ts_epoch or ts_event is required.", "ts_epoch")
        return data


EVENT = BrevoEvent()
# request, delivered, opened, click and codes Brevo adds later have no schema: they are ignored
SCHEMAS: dict[str, Schema] = {code: EVENT for code in KINDS}


def _kind(code: str, data: dict[str, Any]) -> Kind:
    return KINDS[code]


class BrevoParser(EspParser):
    esp = "brevo"
    known_codes = frozenset(
        {*SCHEMAS, "request", "delivered", "deferred", "opened", "unique_opened", "click"}
        | {"proxy_open", "unique_proxy_open", "error"}
    )
    settings = ("TOKEN",)
    optional_settings = {"USERNAME": "brevo"}
    verification = (
        "Bearer token (webhook `auth` object) or HTTP Basic credentials USERNAME:TOKEN in the URL"
    )

    def verify(self, request: InboundRequest) -> None:
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() == "basic":
            username = self.source.get("USERNAME", "brevo")
            check_basic_auth(request, [(username, token) for token in self.secrets("TOKEN")])
            return
        if scheme.lower() != "bearer" or not value.strip():
            raise SignatureInvalid("bearer token or basic auth credentials missing")
        given = value.strip()
        if not given.isascii():  # header values are ASCII; anything else cannot match
            raise SignatureInvalid("bearer token malformed")
        ok = False
        for token in self.secrets("TOKEN"):  # no early exit: every configured token is compared
            ok |= equal(given, token)
        if not ok:
            raise SignatureInvalid("bearer token does not match")

    def parse(self, body: bytes) -> ParseResult:
        doc = load_json(body)
        # a plain webhook posts one object; a webhook created with "batched": true, an array
        items = [doc] if isinstance(doc, dict) else doc
        if not isinstance(items, list):
            raise PayloadInvalid("expected a JSON object or an array of them")
        return self._parse_items(items)

    def parse_item(self, raw: Any) -> ParseResult:
        """One event (of a batch, or alone), as quarantined."""
        return self._parse_items([raw])

    def _parse_items(self, items: list[Any]) -> ParseResult:
        result = ParseResult()
        for item, data, kind in hygiene_items(items, SCHEMAS, _kind, result):
            email = normalize_email(data["email"])
            message_id = text(data["message_id"])
            reason = text(data["reason"])
            result.events.append(
                HygieneEvent(
                    # Brevo sends no event id (`id` is the webhook's)
                    key=content_key(self.esp, email, kind, data["occurred_at"], message_id),
                    source=self.name,
                    esp=self.esp,
                    email=email,
                    kind=kind,
                    occurred_at=data["occurred_at"],
                    message_id=message_id,
                    reason=reason.strip() if reason else None,
                    raw=item,
                )
            )
        return result
