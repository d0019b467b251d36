"""SparkPost: HTTP Basic credentials (the webhook's Basic Auth setting), fresh test secrets."""

from __future__ import annotations

import secrets
from typing import Any

import orjson

from tests.intake.signing import UNKNOWN_CODE, EspSigner, basic_auth_header, request


def wrap(event: Any, event_class: str = "message_event") -> bytes:
    """One native event in SparkPost's batch envelope: ``[{"msys": {class: event}}]``."""
    return orjson.dumps([{"msys": {event_class: event}}])


def signer() -> EspSigner:
    user, password = "sparkpost-hooks", secrets.token_urlsafe(18)
    return EspSigner(
        esp="sparkpost",
        values={"USERNAME": user, "PASSWORD": password},
        sign=lambda body: request(body, basic_auth_header(user, password)),
        envelope=wrap,
        unknown_event={
            "type": UNKNOWN_CODE,
            "rcpt_to": "someone@example.com",
            "timestamp": "1700000000",
            "event_id": "1",
        },
        sample=(
            "batch",
            {
                "hard_bounce": 2,
                "soft_bounce": 1,
                "blocked": 2,
                "spam_complaint": 1,
                "unsubscribe": 3,
            },
        ),
    )
