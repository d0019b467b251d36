"""Scaleway TEM via Topics and Events: SNS-style messages whose signing certificate must chain to
the configured CA bundle; one TEM event per message."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from syncworker.config import SourceConfig
from syncworker.errors import ConfigError, PayloadInvalid, SignatureInvalid
from syncworker.events import Kind
from syncworker.intake.auth import sns
from syncworker.intake.contract import iso_seconds
from syncworker.intake.esps.scaleway_tem import ScalewayTemParser
from tests.intake.signers.amazon_ses import (
    SnsSigner,
    certificate,
    notification,
    pem,
    sns_server,
    sns_signer,
    sns_time,
)
from tests.intake.signers.scaleway_tem import make_ca, scaleway_signer
from tests.intake.signing import payload, request

TOPIC = "arn:scw:sns:fr-par:project-8c8bfa06-9d5f-4a3e-a6a5-1a4a4f2f0b7e:tem-events"
DEFAULTS = ScalewayTemParser.optional_settings
CA = tuple[rsa.RSAPrivateKey, x509.Certificate]


@pytest.fixture(scope="module")
def ca() -> CA:
    return make_ca()


@pytest.fixture()
def signer(ca: CA) -> SnsSigner:
    return scaleway_signer(TOPIC, ca)


def make_parser(ca: CA, **values: str) -> ScalewayTemParser:
    settings = {"TOPIC_ARNS": TOPIC, "CA_BUNDLE": pem(ca[1]).decode(), **sns_server().settings()}
    source = SourceConfig(name="scaleway_tem", esp="scaleway_tem", values={**settings, **values})
    return ScalewayTemParser(source)


def stored(case: str, **changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads(payload("scaleway_tem", case))
    for name in ("Signature", "SignatureVersion", "SigningCertURL"):
        doc.pop(name)
    return {**doc, "TopicArn": TOPIC, "Timestamp": sns_time(), **changes}


def event_of(case: str) -> dict[str, Any]:
    message: dict[str, Any] = orjson.loads(stored(case)["Message"])
    return message


def parsed(ca: CA, signer: SnsSigner, doc: dict[str, Any]) -> Any:
    parser = make_parser(ca)
    req = signer.request(doc)
    parser.verify(req)
    return parser.parse(req.body)


def refused(parser: ScalewayTemParser, body: bytes) -> str:
    with pytest.raises(SignatureInvalid) as exc:
        parser.verify(request(body))
    return str(exc.value.detail)


# -- events ------------------------------------------------------------------------------------


def test_a_dropped_email_is_a_hard_bounce_with_its_details(ca: CA, signer: SnsSigner) -> None:
    result = parsed(ca, signer, stored("email_dropped"))
    [event] = result.events
    assert (event.email, event.kind) == ("gone.user@example.com", Kind.HARD_BOUNCE)
    assert event.key == "scaleway_tem:efc57ea6-3f0c-4a4d-8b3a-6a6e3c1d2f0a"
    assert event.message_id == "d4fbec9d-eed9-44d5-af47-c1126467a5ca"
    assert event.occurred_at == iso_seconds("2026-01-15T10:32:00Z")
    assert event.smtp_code == "550"
    assert event.reason == "5.1.1 The email account that you tried to reach does not exist"
    assert event.raw == event_of("email_dropped")
    assert result.ignored == Counter() and result.quarantined == []


@pytest.mark.parametrize(
    ("case", "kind"),
    [
        ("email_mailbox_not_found", Kind.HARD_BOUNCE),
        ("email_deferred", Kind.SOFT_BOUNCE),
        ("email_spam", Kind.SPAM_COMPLAINT),
        ("email_blocklisted", Kind.SOFT_BOUNCE),  # blocklist_type mailbox_full
        ("blocklist_created", Kind.HARD_BOUNCE),  # blocklist_type mailbox_not_found
    ],
)
def test_hygiene_events_by_case(ca: CA, signer: SnsSigner, case: str, kind: Kind) -> None:
    [event] = parsed(ca, signer, stored(case)).events
    assert event.kind == kind
    assert (event.source, event.esp) == ("scaleway_tem", "scaleway_tem")


@pytest.mark.parametrize("blocklist_type", ["unknown_type", "manual", None])
def test_a_refusal_by_a_blocklist_of_another_type_is_a_hard_bounce(
    ca: CA, signer: SnsSigner, blocklist_type: str | None
) -> None:
    """Scaleway's own blocklist refused the address for a cause it does not name: suppressed
    at once, with the blocklist's reason."""
    message = {
        **event_of("email_blocklisted"),
        "blocklist_type": blocklist_type,
        "blocklist_reason": "added by the account",
    }
    [event] = parsed(
        ca, signer, stored("email_blocklisted", Message=orjson.dumps(message).decode())
    ).events
    assert (event.kind, event.reason) == (Kind.HARD_BOUNCE, "added by the account")


