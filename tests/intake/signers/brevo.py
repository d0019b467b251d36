"""Brevo: a bearer token (or Basic credentials) fixed when the webhook is created."""

from __future__ import annotations

import secrets

import orjson

from tests.intake.signing import UNKNOWN_CODE, EspSigner, request


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


def signer() -> EspSigner:
    token = secrets.token_urlsafe(24)
    return EspSigner(
        esp="brevo",
        values={"TOKEN": token},
        sign=lambda body: request(body, bearer(token)),
        # the batched form: a bare object would make a JSON array event look like a whole batch
        envelope=lambda event: orjson.dumps([event]),
        unknown_event={
            "event": UNKNOWN_CODE,
            "email": "someone@example.com",
            "ts_epoch": 1700000000000,
        },
        sample=(
            "batched",
            {
                "hard_bounce": 3,
                "soft_bounce": 1,
                "spam_complaint": 2,
                "unsubscribe": 1,
            },
        ),
    )
