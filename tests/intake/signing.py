"""Sign test requests the way each ESP does, with secrets generated here and never committed.

``SIGNERS`` maps every ESP slug to a factory of :class:`EspSigner` (fresh random secrets on each
call). The contract and fuzz tests run over ``ESP_PARSERS`` and fail when an ESP has no signer:
a new ESP module adds one here.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib
import json
import pkgutil
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from syncworker.config import SourceConfig
from syncworker.intake.contract import EspParser, InboundRequest
from syncworker.intake.registry import ESP_PARSERS

PAYLOADS = Path(__file__).resolve().parent.parent / "payloads"
URL = "https://hooks.example.com/webhooks/"
SENDGRID_SIGNATURE = "X-Twilio-Email-Event-Webhook-Signature"
SENDGRID_TIMESTAMP = "X-Twilio-Email-Event-Webhook-Timestamp"
#: an event code no ESP uses; the contract test checks it is counted as ignored
UNKNOWN_CODE = "syncworker_test_unknown"


def payload(esp: str, case: str) -> bytes:
    """The bytes of tests/payloads/<esp>/<case>.json, exactly as stored."""
    return (PAYLOADS / esp / f"{case}.json").read_bytes()


def request(body: bytes, headers: dict[str, str] | None = None, path: str = "") -> InboundRequest:
    return InboundRequest(body=body, headers=headers or {}, url=URL + path)


def headers_of(req: InboundRequest) -> dict[str, str]:
    """The headers a signer put on ``req`` (a plain mapping here), as a dict to send."""
    headers = req.headers
    assert isinstance(headers, Mapping), type(headers)
    return dict(headers)


# -- SendGrid: ECDSA P-256 over timestamp + body -----------------------------------------------


def sendgrid_keypair() -> tuple[ec.EllipticCurvePrivateKey, str]:
    """A fresh key pair; the public half as SendGrid's settings page shows it (base64 SPKI DER)."""
    private = ec.generate_private_key(ec.SECP256R1())
    der = private.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return private, base64.b64encode(der).decode()


