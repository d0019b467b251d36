"""Postal: RSA signatures of the raw body with a key pair generated here, as Postal >= 3.2 sends."""

from __future__ import annotations

import base64
import hashlib

import orjson
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.intake.signing import UNKNOWN_CODE, EspSigner, request

SIGNATURE_256 = "X-Postal-Signature-256"
SIGNATURE_SHA1 = "X-Postal-Signature"
KID = "X-Postal-Signature-KID"


def postal_keypair() -> tuple[rsa.RSAPrivateKey, str]:
    """A fresh key pair; the public half as Postal shows it in its DNS record (``p=`` value)."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    der = private.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return private, base64.b64encode(der).decode()


def sign_postal(body: bytes, private: rsa.RSAPrivateKey, sha1: bool = True) -> dict[str, str]:
    """The headers Postal adds: SHA-256 and legacy SHA-1 signatures and the key id."""
    der = private.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    headers = {
        SIGNATURE_256: base64.b64encode(
            private.sign(body, padding.PKCS1v15(), hashes.SHA256())
        ).decode(),
        KID: hashlib.sha256(der).hexdigest(),  # Postal sends the JWK thumbprint; never checked
    }
    if sha1:
        signature = private.sign(body, padding.PKCS1v15(), hashes.SHA1())
        headers[SIGNATURE_SHA1] = base64.b64encode(signature).decode()
    return headers


def signer() -> EspSigner:
    private, public = postal_keypair()
    return EspSigner(
        esp="postal",
        values={"PUBLIC_KEY": public},
        sign=lambda body: request(body, sign_postal(body, private)),
        envelope=orjson.dumps,
        unknown_event={
            "event": UNKNOWN_CODE,
            "timestamp": 1700000000.5,
            "uuid": "00000000-0000-4000-8000-000000000000",
            "payload": {},
        },
        extra={"private_key": private},
        sample=("delivery_failed", {"hard_bounce": 1}),
    )