def test_retries_of_one_deferred_email_count_once(ca: CA, signer: SnsSigner) -> None:
    """Each retry is a new event with a new id; keyed by the email, they make one soft bounce."""
    first = parsed(ca, signer, stored("email_deferred")).events[0]
    retry = parsed(ca, signer, stored("email_deferred_retry")).events[0]
    assert first.key == retry.key == "scaleway_tem:deferred:b2c3d4e5-f6a7-4b8c-9d0e-1f2a3b4c5d6e"


def test_keys_are_stable_across_redeliveries(ca: CA, signer: SnsSigner) -> None:
    doc = stored("email_spam")
    first = parsed(ca, signer, doc).events[0].key
    again = parsed(ca, signer, {**doc, "Timestamp": sns_time()}).events[0].key
    assert first == again == "scaleway_tem:8c5b1d4e-0f6a-4b8c-2d3e-4f5a6b7c8d9e"


def test_an_event_without_id_gets_a_content_key(ca: CA, signer: SnsSigner) -> None:
    message = {**event_of("email_spam"), "id": None}
    doc = stored("email_spam", Message=orjson.dumps(message).decode())
    keys = {parsed(ca, signer, doc).events[0].key for _ in range(2)}
    assert len(keys) == 1 and keys.pop().startswith("scaleway_tem:h:")


@pytest.mark.parametrize(("case", "code"), [("email_delivered", "email_delivered")])
def test_non_hygiene_events_are_counted(ca: CA, signer: SnsSigner, case: str, code: str) -> None:
    result = parsed(ca, signer, stored(case))
    assert result.events == [] and result.ignored == Counter({code: 1})


def test_invalid_events_are_quarantined(ca: CA, signer: SnsSigner) -> None:
    [item] = parsed(ca, signer, stored("invalid_event")).quarantined
    assert "email_to" in item.reason
    no_type = {k: v for k, v in event_of("email_dropped").items() if k != "type"}
    result = parsed(ca, signer, stored("email_dropped", Message=orjson.dumps(no_type).decode()))
    assert [q.reason for q in result.quarantined] == ["event type missing"]


def test_a_message_that_is_not_a_json_object_is_payload_invalid(ca: CA, signer: SnsSigner) -> None:
    parser = make_parser(ca)
    req = signer.request(notification("plain text", TOPIC))
    parser.verify(req)
    with pytest.raises(PayloadInvalid):
        parser.parse(req.body)


# -- the certificate must chain to the configured CA ----------------------------------------------


def test_a_certificate_from_another_ca_is_refused(ca: CA) -> None:
    """The signature is valid, but the signing certificate was not issued by Scaleway's CA."""
    rogue = scaleway_signer(TOPIC, make_ca())
    assert "CA" in refused(make_parser(ca), rogue.request(stored("email_dropped")).body)


def test_a_self_signed_certificate_is_refused(ca: CA) -> None:
    self_signed = sns_signer(TOPIC)
    assert "CA" in refused(make_parser(ca), self_signed.request(stored("email_dropped")).body)


