"""Postal (self-hosted) webhooks: one JSON event per request, RSA-signed with the server's key.

Docs: https://docs.postalserver.io/developer/webhooks (events, envelope, "Verifying signatures");
source: postalserver/postal lib/postal/http.rb and app/lib/signer.rb (PKCS#1 v1.5, base64).
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from marshmallow import EXCLUDE, Schema, fields, validate

from syncworker.errors import PayloadInvalid, SignatureInvalid
from syncworker.events import HygieneEvent, Kind, normalize_email
from syncworker.intake.contract import (
    EspParser,
    InboundRequest,
    ParseResult,
    UnixTime,
    hygiene_items,
    load_json,
    text,
)
from syncworker.intake.fields import Address

if TYPE_CHECKING:
    from syncworker.config import SourceConfig

# MessageDeliveryFailed / MessageDelayed: payload.status -> Kind. HardFail is what Postal itself
# puts on its suppression list. Postal reports no final soft verdict, so each SoftFail (a 4xx or
# an unreachable MX, retried) is the only soft signal there is and counts towards the threshold.
STATUSES: dict[str, Kind] = {"HardFail": Kind.HARD_BOUNCE, "SoftFail": Kind.SOFT_BOUNCE}
# MessageBounced (a DSN after the MX accepted the message): hard, unless the bounce says "soft"
# (bounce.bounce_type, sent by newer Postal builds; the documented payload has no type)
BOUNCE_TYPES: dict[str, Kind] = {"soft": Kind.SOFT_BOUNCE}
# MessageHeld: Postal holds a message it will not send. Held because the recipient is on the
# server's suppression list (details "Recipient (...) is on the suppression list (reason: too
# many hard fails)", postalserver/postal app/lib/message_dequeuer/outgoing_message_processor.rb),
# it is proof of earlier hard fails: a hard bounce, at once. Any other hold (a credential that
# holds all mail, the spam threshold, development mode) is about the message and is ignored.
ON_SUPPRESSION_LIST = "is on the suppression list"
# MessageSent, MessageLinkClicked, MessageLoaded, DomainDNSError and SendLimit* say nothing bad
# about an address; Postal sends no complaint or unsubscribe events.
SIGNATURE_256 = "X-Postal-Signature-256"  # RSA-SHA256, Postal >= 3.2
SIGNATURE_SHA1 = "X-Postal-Signature"  # RSA-SHA1, the only one before 3.2
_SMTP_CODE = re.compile(r"\A\s*([245]\d\d)\b")
_TRUE = frozenset({"1", "true", "yes", "on"})


class _Lenient(Schema):
    class Meta:
        unknown = EXCLUDE


class PostalMessage(_Lenient):
    to = Address(required=True)  # the RCPT TO address
    message_id = fields.Raw(load_default=None)
    direction = fields.Raw(load_default=None)


class PostalStatus(_Lenient):
    status = fields.String(required=True)
    message = fields.Nested(PostalMessage, required=True)
    output = fields.Raw(load_default=None)
    details = fields.Raw(load_default=None)


class PostalBounce(_Lenient):
    original_message = fields.Nested(PostalMessage, required=True)
    bounce = fields.Raw(load_default=None)


class PostalEvent(_Lenient):
    event = fields.String(required=True)
    timestamp = UnixTime()  # when Postal queued the webhook; the same on every retry
    uuid = fields.String(required=True, validate=validate.Length(min=1))


class PostalStatusEvent(PostalEvent):
    payload = fields.Nested(PostalStatus, required=True)


class PostalBounceEvent(PostalEvent):
    payload = fields.Nested(PostalBounce, required=True)


SCHEMAS: dict[str, Schema] = {
    "MessageDeliveryFailed": PostalStatusEvent(),
    "MessageDelayed": PostalStatusEvent(),
    "MessageHeld": PostalStatusEvent(),
    "MessageBounced": PostalBounceEvent(),
}


def _kind(code: str, data: dict[str, Any]) -> Kind | None:
    payload = data["payload"]
    if code == "MessageBounced":
        bounce = payload["bounce"]
        bounce_type = text(bounce.get("bounce_type")) if isinstance(bounce, dict) else None
        return BOUNCE_TYPES.get(bounce_type or "", Kind.HARD_BOUNCE)
    if payload["message"]["direction"] == "incoming":
        return None  # a failed delivery to one of our own HTTP or SMTP endpoints
    if code == "MessageHeld":
        held = ON_SUPPRESSION_LIST in (text(payload["details"]) or "")
        return Kind.HARD_BOUNCE if held else None
    return STATUSES.get(payload["status"])


def _b64url_int(value: Any) -> int:
    if not isinstance(value, str):
        raise ValueError("JWK n or e missing")
    return int.from_bytes(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)), "big")


def _jwk_keys(doc: Any) -> list[rsa.RSAPublicKey]:
    """The RSA keys of a JWK or of a JWK Set (``{"keys": [...]}``)."""
    jwks = doc.get("keys", [doc]) if isinstance(doc, dict) else None
    keys = [
        rsa.RSAPublicNumbers(_b64url_int(jwk.get("e")), _b64url_int(jwk.get("n"))).public_key()
        for jwk in (jwks if isinstance(jwks, list) else [])
        if isinstance(jwk, dict) and jwk.get("kty") == "RSA"
    ]
    if not keys:
        raise ValueError("no RSA key in the JWK (Set)")
    return keys


def load_public_keys(value: str) -> list[rsa.RSAPublicKey]:
    """Postal's public key as PEM, as the DKIM-style ``p=`` value (or the whole record), or as
    the JWK / JWK Set served at ``/.well-known/jwks.json``."""
    value = value.strip()
    try:
        if value.startswith("{"):
            return _jwk_keys(orjson.loads(value))
        if "-----BEGIN" in value:
            key = serialization.load_pem_public_key(value.encode())
        else:
            p_value = re.search(r"(?:^|;)\s*p=([^;]*)", value)
            data = p_value.group(1) if p_value else value
            key = serialization.load_der_public_key(base64.b64decode("".join(data.split())))
    except (ValueError, TypeError, UnsupportedAlgorithm):  # orjson's error is a ValueError
        raise ValueError("not a PEM, base64 DER (p=) or JWK RSA public key") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("not an RSA public key")
    return [key]


class PostalParser(EspParser):
    esp = "postal"
    known_codes = frozenset(
        {*SCHEMAS, "MessageSent", "MessageHeld", "MessageLinkClicked", "MessageLoaded"}
        | {"DomainDNSError", "SendLimitApproaching", "SendLimitExceeded"}
    )
    settings = ("PUBLIC_KEY",)
    optional_settings = {"ALLOW_SHA1": "false"}
    verification = "RSA PKCS#1 v1.5 SHA-256 signature of the raw body (SHA-1 if allowed)"

    def __init__(self, source: SourceConfig, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__(source, clock=clock)
        # parsed once: a key that does not load stops startup instead of failing every request
        loaded = self.load_keys("PUBLIC_KEY", load_public_keys)  # a value may hold several
        self._keys: list[rsa.RSAPublicKey] = [key for keys in loaded for key in keys]
        allow = source.get("ALLOW_SHA1", self.optional_settings["ALLOW_SHA1"])
        self._allow_sha1 = allow.strip().lower() in _TRUE

    def verify(self, request: InboundRequest) -> None:
        # the SHA-256 header decides when present: no falling back to SHA-1 past a bad one
        algorithm: hashes.HashAlgorithm = hashes.SHA256()
        signature = request.headers.get(SIGNATURE_256, "")
        if not signature and self._allow_sha1:
            signature, algorithm = request.headers.get(SIGNATURE_SHA1, ""), hashes.SHA1()
        if not signature:
            hint = "" if self._allow_sha1 else " (Postal < 3.2 signs only with SHA-1: ALLOW_SHA1)"
            raise SignatureInvalid(f"{SIGNATURE_256} header missing{hint}")
        try:
            raw = base64.b64decode(signature.strip(), validate=True)
        except ValueError:
            raise SignatureInvalid("signature header is not base64") from None
        # Postal signs no send time (`timestamp` is the queue time, repeated on retries for
        # ~36 min), so there is no skew to bound: a replay carries the same uuid and dedupes
        for key in self._keys:
            try:
                key.verify(raw, request.body, padding.PKCS1v15(), algorithm)
                return
            except InvalidSignature:
                continue
        raise SignatureInvalid("signature does not match any configured public key")

    def parse(self, body: bytes) -> ParseResult:
        return self.parse_item(load_json(body))

    def parse_item(self, raw: Any) -> ParseResult:
        """The body is the one event, so a quarantined item is parsed like a body."""
        doc = raw
        if not isinstance(doc, dict):
            raise PayloadInvalid("expected a JSON object {event, timestamp, uuid, payload}")
        result = ParseResult()
        for item, data, kind in hygiene_items([doc], SCHEMAS, _kind, result):
            payload = data["payload"]
            message = payload.get("message") or payload["original_message"]
            output = text(payload.get("output"))
            smtp = _SMTP_CODE.match(output or "")
            result.events.append(
                HygieneEvent(
                    # uuid: the same on every delivery attempt of this webhook request
                    key=f"{self.esp}:{data['uuid']}",
                    source=self.name,
                    esp=self.esp,
                    email=normalize_email(message["to"]),
                    kind=kind,
                    occurred_at=data["timestamp"],
                    message_id=text(message["message_id"]),
                    reason=output or text(payload.get("details")),
                    smtp_code=smtp.group(1) if smtp else None,
                    raw=item,
                )
            )
        return result
