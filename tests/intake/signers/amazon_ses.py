"""Amazon SES via SNS: messages signed with a fresh RSA key whose certificate a loopback server
serves, so verification fetches it over a real socket and nothing reaches the internet.

The server starts once per process, in a daemon thread, on first use (``sns_server()``); its URL
patterns go into the signer's values as an operator's settings would, so the gunicorn of the
end-to-end test fetches from it too. The Scaleway signer shares all of this.
"""

from __future__ import annotations

import base64
import datetime as dt
import secrets
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from syncworker.intake.contract import InboundRequest
from tests.intake.signing import UNKNOWN_CODE, EspSigner, request

# the fields each SNS message type signs, in order, as AWS documents them
CONFIRMATION = ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type")
SIGNED = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": CONFIRMATION,
    "UnsubscribeConfirmation": CONFIRMATION,
}
HASHES = {"1": hashes.SHA1(), "2": hashes.SHA256()}


class SnsServer:
    """Loopback HTTP: serves registered certificates, answers SubscribeURLs, records each GET."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.statuses: dict[str, int] = {}  # path -> status, to make a path fail on purpose
        self.hits: Counter[str] = Counter()
        self.requests: list[str] = []
        state = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.partition("?")[0]
                state.hits[path] += 1
                state.requests.append(self.path)
                status = state.statuses.get(path, 200)
                if path.startswith("/confirm/"):
                    body = b"<ConfirmSubscriptionResponse/>"
                else:
                    body = state.files.get(path, b"")
                    status = status if path in state.files else 404
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self.base = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def settings(self) -> dict[str, str]:
        """The URL patterns that admit this server (and nothing else) in place of the vendor's."""
        host = rf"http://127\.0\.0\.1:{self.port}"
        return {
            "CERT_URL_PATTERN": host + r"/certs/[A-Za-z0-9._-]+\.pem",
            "SUBSCRIBE_URL_PATTERN": host + r"/confirm/[A-Za-z0-9_-]+\?[^#\s]*",
        }

    def serve(self, body: bytes, name: str | None = None) -> str:
        """Serve ``body`` at a new certificate URL and return the URL."""
        path = f"/certs/{name or secrets.token_hex(8)}.pem"
        self.files[path] = body
        return self.base + path

    def subscribe_url(self, topic: str, token: str | None = None) -> str:
        token = token or secrets.token_hex(8)
        return (
            f"{self.base}/confirm/{token}?Action=ConfirmSubscription&TopicArn={topic}&Token={token}"
        )


_server: list[SnsServer] = []
_lock = threading.Lock()


def sns_server() -> SnsServer:
    with _lock:
        if not _server:
            _server.append(SnsServer())
        return _server[0]


def certificate(
    key: rsa.RSAPrivateKey,
    name: str,
    issuer: tuple[rsa.RSAPrivateKey, x509.Certificate] | None = None,
    *,
    ca: bool = False,
    days: float = 365,
) -> x509.Certificate:
    """A certificate for ``key``: self-signed, or issued by ``issuer`` (its key and certificate)."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    signing_key, issuer_name = (key, subject) if issuer is None else (issuer[0], issuer[1].subject)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    return builder.sign(signing_key, hashes.SHA256())


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(cert.public_bytes(Encoding.PEM) for cert in certs)


def sns_time(at: float | None = None) -> str:
    """SNS's Timestamp format: ISO 8601, milliseconds, Z."""
    moment = dt.datetime.fromtimestamp(time.time() if at is None else at, dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def notification(message: Any, topic: str, **extra: str) -> dict[str, Any]:
    """An unsigned SNS Notification carrying ``message`` (a dict is sent as a JSON string)."""
    body = message if isinstance(message, str) else orjson.dumps(message).decode()
    return {
        "Type": "Notification",
        "MessageId": str(uuid.uuid4()),
        "TopicArn": topic,
        "Message": body,
        "Timestamp": sns_time(),
        **extra,
    }


def string_to_sign(doc: dict[str, Any]) -> bytes:
    """What SNS signs; any JSON object is signed somehow, so the fuzz tests can send odd ones."""
    names = SIGNED.get(str(doc.get("Type")), SIGNED["Notification"])
    return "".join(f"{k}\n{doc[k]}\n" for k in names if doc.get(k) is not None).encode()


@dataclass
class SnsSigner:
    """A signing key, the URL its certificate is served at, and the topic it signs for."""

    key: rsa.RSAPrivateKey
    cert_url: str
    topic: str

    def sign(self, doc: dict[str, Any], version: str = "2") -> dict[str, Any]:
        """``doc`` with SignatureVersion, SigningCertURL and a valid Signature."""
        doc = {**doc, "SignatureVersion": version, "SigningCertURL": self.cert_url}
        signature = self.key.sign(string_to_sign(doc), padding.PKCS1v15(), HASHES[version])
        return {**doc, "Signature": base64.b64encode(signature).decode()}

    def request(self, doc: dict[str, Any], version: str = "2") -> InboundRequest:
        """Signed as SNS posts it: JSON with Content-Type text/plain and the x-amz-sns headers."""
        signed = self.sign(doc, version)
        headers = {
            "Content-Type": "text/plain; charset=UTF-8",
            "x-amz-sns-message-type": str(signed.get("Type")),
            "x-amz-sns-message-id": str(signed.get("MessageId")),
            "x-amz-sns-topic-arn": self.topic,
        }
        return request(orjson.dumps(signed), headers)

    def resign(self, body: bytes) -> InboundRequest:
        """A JSON object body for this signer's topic, timestamped now and signed; any other
        body unchanged and unsigned (the signature lives inside the body)."""
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            return request(body)
        if not isinstance(doc, dict):
            return request(body)
        doc.update(TopicArn=self.topic, Timestamp=sns_time())
        return self.request(doc)


def sns_signer(topic: str) -> SnsSigner:
    """A fresh key with a self-signed certificate served by the loopback server."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    url = sns_server().serve(pem(certificate(key, "sns.us-east-1.amazonaws.com")))
    return SnsSigner(key, url, topic)


def signer() -> EspSigner:
    server = sns_server()
    sns = sns_signer(f"arn:aws:sns:us-east-1:123456789012:ses-events-{secrets.token_hex(4)}")
    return EspSigner(
        esp="amazon_ses",
        values={"TOPIC_ARNS": sns.topic, **server.settings()},
        sign=sns.resign,
        envelope=lambda event: orjson.dumps(notification(event, sns.topic)),
        unknown_event={
            "notificationType": UNKNOWN_CODE,
            "mail": {"messageId": "x", "destination": ["someone@example.com"]},
        },
        wrong_shape=orjson.dumps(notification([], sns.topic)),
        signs_any_bytes=False,
        extra={"sns": sns},
        sample=("bounce_permanent", {"hard_bounce": 2}),
    )