def test_an_intermediate_served_with_the_leaf_is_followed(ca: CA) -> None:
    """Scaleway's bundle is a root and an intermediate; a chain served after the leaf works too."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    intermediate = certificate(key, "Scaleway MnQ (test)", issuer=ca, ca=True)
    leaf_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    leaf = certificate(leaf_key, "signing", issuer=(key, intermediate))
    served = SnsSigner(leaf_key, sns_server().serve(pem(leaf, intermediate)), TOPIC)
    make_parser(ca).verify(served.request(stored("email_dropped")))
    alone = SnsSigner(leaf_key, sns_server().serve(pem(leaf)), TOPIC)
    refused(make_parser(ca), alone.request(stored("email_dropped")).body)
    bundle = pem(ca[1], intermediate).decode()
    make_parser(ca, CA_BUNDLE=bundle).verify(alone.request(stored("email_dropped")))


def test_a_non_ca_certificate_cannot_act_as_intermediate(ca: CA) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    not_a_ca = certificate(key, "leaf posing as CA", issuer=ca, ca=False)
    leaf_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    leaf = certificate(leaf_key, "signing", issuer=(key, not_a_ca))
    served = SnsSigner(leaf_key, sns_server().serve(pem(leaf, not_a_ca)), TOPIC)
    refused(make_parser(ca), served.request(stored("email_dropped")).body)


def test_an_expired_ca_is_not_trusted() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    expired: CA = (key, certificate(key, "old root", ca=True, days=-0.5))
    signer = scaleway_signer(TOPIC, expired)
    refused(make_parser(expired), signer.request(stored("email_dropped")).body)


def test_previous_ca_bundle_is_accepted_during_rotation(ca: CA) -> None:
    new_ca = make_ca()
    parser = make_parser(new_ca, CA_BUNDLE_PREVIOUS=pem(ca[1]).decode())
    parser.verify(scaleway_signer(TOPIC, new_ca).request(stored("email_dropped")))
    parser.verify(scaleway_signer(TOPIC, ca).request(stored("email_dropped")))


def test_ca_bundle_may_be_a_file(ca: CA, signer: SnsSigner, tmp_path: Path) -> None:
    path = tmp_path / "sns-trust-chain.pem"
    path.write_bytes(pem(ca[1]))
    make_parser(ca, CA_BUNDLE=str(path)).verify(signer.request(stored("email_dropped")))


@pytest.mark.parametrize(
    "bundle", ["/nonexistent/sns-trust-chain.pem", "-----BEGIN CERTIFICATE-----\nxx"]
)
def test_an_unreadable_ca_bundle_stops_startup(ca: CA, bundle: str) -> None:
    with pytest.raises(ConfigError) as exc:
        make_parser(ca, CA_BUNDLE=bundle)
    [problem] = exc.value.problems
    assert problem.startswith("SYNCWORKER_SCALEWAY_TEM_CA_BUNDLE: ")


def test_a_bundle_holding_a_non_ca_certificate_stops_startup(ca: CA) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(ConfigError):
        make_parser(ca, CA_BUNDLE=pem(certificate(key, "not a CA")).decode())


def test_another_topic_is_refused(ca: CA) -> None:
    other = scaleway_signer("arn:scw:sns:fr-par:project-other:tem-events", ca)
    doc = stored("email_dropped", TopicArn=other.topic)
    assert "TopicArn" in refused(make_parser(ca), other.request(doc).body)


# -- default URL patterns -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://messaging.s3.fr-par.scw.cloud/fr-par/sns/sns_certificate_1234.pem", True),
        ("https://messaging.s3.nl-ams.scw.cloud/nl-ams/sns/sns_certificate_1234.crt", True),
        ("http://messaging.s3.fr-par.scw.cloud/fr-par/sns/cert.pem", False),
        ("https://attacker.s3.fr-par.scw.cloud/cert.pem", False),
        ("https://s3.fr-par.scw.cloud/messaging/cert.pem", False),
        ("https://messaging.s3.fr-par.scw.cloud.example.com/cert.pem", False),
        ("https://messaging.s3.fr-par.scw.cloud@example.com/cert.pem", False),
        ("https://messaging.s3.fr-par.scw.cloud:8443/cert.pem", False),
        ("https://messaging.s3.fr-par.scw.cloud\\@example.com/cert.pem", False),
        ("https://messaging.s3.fr-par.scw.cloud", False),
        (" https://messaging.s3.fr-par.scw.cloud/cert.pem", False),
        ("https://169.254.169.254/latest/meta-data/", False),
    ],
)
def test_default_certificate_pattern(url: str, ok: bool) -> None:
    assert sns.allowed(re.compile(DEFAULTS["CERT_URL_PATTERN"]), url) is ok


def test_default_subscribe_pattern() -> None:
    pattern = re.compile(DEFAULTS["SUBSCRIBE_URL_PATTERN"])
    genuine = orjson.loads(payload("scaleway_tem", "subscription_confirmation"))["SubscribeURL"]
    assert sns.allowed(pattern, genuine)
    assert sns.allowed(pattern, genuine.replace("fr-par", "nl-ams"))
    for url in (
        genuine.replace("https://", "http://"),
        genuine.replace("scaleway.com/", "scaleway.com.example.com/"),
        "https://messaging.s3.fr-par.scw.cloud/subscribe?token=abc",
    ):
        assert not sns.allowed(pattern, url), url


# -- the handshake ---------------------------------------------------------------------------------


def test_subscription_confirmation_gets_its_subscribe_url(ca: CA, signer: SnsSigner) -> None:
    server = sns_server()
    url = server.subscribe_url(TOPIC)
    result = parsed(ca, signer, stored("subscription_confirmation", SubscribeURL=url))
    assert result.events == [] and result.response == {"subscription": "confirmed"}
    assert result.followup is not None
    assert result.followup() == f"sns subscription confirmed topic={TOPIC}"
    assert url.removeprefix(server.base) in server.requests


def test_every_missing_setting_is_named_at_once() -> None:
    source = SourceConfig(name="tem", esp="scaleway_tem", values={})
    with pytest.raises(ConfigError) as exc:
        ScalewayTemParser(source)
    assert [p.split(":")[0] for p in exc.value.problems] == [
        "SYNCWORKER_TEM_TOPIC_ARNS",
        "SYNCWORKER_TEM_CA_BUNDLE",
    ]
