"""SNS message verification and the subscription handshake, for the sources SNS delivers.

Docs: https://docs.aws.amazon.com/sns/latest/dg/sns-verify-signature-of-message.html,
https://docs.aws.amazon.com/sns/latest/dg/http-subscription-confirmation-json.html and
https://www.scaleway.com/en/docs/topics-and-events/reference-content/verifying-webhooks/

The one part of the intake that does HTTP: it fetches signing certificates (only from an
allow-listed URL, cached in-process by URL) and confirms subscriptions. The parsers hand the
confirmation to the route as ``ParseResult.followup``. ``http`` is injectable for tests.

A failed fetch is cached too, briefly, so that forged messages naming an allowed topic cannot
make the process fetch on every request: a certificate URL that can never verify (an HTTP error
other than the transient ones, a body that is no PEM certificate) answers 401 for
``FAILURE_TTL_S``; a host that is down or answers 5xx/408/429 answers 503 (SNS retries 20 s
later by default) for ``TRANSIENT_FAILURE_TTL_S``, shorter than that retry interval.
"""

from __future__ import annotations

import base64
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson
import requests
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from syncworker.errors import (
    ConfigError,
    IntakeError,
    PayloadInvalid,
    SignatureInvalid,
    Unavailable,
)
from syncworker.intake.contract import HeaderMap, ParseResult, check_depth, iso_seconds, load_json

if TYPE_CHECKING:
    from syncworker.config import SourceConfig

# Type -> the fields signed, in this order, as "Name\nvalue\n"; Subject only when present
_CONFIRMATION = ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type")
SIGNED_FIELDS: dict[str, tuple[str, ...]] = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": _CONFIRMATION,
    "UnsubscribeConfirmation": _CONFIRMATION,
}
OPTIONAL_FIELDS = frozenset({"Subject"})
HASHES: dict[str, type[hashes.HashAlgorithm]] = {"1": hashes.SHA1, "2": hashes.SHA256}
MAX_BYTES = 64 * 1024  # a PEM chain is a few KB; more is not a certificate
TIMEOUT_S = (3.05, 5.0)  # SNS waits 15 s for our answer, the certificate fetch included
MAX_CHAIN = 4
CERTIFICATE_TTL_S = 86400.0  # a fetched certificate is used this long before it is fetched again
FAILURE_TTL_S = 60.0  # a URL that served no usable certificate is not fetched again for this long
TRANSIENT_FAILURE_TTL_S = 10.0  # nor is one whose host was down, shorter than SNS's 20 s retry
TRANSIENT_STATUSES = frozenset({408, 429})  # with 5xx: the host may serve it on SNS's retry

HttpGet = Callable[[str], tuple[int, bytes]]


def http_get(url: str) -> tuple[int, bytes]:
    """GET without following redirects: the status and at most MAX_BYTES + 1 bytes of body."""
    try:
        with requests.get(url, timeout=TIMEOUT_S, allow_redirects=False, stream=True) as answer:
            body = b""
            for chunk in answer.iter_content(8192):
                body += chunk
                if len(body) > MAX_BYTES:
                    break
            return answer.status_code, body
    except requests.RequestException as exc:
        raise Unavailable(f"{urlsplit(url).hostname} unreachable: {type(exc).__name__}") from None


#: the envelope's fields every type has, as SnsMessage attributes
ENVELOPE_FIELDS = (
    ("type", "Type"),
    ("topic_arn", "TopicArn"),
    ("message_id", "MessageId"),
    ("message", "Message"),
)


@dataclass(frozen=True, slots=True)
class SnsMessage:
    """The SNS envelope: every field checked to be the string the signature covers."""

    fields: Mapping[str, str]
    type: str = field(init=False)
    topic_arn: str = field(init=False)
    message_id: str = field(init=False)
    message: str = field(init=False)

    def __post_init__(self) -> None:
        for name, key in ENVELOPE_FIELDS:
            object.__setattr__(self, name, self.fields[key])

    def string_to_sign(self) -> bytes:
        pairs = ((k, self.fields.get(k)) for k in SIGNED_FIELDS[self.type])
        return "".join(f"{k}\n{v}\n" for k, v in pairs if v is not None).encode()


