"""Unisender Go: `auth` = MD5 of the raw body with the auth value replaced by the API key."""

from __future__ import annotations

import hashlib
import json
import secrets
from typing import Any

import orjson

from syncworker.intake.contract import InboundRequest
from tests.intake.signing import UNKNOWN_CODE, EspSigner, request

#: the auth value of the stored payloads in tests/payloads/unisender_go/, replaced when signing
PLACEHOLDER = "0" * 32


def unisender_json(doc: Any) -> bytes:
    """JSON as Unisender writes it: compact, UTF-8, with "/" escaped as "\\/"."""
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).replace("/", "\\/").encode()


def sign_raw(body: bytes, api_key: str, placeholder: str = PLACEHOLDER) -> bytes:
    """Sign `body` byte for byte as Unisender does: hash it with the API key in place of the auth
    value, then put the hash there."""
    auth = hashlib.md5(body.replace(placeholder.encode(), api_key.encode())).hexdigest()
    return body.replace(placeholder.encode(), auth.encode())


def sign_unisender(body: bytes, api_key: str) -> bytes:
    """A JSON object body signed; a stored payload keeps its bytes, anything else is written
    the way Unisender writes JSON. Bodies that are not objects are left as they are."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    if not isinstance(doc, dict):
        return body
    if doc.get("auth") == PLACEHOLDER and body.count(PLACEHOLDER.encode()) == 1:
        return sign_raw(body, api_key)
    placeholder = secrets.token_hex(16)
    return sign_raw(unisender_json({**doc, "auth": placeholder}), api_key, placeholder)


def envelope(event: Any) -> bytes:
    group = {"user_id": 456, "project_id": "6432890213745872", "events": [event]}
    return unisender_json({"auth": PLACEHOLDER, "events_by_user": [group]})


def signer() -> EspSigner:
    api_key = secrets.token_hex(20)

    def sign(body: bytes) -> InboundRequest:
        return request(sign_unisender(body, api_key), {"Content-Type": "application/json"})

    return EspSigner(
        esp="unisender_go",
        values={"API_KEY": api_key},
        sign=sign,
        envelope=envelope,
        unknown_event={
            "event_name": "transactional_email_status",
            "event_data": {
                "email": "someone@example.com",
                "status": UNKNOWN_CODE,
                "event_time": "2023-11-14 22:13:20",
            },
        },
        wrong_shape=b'{"events_by_user": {"events": []}}',
        signs_any_bytes=False,
        sample=(
            "batch",
            {
                "hard_bounce": 1,
                "soft_bounce": 1,
                "spam_complaint": 1,
                "unsubscribe": 1,
                "blocked": 1,
            },
        ),
    )
