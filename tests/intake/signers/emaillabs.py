"""EmailLabs: HTTP Basic credentials plus the X-Webhook-Checksum headers, fresh test secrets."""

from __future__ import annotations

import hashlib
import secrets
import uuid

import orjson

from syncworker.intake.contract import InboundRequest
from tests.intake.signing import UNKNOWN_CODE, EspSigner, basic_auth_header, request

#: X-Webhook-Date has no documented format; the parser signs it as an opaque string
DATE = "2024-05-06 10:15:00"


def checksum_headers(
    secret: str, date: str = DATE, request_id: str | None = None
) -> dict[str, str]:
    """The three headers EmailLabs sends with each POST: hex SHA-1 of secret|date|request id."""
    request_id = str(uuid.uuid4()) if request_id is None else request_id
    digest = hashlib.sha1(f"{secret}|{date}|{request_id}".encode()).hexdigest()
    return {"X-Webhook-Date": date, "Request-Id": request_id, "X-Webhook-Checksum": digest}


def signer() -> EspSigner:
    user, password = "emaillabs-hooks", secrets.token_urlsafe(18)
    secret_key = secrets.token_hex(20)

    def sign(body: bytes) -> InboundRequest:
        return request(body, {**basic_auth_header(user, password), **checksum_headers(secret_key)})

    return EspSigner(
        esp="emaillabs",
        values={"USERNAME": user, "PASSWORD": password, "SECRET_KEY": secret_key},
        sign=sign,
        envelope=lambda event: orjson.dumps([event]),
        unknown_event={
            "status": UNKNOWN_CODE,
            "statusTime": 1700000000,
            "to": {"email": "someone@example.com", "messageId": "x@example.com"},
        },
        sample=("batch", {"hard_bounce": 1, "soft_bounce": 1, "blocked": 1}),
    )
