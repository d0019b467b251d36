"""Resend: Svix signatures (svix-* headers) over a fresh whsec_ signing secret."""

from __future__ import annotations

import orjson

from syncworker.devkit.emulators.webhook_receiver import new_secret
from syncworker.intake.contract import InboundRequest
from tests.intake.signers.standard_webhooks import signed_headers
from tests.intake.signing import UNKNOWN_CODE, EspSigner, request


def signer() -> EspSigner:
    secret = new_secret()

    def sign_request(body: bytes) -> InboundRequest:
        return request(body, signed_headers(body, secret, prefix="svix-"))

    return EspSigner(
        esp="resend",
        values={"SIGNING_SECRET": secret},
        sign=sign_request,
        envelope=orjson.dumps,
        unknown_event={
            "type": UNKNOWN_CODE,
            "created_at": "2024-11-22T23:41:12.126Z",
            "data": {"email_id": "x", "to": ["someone@example.com"]},
        },
        wrong_shape=b'["not", "one", "event"]',
        extra={"secret": secret},
        sample=("bounced_permanent", {"hard_bounce": 1}),
    )