def load_message(body: bytes, *, depth_checked: bool = True) -> SnsMessage:
    """Parse and check an SNS envelope; PayloadInvalid with the reason otherwise.

    Verification reads only the signed string fields, so it passes ``depth_checked=False``;
    the parse that follows refuses a body nested deeper than MAX_JSON_DEPTH (a 400, kept).
    """
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise PayloadInvalid("body is not an SNS message (not JSON)") from None
    if depth_checked:
        check_depth(doc)
    if not isinstance(doc, dict):
        raise PayloadInvalid("body is not an SNS message (not a JSON object)")
    kind = doc.get("Type")
    if not isinstance(kind, str) or kind not in SIGNED_FIELDS:
        raise PayloadInvalid("SNS Type missing or unknown")
    wanted = (*SIGNED_FIELDS[kind], "SignatureVersion", "Signature", "SigningCertURL")
    values: dict[str, str] = {}
    for name in wanted:
        value = doc.get(name)
        if value is None and name in OPTIONAL_FIELDS:
            continue
        if not isinstance(value, str):
            raise PayloadInvalid(f"SNS field {name} missing or not a string")
        values[name] = value
    return SnsMessage(values)


def message_object(message: SnsMessage) -> dict[str, Any]:
    """The JSON object an SNS Notification carries as its ``Message`` string."""
    doc = load_json(message.message, "SNS Message")
    if not isinstance(doc, dict):
        raise PayloadInvalid("SNS Message is not a JSON object")
    return doc


def allowed(pattern: re.Pattern[str], url: str) -> bool:
    """``url`` matches the allow-list pattern in full and carries no credentials."""
    if pattern.fullmatch(url) is None or "\\" in url:
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.username is None and parts.password is None


class CertificateCache:
    """Fetched certificates by URL, for every parser of the process; checked again on each use.

    Failed fetches are kept apart (a flood of them cannot evict a good certificate), each until
    its own expiry, at most ``size`` of them.
    """

    def __init__(self, size: int = 64, ttl_s: float = CERTIFICATE_TTL_S) -> None:
        self.size, self.ttl_s = size, ttl_s
        self._entries: OrderedDict[str, tuple[float, list[x509.Certificate]]] = OrderedDict()
        self._failures: OrderedDict[str, tuple[float, IntakeError]] = OrderedDict()
        self._lock = threading.Lock()

    def failure(self, url: str, now: float) -> IntakeError | None:
        """The error a recent fetch of ``url`` ended with, while it is cached; else None."""
        with self._lock:
            entry = self._failures.get(url)
            if entry is None:
                return None
            if now >= entry[0]:
                del self._failures[url]
                return None
            return entry[1]

    def fail(self, url: str, error: IntakeError, until: float) -> None:
        with self._lock:
            self._failures[url] = (until, error)
            self._failures.move_to_end(url)
            while len(self._failures) > self.size:
                self._failures.popitem(last=False)

    def get(self, url: str, now: float) -> list[x509.Certificate] | None:
        with self._lock:
            entry = self._entries.get(url)
            if entry is None or now - entry[0] > self.ttl_s:
                return None
            self._entries.move_to_end(url)
            return entry[1]

    def put(self, url: str, certs: list[x509.Certificate], now: float) -> None:
        with self._lock:
            self._entries[url] = (now, certs)
            self._entries.move_to_end(url)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)


CERTIFICATES = CertificateCache()


def _valid_at(cert: x509.Certificate, now: datetime) -> bool:
    return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def check_chain(
    leaf: x509.Certificate,
    supplied: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    now: datetime,
) -> None:
    """Raise SignatureInvalid unless ``leaf`` chains to one of ``anchors`` through CA
    certificates from ``supplied`` (what the certificate URL served after the leaf)."""
    cert, pool = leaf, [c for c in supplied if _is_ca(c) and _valid_at(c, now)]
    for _ in range(MAX_CHAIN):
        if any(_valid_at(a, now) and _issued_by(cert, a) for a in anchors):
            return
        issuer = next((c for c in pool if _issued_by(cert, c)), None)
        if issuer is None:
            break
        pool.remove(issuer)
        cert = issuer
    raise SignatureInvalid("signing certificate is not issued by a configured CA")


