"""Scaleway TEM via Topics and Events: SNS-style messages signed by a leaf certificate that a
test CA issued; the CA is the source's CA_BUNDLE and the loopback SNS server serves the leaf."""

from __future__ import annotations

import secrets
import uuid

import orjson
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.intake.signers.amazon_ses import (
    SnsSigner,
    certificate,
    notification,
    pem,
    sns_server,
)
from tests.intake.signing import UNKNOWN_CODE, EspSigner


def make_ca() -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    """A CA standing in for "Scaleway MnQ Root": its key and certificate."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key, certificate(key, "Scaleway MnQ Root (test)", ca=True, days=3650)


def scaleway_signer(topic: str, ca: tuple[rsa.RSAPrivateKey, x509.Certificate]) -> SnsSigner:
    """A fresh signing key whose certificate ``ca`` issued, served by the loopback server."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    leaf = certificate(key, "Scaleway MnQ SNS signing (test)", issuer=ca)
    return SnsSigner(key, sns_server().serve(pem(leaf)), topic)


def signer() -> EspSigner:
    server = sns_server()
    ca = make_ca()
    topic = f"arn:scw:sns:fr-par:project-{uuid.uuid4()}:tem-events-{secrets.token_hex(4)}"
    sns = scaleway_signer(topic, ca)
    return EspSigner(
        esp="scaleway_tem",
        values={"TOPIC_ARNS": topic, "CA_BUNDLE": pem(ca[1]).decode(), **server.settings()},
        sign=sns.resign,
        envelope=lambda event: orjson.dumps(notification(event, topic)),
        unknown_event={
            "id": str(uuid.uuid4()),
            "type": UNKNOWN_CODE,
            "email_to": "someone@example.com",
            "created_at": "2026-01-15T10:30:00Z",
        },
        wrong_shape=orjson.dumps(notification("not a TEM event", topic)),
        signs_any_bytes=False,
        extra={"sns": sns, "ca": ca},
        sample=("email_dropped", {"hard_bounce": 1}),
    )
