"""Mailtrap: HMAC-SHA256 of the raw body in Mailtrap-Signature, with a secret generated here."""

from __future__ import annotations

import hashlib
import hmac
import secrets

import orjson

from tests.intake.signing import UNKNOWN_CODE, EspSigner, request

SIGNATURE = "Mailtrap-Signature"


def sign_mailtrap(body: bytes, secret: str) -> dict[str, str]:
    """The header Mailtrap adds: lowercase hex HMAC-SHA256(signing secret, raw body)."""
    return {SIGNATURE: hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()}


def signer() -> EspSigner:
    secret = secrets.token_hex(16)  # Mailtrap's signing secrets are 32 hex characters
    return EspSigner(
        esp="mailtrap",
        values={"SIGNING_SECRET": secret},
        sign=lambda body: request(body, sign_mailtrap(body, secret)),
        envelope=lambda event: orjson.dumps({"events": [event]}),
        unknown_event={
            "event": UNKNOWN_CODE,
            "email": "someone@example.com",
            "timestamp": 1700000000,
            "event_id": "x",
        },
        wrong_shape=b'{"events": "not an array"}',
        sample=(
            "batch",
            {
                "hard_bounce": 1,
                "soft_bounce": 1,
                "blocked": 1,
                "spam_complaint": 1,
                "unsubscribe": 2,
            },
        ),
    )
