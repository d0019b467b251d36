"""Mandrill: `mandrill_events=<JSON>` form bodies, X-Mandrill-Signature over URL + sorted fields."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from urllib.parse import urlencode

import orjson

from syncworker.intake.contract import InboundRequest
from tests.intake.signing import UNKNOWN_CODE, URL, EspSigner, request

#: the URL entered in Mandrill; the every-source test's SYNCWORKER_PUBLIC_URL makes the app see it
WEBHOOK_URL = URL + "mandrill"


def mandrill_signature(key: str, url: str, fields: list[tuple[str, str]]) -> str:
    signed = url + "".join(k + v for k, v in sorted(fields, key=lambda kv: kv[0]))
    digest = hmac.new(key.encode(), signed.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def mandrill_request(
    events: str | bytes,
    key: str,
    signed_url: str = WEBHOOK_URL,
    extra: list[tuple[str, str]] | None = None,
) -> InboundRequest:
    """A form post of `events` (the JSON text of mandrill_events) to the app's Mandrill URL,
    signed as Mandrill would for a webhook configured with `signed_url`.

    Mandrill only ever posts text, so bytes that are not UTF-8 are decoded with replacement.
    """
    text = events.decode("utf-8", "replace") if isinstance(events, bytes) else events
    fields = [("mandrill_events", text), *(extra or [])]
    headers = {
        "X-Mandrill-Signature": mandrill_signature(key, signed_url, fields),
        "Content-Type": "application/x-www-form-urlencoded",
    }
    return request(urlencode(fields).encode(), headers, path="mandrill")


def signer() -> EspSigner:
    key = secrets.token_urlsafe(16)
    return EspSigner(
        esp="mandrill",
        values={"WEBHOOK_KEY": key},
        # a body here is the JSON of mandrill_events, as stored in tests/payloads/mandrill/
        sign=lambda body: mandrill_request(body, key),
        envelope=lambda event: orjson.dumps([event]),
        unknown_event={
            "event": UNKNOWN_CODE,
            "_id": "x",
            "ts": 1700000000,
            "msg": {"email": "someone@example.com"},
        },
        sample=(
            "batch",
            {
                "hard_bounce": 2,
                "soft_bounce": 1,
                "spam_complaint": 1,
                "unsubscribe": 2,
                "blocked": 1,
            },
        ),
    )
