"""Standard Webhooks senders: webhook-* (or Svix's svix-*) headers over fresh whsec_ secrets.

The signature comes from the webhook receiver emulator's own implementation of the spec, so the
parser is checked against code it does not share.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import orjson

from syncworker.devkit.emulators.webhook_receiver import new_secret, sign
from syncworker.intake.contract import InboundRequest
from tests.intake.signing import UNKNOWN_CODE, EspSigner, request


def signed_headers(
    body: bytes,
    *secrets_: str,
    prefix: str = "webhook-",
    msg_id: str | None = None,
    timestamp: int | None = None,
) -> dict[str, str]:
    """The three headers for ``body``, one ``v1`` signature per secret (as a rotating sender)."""
    msg_id = msg_id or "msg_" + secrets.token_hex(13)
    ts = str(int(time.time()) if timestamp is None else timestamp)
    signature = " ".join(sign(secret, msg_id, ts, body) for secret in secrets_)
    return {f"{prefix}id": msg_id, f"{prefix}timestamp": ts, f"{prefix}signature": signature}


def envelope(event: Any) -> bytes:
    return orjson.dumps({"events": [event]})


def signer() -> EspSigner:
    secret = new_secret()

    def sign_request(body: bytes) -> InboundRequest:
        return request(body, signed_headers(body, secret))

    return EspSigner(
        esp="standard_webhooks",
        values={"SECRET": secret},
        sign=sign_request,
        envelope=envelope,
        unknown_event={
            "kind": UNKNOWN_CODE,
            "email": "someone@example.com",
            "occurred_at": "2025-03-01T10:00:00Z",
        },
        extra={"secret": secret},
        sample=(
            "batch",
            {
                "hard_bounce": 1,
                "soft_bounce": 1,
                "blocked": 1,
                "spam_complaint": 1,
                "unsubscribe": 1,
                "resubscribe": 1,
            },
        ),
    )