def load_ca_bundle(value: str) -> list[x509.Certificate]:
    """CA certificates from PEM text, or from the path of a PEM file; ValueError if none."""
    pem = value.encode() if "-----BEGIN" in value else Path(value).read_bytes()
    certs = x509.load_pem_x509_certificates(pem)
    if not all(_is_ca(cert) for cert in certs):
        raise ValueError("holds a certificate that is not a CA")
    return certs


class SnsVerifier:
    """Verifies SNS messages for one source and builds its handshake answers."""

    def __init__(
        self,
        *,
        topics: Iterable[str] | None,
        cert_url: str,
        subscribe_url: str,
        max_age_s: float,
        skew_s: float = 300.0,
        anchors: Sequence[x509.Certificate] = (),
        clock: Callable[[], float] = time.time,
        http: HttpGet = http_get,
    ) -> None:
        self.topics = None if topics is None else frozenset(topics)
        self.cert_url, self.subscribe_url = re.compile(cert_url), re.compile(subscribe_url)
        self.max_age_s, self.skew_s, self.anchors = max_age_s, skew_s, list(anchors)
        self.clock, self.http = clock, http

    @classmethod
    def from_source(
        cls,
        source: SourceConfig,
        defaults: Mapping[str, str],
        *,
        with_ca: bool = False,
        clock: Callable[[], float] = time.time,
        http: HttpGet = http_get,
    ) -> SnsVerifier:
        """Read TOPIC_ARNS (``*``: any topic), the URL patterns, MAX_AGE_S and, for sources
        whose certificates chain to a vendor CA, CA_BUNDLE; ConfigError lists every problem."""
        problems: list[str] = []

        def setting(key: str) -> str:
            return source.get(key) or defaults.get(key, "")

        def problem(key: str, text: str) -> None:
            problems.append(f"SYNCWORKER_{source.name.upper()}_{key}: {text}")

        topics = {t for value in source.secrets("TOPIC_ARNS") for t in re.split(r"[\s,]+", value)}
        topics.discard("")
        if not topics:
            problem("TOPIC_ARNS", "set the topic ARN(s) to accept, or * for any topic")
        for key in ("CERT_URL_PATTERN", "SUBSCRIBE_URL_PATTERN"):
            try:
                re.compile(setting(key))
            except re.error as exc:
                problem(key, f"not a regular expression ({exc})")
        try:
            max_age_s = float(setting("MAX_AGE_S"))
            if not max_age_s > 0:
                raise ValueError
        except ValueError:
            problem("MAX_AGE_S", "expected a positive number of seconds")
        anchors: list[x509.Certificate] = []
        for key in ("CA_BUNDLE", "CA_BUNDLE_PREVIOUS") if with_ca else ():
            if value := source.get(key):
                try:
                    anchors += load_ca_bundle(value)
                except (OSError, ValueError) as exc:
                    problem(key, f"not PEM CA certificates or a readable PEM file ({exc})")
        if with_ca and not anchors and not any("_CA_BUNDLE" in p for p in problems):
            problem("CA_BUNDLE", "required: Scaleway's sns-trust-chain.pem, as text or a path")
        if problems:
            raise ConfigError(problems)
        return cls(
            topics=None if "*" in topics else topics,
            cert_url=setting("CERT_URL_PATTERN"),
            subscribe_url=setting("SUBSCRIBE_URL_PATTERN"),
            max_age_s=max_age_s,
            skew_s=source.signature_tolerance_s,
            anchors=anchors,
            clock=clock,
            http=http,
        )

    def verify(self, body: bytes, headers: HeaderMap | None = None) -> SnsMessage:
        """Check topic, age, certificate and signature; SignatureInvalid with the reason.

        SNS also names the message type in the ``x-amz-sns-message-type`` header; one that
        disagrees with the signed ``Type`` is a malformed request (PayloadInvalid, 400), not one
        to act on: the header is unsigned, the body is what we read.
        """
        try:
            message = load_message(body, depth_checked=False)
        except PayloadInvalid as exc:
            raise SignatureInvalid(f"not a signed SNS message: {exc.detail}") from None
        said = headers.get("x-amz-sns-message-type", "").strip() if headers is not None else ""
        if said and said != message.type:
            raise PayloadInvalid(
                f"x-amz-sns-message-type {said[:40]!r} disagrees with the signed Type"
            )
        if self.topics is not None and message.topic_arn not in self.topics:
            raise SignatureInvalid("TopicArn is not an allowed topic")
        algorithm = HASHES.get(message.fields["SignatureVersion"])
        if algorithm is None:
            raise SignatureInvalid("SignatureVersion is not 1 or 2")
        now = self.clock()
        try:
            sent = iso_seconds(message.fields["Timestamp"])
        except (ValueError, OverflowError):
            raise SignatureInvalid("Timestamp is not ISO 8601") from None
        if not now - self.max_age_s <= sent <= now + self.skew_s:
            raise SignatureInvalid("Timestamp outside the allowed window")
        try:
            signature = base64.b64decode(message.fields["Signature"], validate=True)
        except ValueError:
            raise SignatureInvalid("Signature is not base64") from None
        key = self._public_key(message.fields["SigningCertURL"], now)
        try:
            key.verify(signature, message.string_to_sign(), padding.PKCS1v15(), algorithm())
        except InvalidSignature:
            raise SignatureInvalid("signature does not match the signing certificate") from None
        return message

    def _public_key(self, url: str, now: float) -> rsa.RSAPublicKey:
        if not allowed(self.cert_url, url):
            raise SignatureInvalid("SigningCertURL is not an allowed certificate URL")
        certs = CERTIFICATES.get(url, now)
        if certs is None:
            certs = self._fetch(url, now)
        moment = datetime.fromtimestamp(now, UTC)
        leaf = certs[0]
        if not _valid_at(leaf, moment):
            raise SignatureInvalid("signing certificate expired or not yet valid")
        if self.anchors:
            check_chain(leaf, certs[1:], self.anchors, moment)
        key = leaf.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise SignatureInvalid("signing certificate does not hold an RSA key")
        return key

    def _fetch(self, url: str, now: float) -> list[x509.Certificate]:
        """GET the certificates at ``url``, or raise how it failed: the same way, without a
        fetch, while that failure is cached."""
        failed = CERTIFICATES.failure(url, now)
        if failed is not None:
            raise type(failed)(failed.detail)  # a fresh error: a traceback is not shared
        try:
            status, body = self.http(url)  # Unavailable if the host cannot be reached
            if status >= 500 or status in TRANSIENT_STATUSES:
                raise Unavailable(f"certificate host answered HTTP {status}")
            if status != 200 or len(body) > MAX_BYTES:
                raise SignatureInvalid(f"certificate not served (HTTP {status})")
            try:
                certs = x509.load_pem_x509_certificates(body)
            except ValueError:
                raise SignatureInvalid("SigningCertURL did not serve a PEM certificate") from None
        except (Unavailable, SignatureInvalid) as exc:
            transient = isinstance(exc, Unavailable)
            ttl = TRANSIENT_FAILURE_TTL_S if transient else FAILURE_TTL_S
            CERTIFICATES.fail(url, exc, now + ttl)
            raise
        CERTIFICATES.put(url, certs, now)
        return certs

    def handshake(self, message: SnsMessage) -> ParseResult:
        """The answer to a (verified) subscription or unsubscription confirmation."""
        topic = message.topic_arn
        if message.type == "UnsubscribeConfirmation":
            # logged only: confirming it would re-subscribe (jazzband/django-ses#199)
            note = f"sns unsubscribe confirmation topic={topic}: not re-subscribing"
            return ParseResult(response={"subscription": "unsubscribed"}, followup=lambda: note)
        url = message.fields["SubscribeURL"]
        if not allowed(self.subscribe_url, url):
            raise PayloadInvalid("SubscribeURL is not an allowed confirmation URL")
        return ParseResult(
            response={"subscription": "confirmed"},
            followup=lambda: self.confirm(url, topic),
        )

    def confirm(self, url: str, topic: str) -> str:
        """GET the SubscribeURL; Unavailable (503, so SNS sends it again) unless it succeeds."""
        status, _ = self.http(url)
        if not 200 <= status < 300:
            raise Unavailable(f"SubscribeURL answered HTTP {status}")
        return f"sns subscription confirmed topic={topic}"
