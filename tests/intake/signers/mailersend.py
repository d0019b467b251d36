"""MailerSend: hex HMAC-SHA256 of the raw body in the Signature header, fresh signing secret."""

from __future__ import annotations

import hashlib
import hmac
import secrets

import orjson

from syncworker.intake.contract import InboundRequest
from tests.intake.signing import UNKNOWN_CODE, EspSigner, request


def signature(body: bytes, secret: str) -> dict[str, str]:
    return {"Signature": hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()}


def signer() -> EspSigner:
    secret = secrets.token_urlsafe(24)

    def sign_request(body: bytes) -> InboundRequest:
        return request(body, signature(body, secret))

    return EspSigner(
        esp="mailersend",
        values={"SIGNING_SECRET": secret},
        sign=sign_request,
        envelope=orjson.dumps,
        unknown_event={
            "type": UNKNOWN_CODE,
            "created_at": "2025-08-05T21:23:54.000000Z",
            "data": {"id": "x", "email": "someone@example.com"},
        },
        wrong_shape=b'["not", "one", "event"]',
        extra={"secret": secret},
        sample=("hard_bounced", {"hard_bounce": 1}),
    )
