"""Standard Webhooks signatures (Svix's scheme, unbranded): one verifier for every source using it.

Spec: https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md
and https://docs.svix.com/receiving/verifying-payloads/how-manual. A request carries three headers:
``webhook-id``, ``webhook-timestamp`` (Unix seconds) and ``webhook-signature``, a space-separated
list of ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{raw body}">`` keyed with the base64 part
of a ``whsec_`` secret. Svix-run senders (Resend) name the headers ``svix-*``; both are read.
One matching ``v1`` entry is enough: the sender lists one per secret while it rotates, and we
accept the current or the previous secret while we rotate. The timestamp must be within the
allowed skew, which bounds replays; the id is the sender's idempotency key. Payload times in this
convention are ISO 8601 (:class:`IsoTime`).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

from syncworker.errors import SignatureInvalid
from syncworker.intake.contract import EspParser, InboundRequest, ParseResult, equal

if TYPE_CHECKING:
    from syncworker.config import SourceConfig

SECRET_PREFIX = "whsec_"
# (id, timestamp, signature) header names: the spec's, then Svix's; the first complete set is used
HEADER_SETS = (
    ("webhook-id", "webhook-timestamp", "webhook-signature"),
    ("svix-id", "svix-timestamp", "svix-signature"),
)
MAX_ID_LENGTH = 256  # ids are short (msg_<ksuid>); anything longer is not a message id


def decode_secret(value: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret; the prefix and base64 padding are optional."""
    encoded = value.strip().removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not a whsec_ secret (whsec_ + base64)") from None
    if not key:
        raise ValueError("empty secret")
    return key


def signature(key: bytes, msg_id: str, timestamp: str, body: bytes) -> bytes:
    """The HMAC-SHA256 that a ``v1`` signature carries in base64."""
    return hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()


def v1_signatures(header: str) -> list[bytes]:
    """The decoded ``v1`` entries of a signature header; other versions (``v1a``) are skipped."""
    found: list[bytes] = []
    for entry in header.split():
        version, comma, value = entry.partition(",")
        if version != "v1" or not comma:
            continue
        try:
            found.append(base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError):
            continue
    return found


class StandardWebhooksSignedParser(EspParser):
    """Base of sources signed with Standard Webhooks; a subclass sets ``esp`` and writes parse().

    ``settings[0]`` names the signing secret (default ``SECRET``); its ``_PREVIOUS`` twin is
    accepted as well, so the secret can be rotated without downtime.
    """

    settings: ClassVar[tuple[str, ...]] = ("SECRET",)
    verification = (
        "Standard Webhooks: HMAC-SHA256 of id.timestamp.body, whsec_ secret; skew ≤ 5 min"
    )

    def __init__(self, source: SourceConfig, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__(source, clock=clock)
        # decoded once: a secret that is not whsec_ + base64 is a configuration error, not a 401
        self._keys: list[bytes] = self.load_keys(self.settings[0], decode_secret)

    def verify(self, request: InboundRequest) -> None:
        msg_id, timestamp, header = _signed_headers(request)
        if len(msg_id) > MAX_ID_LENGTH or not (msg_id.isascii() and msg_id.isprintable()):
            raise SignatureInvalid("message id header is malformed")
        if not (timestamp.isascii() and timestamp.isdigit()):
            raise SignatureInvalid("timestamp header is not Unix seconds")
        self.check_timestamp(timestamp)
        given = v1_signatures(header)
        if not given:
            raise SignatureInvalid("signature header holds no v1 signature")
        ok = False
        for key in self._keys:
            expected = signature(key, msg_id, timestamp, request.body)
            for candidate in given:  # no early exit: every pair is compared
                ok |= equal(expected, candidate)
        if not ok:
            raise SignatureInvalid("signature does not match any configured secret")

    def parse_request(self, request: InboundRequest) -> ParseResult:
        """A single event without an id of its own is keyed on the signed message id, which the
        sender keeps the same on every retry of the delivery (the spec's idempotency key)."""
        result = self.parse(request.body)
        if len(result.events) == 1 and result.events[0].key.startswith(f"{self.esp}:h:"):
            msg_id = _signed_headers(request)[0]
            key = f"{self.esp}:{self.name}:msg:{msg_id}"  # scoped: two accounts cannot collide
            result.events[0] = dataclasses.replace(result.events[0], key=key)
        return result


def _signed_headers(request: InboundRequest) -> tuple[str, str, str]:
    for names in HEADER_SETS:
        msg_id, timestamp, header = (request.headers.get(name, "").strip() for name in names)
        if msg_id and timestamp and header:
            return msg_id, timestamp, header
    raise SignatureInvalid("webhook-id, webhook-timestamp or webhook-signature header missing")