def sendgrid_public_pem(private_key: ec.EllipticCurvePrivateKey) -> str:
    return (
        private_key.public_key()
        .public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def sign_sendgrid(
    body: bytes, private_key: ec.EllipticCurvePrivateKey, timestamp: int | None = None
) -> dict[str, str]:
    """The two headers of SendGrid's Signed Event Webhook for ``body``."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    signature = private_key.sign(ts.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {SENDGRID_SIGNATURE: base64.b64encode(signature).decode(), SENDGRID_TIMESTAMP: ts}


# -- Mailgun: HMAC-SHA256(signing key, timestamp + token), inside the JSON body ------------------


def sign_mailgun(
    signing_key: str, timestamp: int | None = None, token: str | None = None
) -> dict[str, str]:
    """Mailgun's ``signature`` object (timestamp and token as strings, as Mailgun sends them)."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    token = secrets.token_hex(25) if token is None else token
    digest = hmac.new(signing_key.encode(), (ts + token).encode(), hashlib.sha256).hexdigest()
    return {"timestamp": ts, "token": token, "signature": digest}


def mailgun_body(
    event_data: Any, signing_key: str, timestamp: int | None = None, token: str | None = None
) -> bytes:
    return orjson.dumps(
        {"signature": sign_mailgun(signing_key, timestamp, token), "event-data": event_data}
    )


def mailgun_legacy_request(
    fields: list[tuple[str, str]] | list[list[str]],
    signing_key: str,
    timestamp: int | None = None,
    token: str | None = None,
) -> InboundRequest:
    """A legacy Mailgun post: the event's form fields, then timestamp, token and signature."""
    signature = sign_mailgun(signing_key, timestamp, token)
    pairs = [_form_field(field) for field in fields if isinstance(field, list | tuple)]
    pairs += [(k, signature[k]) for k in SIGNATURE_ORDER]
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    return request(urlencode(pairs).encode(), headers)


SIGNATURE_ORDER = ("timestamp", "token", "signature")


def _form_field(field: list[Any] | tuple[Any, ...]) -> tuple[str, str]:
    """A stored ``[name, value]`` as a form field; a fuzzed one (other types, other lengths) as
    text, so that a mutated legacy post is still posted as a form."""
    name, value = (list(field) + ["", ""])[:2]
    as_text = [x if isinstance(x, str) else _text(x) for x in (name, value)]
    return as_text[0], as_text[1]


def _text(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # nested past orjson's 254 levels
        return json.dumps(value)


def resign_mailgun(
    body: bytes, signing_key: str, timestamp: int | None = None, token: str | None = None
) -> bytes:
    """A stored Mailgun payload with its placeholder signature replaced by a valid one."""
    doc = json.loads(body)
    doc["signature"] = sign_mailgun(signing_key, timestamp, token)
    return json.dumps(doc).encode()


# -- Postmark, Mailjet: HTTP Basic ---------------------------------------------------------------


def basic_auth_header(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


# -- one signer per ESP, for the contract and fuzz tests -----------------------------------------


@dataclass(frozen=True)
class EspSigner:
    """Test secrets for one ESP and how to present a body as that ESP would."""

    esp: str
    values: dict[str, str]
    #: authenticate ``body`` as the ESP does (for Mailgun: re-sign a JSON object body)
    sign: Callable[[bytes], InboundRequest]
    #: wrap one native event into the ESP's body
    envelope: Callable[[Any], bytes]
    #: a hygiene-free event with code UNKNOWN_CODE, as the ESP would send it
    unknown_event: dict[str, Any]
    #: valid JSON that is not this ESP's envelope (e.g. a scalar where an array belongs)
    wrong_shape: bytes = b'"not an envelope"'
    #: False where the signature lives inside the JSON body, so arbitrary bytes cannot be signed
    signs_any_bytes: bool = True
    extra: dict[str, Any] = field(default_factory=dict)
    #: a payload case in tests/payloads/<esp>/ and the hygiene kinds it must yield, counted; the
    #: end-to-end test posts it through the real endpoint and finds those kinds in the ledger
    sample: tuple[str, dict[str, int]] = ("", {})

    def config(self, **values: str) -> SourceConfig:
        return SourceConfig(name=self.esp, esp=self.esp, values={**self.values, **values})

    def parser(self, **kwargs: Any) -> EspParser:
        return ESP_PARSERS[self.esp](self.config(), **kwargs)


def _sendgrid() -> EspSigner:
    private, public = sendgrid_keypair()
    return EspSigner(
        esp="sendgrid",
        values={"PUBLIC_KEY": public},
        sign=lambda body: request(body, sign_sendgrid(body, private)),
        envelope=lambda event: orjson.dumps([event]),
        unknown_event={
            "email": "someone@example.com",
            "timestamp": 1700000000,
            "event": UNKNOWN_CODE,
            "sg_event_id": "x",
        },
        extra={"private_key": private},
        sample=(
            "batch",
            {
                "unsubscribe": 3,
                "hard_bounce": 2,
                "spam_complaint": 2,
                "blocked": 1,
                "resubscribe": 1,
            },
        ),
    )


def _mailgun() -> EspSigner:
    key = secrets.token_hex(16)

    def sign(body: bytes) -> InboundRequest:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            return request(body)
        if not isinstance(doc, dict):
            return request(body)
        if isinstance(doc.get("legacy-form"), list):  # a stored legacy post: its form fields
            return mailgun_legacy_request(doc["legacy-form"], key)
        doc["signature"] = sign_mailgun(key)
        return request(orjson.dumps(doc))

    return EspSigner(
        esp="mailgun",
        values={"SIGNING_KEY": key},
        sign=sign,
        envelope=lambda event: orjson.dumps({"event-data": event}),
        unknown_event={
            "event": UNKNOWN_CODE,
            "recipient": "someone@example.com",
            "timestamp": 1700000000.5,
        },
        wrong_shape=b'{"event-data": "not an object"}',
        signs_any_bytes=False,
        sample=("failed_permanent", {"hard_bounce": 1}),
    )


def _basic_auth(
    esp: str, unknown_event: dict[str, Any], single: bool, sample: tuple[str, dict[str, int]]
) -> EspSigner:
    user, password = f"{esp}-hooks", secrets.token_urlsafe(18)
    return EspSigner(
        esp=esp,
        values={"USERNAME": user, "PASSWORD": password},
        sign=lambda body: request(body, basic_auth_header(user, password)),
        envelope=(lambda event: orjson.dumps(event)) if single else lambda e: orjson.dumps([e]),
        unknown_event=unknown_event,
        sample=sample,
    )


SIGNERS: dict[str, Callable[[], EspSigner]] = {
    "sendgrid": _sendgrid,
    "mailgun": _mailgun,
    "postmark": lambda: _basic_auth(
        "postmark",
        {"RecordType": UNKNOWN_CODE, "Recipient": "someone@example.com", "MessageID": "x"},
        single=True,
        sample=("bounce_hard", {"hard_bounce": 1}),
    ),
    "mailjet": lambda: _basic_auth(
        "mailjet",
        {"event": UNKNOWN_CODE, "time": 1700000000, "email": "someone@example.com"},
        single=False,
        sample=(
            "grouped",
            {"soft_bounce": 1, "hard_bounce": 1, "spam_complaint": 1, "unsubscribe": 1},
        ),
    ),
}


def signers() -> dict[str, Callable[[], EspSigner]]:
    """Every signer: the four above and each ``tests/intake/signers/<esp>.py`` (``signer()``).

    Found on first use rather than at import, so a signer module may import this one.
    """
    if not _discovered:
        from tests.intake import signers as package

        for info in pkgutil.iter_modules(package.__path__):
            module = importlib.import_module(f"{package.__name__}.{info.name}")
            SIGNERS[info.name] = module.signer
        _discovered.append(True)
    return SIGNERS


_discovered: list[bool] = []


def signer_for(esp: str) -> EspSigner:
    """The signer of ``esp``; a loud failure names the file to add when there is none."""
    factory = signers().get(esp)
    if factory is None:
        raise LookupError(
            f"ESP {esp!r} is in ESP_PARSERS but has no signer: add tests/intake/signers/{esp}.py"
            " defining signer() -> EspSigner"
        )
    return factory()
