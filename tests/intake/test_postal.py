"""Postal: RSA-signed events become hygiene events; forged, downgraded or odd requests do not."""

from __future__ import annotations

import base64
import json
from collections import Counter
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from syncworker.config import SourceConfig
from syncworker.errors import ConfigError, PayloadInvalid, SignatureInvalid
from syncworker.events import Kind
from syncworker.intake.contract import ParseResult
from syncworker.intake.esps.postal import PostalParser
from tests.intake.signers.postal import (
    KID,
    SIGNATURE_256,
    SIGNATURE_SHA1,
    postal_keypair,
    sign_postal,
)
from tests.intake.signing import payload, request

Keypair = tuple[rsa.RSAPrivateKey, str]


@pytest.fixture(scope="module")
def current() -> Keypair:
    return postal_keypair()


@pytest.fixture(scope="module")
def previous() -> Keypair:
    return postal_keypair()


def make_parser(public_key: str, **values: str) -> PostalParser:
    config = SourceConfig(name="postal", esp="postal", values={"PUBLIC_KEY": public_key, **values})
    return PostalParser(config)


def verified(case: str, keypair: Keypair) -> ParseResult:
    body = payload("postal", case)
    parser = make_parser(keypair[1])
    parser.verify(request(body, sign_postal(body, keypair[0])))
    return parser.parse(body)


def with_changes(case: str, **payload_fields: Any) -> bytes:
    doc = orjson.loads(payload("postal", case))
    doc["payload"].update(payload_fields)
    return orjson.dumps(doc)


# -- events ------------------------------------------------------------------------------------


def test_hard_fail_is_a_hard_bounce_with_its_details(current: Keypair) -> None:
    result = verified("delivery_failed", current)
    [bounce] = result.events
    assert (bounce.email, bounce.kind) == ("no.such.user@example.com", Kind.HARD_BOUNCE)
    assert (bounce.source, bounce.esp) == ("postal", "postal")
    assert bounce.key == "postal:820b47a4-4dfd-42e4-ae6a-1e5bed5a33f1"
    assert bounce.occurred_at == 1477945177.52994
    assert bounce.message_id == "5817a64332f44_4ec93ff59e79d154565eb12345@app34.mail"
    assert bounce.smtp_code == "550"
    assert bounce.reason == "550 5.1.1 The email account that you tried to reach does not exist."
    assert bounce.raw == orjson.loads(payload("postal", "delivery_failed"))
    assert (result.ignored, result.quarantined) == (Counter(), [])


def test_soft_fail_counts_as_a_soft_bounce(current: Keypair) -> None:
    """Postal sends no final soft verdict: each delayed attempt is the soft signal there is."""
    [soft] = verified("delayed", current).events
    assert (soft.email, soft.kind, soft.smtp_code) == (
        "busy.mailbox@example.com",
        Kind.SOFT_BOUNCE,
        "451",
    )


def test_bounce_after_acceptance_is_hard_unless_postal_says_soft(current: Keypair) -> None:
    [bounce] = verified("bounced", current).events
    assert (bounce.email, bounce.kind, bounce.smtp_code) == (
        "gone@example.com",
        Kind.HARD_BOUNCE,
        None,
    )
    doc = orjson.loads(payload("postal", "bounced"))
    doc["payload"]["bounce"]["bounce_type"] = "soft"
    [soft] = make_parser(current[1]).parse(orjson.dumps(doc)).events
    assert soft.kind == Kind.SOFT_BOUNCE
    doc["payload"]["bounce"]["bounce_type"] = "hard"
    [hard] = make_parser(current[1]).parse(orjson.dumps(doc)).events
    assert hard.kind == Kind.HARD_BOUNCE


@pytest.mark.parametrize("case", ["sent", "incoming_failed"])
def test_non_hygiene_events_are_counted(current: Keypair, case: str) -> None:
    result = verified(case, current)
    assert result.events == [] and result.quarantined == []
    assert sum(result.ignored.values()) == 1


@pytest.mark.parametrize(
    "event",
    ["MessageLinkClicked", "MessageLoaded", "DomainDNSError", "SendLimitExceeded"],
)
def test_other_postal_events_are_ignored(current: Keypair, event: str) -> None:
    body = orjson.dumps({"event": event, "timestamp": 1.5, "uuid": "u", "payload": {}})
    assert make_parser(current[1]).parse(body).ignored == Counter({event: 1})


def test_unknown_status_on_a_failure_event_is_ignored(current: Keypair) -> None:
    body = with_changes("delivery_failed", status="Held")
    result = make_parser(current[1]).parse(body)
    assert result.events == [] and result.ignored == Counter(MessageDeliveryFailed=1)


def test_metadata_of_an_unexpected_type_does_not_lose_the_event(current: Keypair) -> None:
    body = with_changes("delivery_failed", output=["x"], details=42)
    [bounce] = make_parser(current[1]).parse(body).events
    assert (bounce.smtp_code, bounce.reason) == (None, "42")


def test_redelivery_has_the_same_key(current: Keypair) -> None:
    """Postal rebuilds the same body (uuid, queue timestamp) on each of its retries."""
    first = verified("delivery_failed", current).events
    retry = verified("delivery_failed", current).events
    assert [e.key for e in first] == [e.key for e in retry]
    assert first[0].key != verified("delayed", current).events[0].key


# -- malformed bodies and bad events -------------------------------------------------------------


@pytest.mark.parametrize("body", [b"", b"  ", b"not json", b"[", b"null", b"[]", b'"x"', b"\xff"])
def test_malformed_body_is_400(current: Keypair, body: bytes) -> None:
    with pytest.raises(PayloadInvalid) as exc:
        make_parser(current[1]).parse(body)
    assert exc.value.status == 400


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"uuid": None}, "uuid"),
        ({"uuid": ""}, "uuid"),
        ({"timestamp": "soon"}, "timestamp"),
        ({"timestamp": 1e20}, "timestamp"),
        ({"payload": None}, "payload"),
        ({"payload": {"status": "HardFail"}}, "message"),
        ({"payload": {"status": "HardFail", "message": {"to": "not an address"}}}, "to"),
        ({"event": None}, "event code missing"),
    ],
)
def test_invalid_events_are_quarantined_with_a_reason(
    current: Keypair, change: dict[str, Any], reason: str
) -> None:
    doc = {**orjson.loads(payload("postal", "delivery_failed")), **change}
    result = make_parser(current[1]).parse(orjson.dumps(doc))
    assert result.events == [] and len(result.quarantined) == 1
    assert reason in result.quarantined[0].reason
    assert result.quarantined[0].raw == doc


# -- verification --------------------------------------------------------------------------------


def test_signature_256_is_verified_on_the_raw_bytes(current: Keypair) -> None:
    """Postal's body is whatever its JSON encoder wrote: re-serializing would break the check."""
    body = json.dumps(orjson.loads(payload("postal", "bounced")), indent=3).encode()
    parser = make_parser(current[1])
    parser.verify(request(body, sign_postal(body, current[0], sha1=False)))
    assert len(parser.parse(body).events) == 1


def test_previous_key_is_accepted_during_rotation(current: Keypair, previous: Keypair) -> None:
    body = payload("postal", "sent")
    parser = make_parser(current[1], PUBLIC_KEY_PREVIOUS=previous[1])
    parser.verify(request(body, sign_postal(body, current[0])))
    parser.verify(request(body, sign_postal(body, previous[0])))


def test_signature_by_another_key_is_refused(current: Keypair, previous: Keypair) -> None:
    body = payload("postal", "sent")
    with pytest.raises(SignatureInvalid) as exc:
        make_parser(current[1]).verify(request(body, sign_postal(body, previous[0])))
    assert exc.value.status == 401


def test_tampered_body_is_refused(current: Keypair) -> None:
    body = payload("postal", "delivery_failed")
    forged = body.replace(b"No.Such.User", b"victim")
    with pytest.raises(SignatureInvalid):
        make_parser(current[1]).verify(request(forged, sign_postal(body, current[0])))


def test_old_event_timestamps_are_accepted(current: Keypair) -> None:
    """The signed timestamp is the queue time, repeated on retries: it cannot bound a replay."""
    body = payload("postal", "delivery_failed")  # queued in 2016
    make_parser(current[1]).verify(request(body, sign_postal(body, current[0])))


def test_sha1_only_request_is_refused_unless_allowed(current: Keypair) -> None:
    body = payload("postal", "sent")
    headers = sign_postal(body, current[0])
    del headers[SIGNATURE_256]
    with pytest.raises(SignatureInvalid, match="ALLOW_SHA1"):
        make_parser(current[1]).verify(request(body, headers))
    make_parser(current[1], ALLOW_SHA1="true").verify(request(body, headers))
    with pytest.raises(SignatureInvalid):
        make_parser(current[1], ALLOW_SHA1="no").verify(request(body, headers))


def test_bad_sha256_signature_does_not_fall_back_to_sha1(current: Keypair) -> None:
    body = payload("postal", "sent")
    headers = sign_postal(body, current[0])
    other = base64.b64encode(current[0].sign(b"other", padding.PKCS1v15(), hashes.SHA256()))
    headers[SIGNATURE_256] = other.decode()
    with pytest.raises(SignatureInvalid):
        make_parser(current[1], ALLOW_SHA1="true").verify(request(body, headers))


def test_sha1_signature_in_the_sha256_header_is_refused(current: Keypair) -> None:
    body = payload("postal", "sent")
    headers = sign_postal(body, current[0])
    headers[SIGNATURE_256] = headers[SIGNATURE_SHA1]
    with pytest.raises(SignatureInvalid):
        make_parser(current[1], ALLOW_SHA1="true").verify(request(body, headers))


@pytest.mark.parametrize(
    "value",
    [
        "%%% not base64 %%%",
        base64.b64encode(b"short").decode(),
        base64.b64encode(b"\x00" * 4000).decode(),
        "ÄÖÜ",
        "\udcff",
        "",
    ],
)
def test_malformed_signature_header_is_401(current: Keypair, value: str) -> None:
    body = payload("postal", "sent")
    headers = {**sign_postal(body, current[0], sha1=False), SIGNATURE_256: value}
    with pytest.raises(SignatureInvalid) as exc:
        make_parser(current[1]).verify(request(body, headers))
    assert exc.value.status == 401


def test_key_id_header_is_not_needed(current: Keypair) -> None:
    body = payload("postal", "sent")
    headers = sign_postal(body, current[0])
    del headers[KID]
    make_parser(current[1]).verify(request(body, headers))


# -- the public key setting ----------------------------------------------------------------------


def _b64url(number: int) -> str:
    raw = number.to_bytes((number.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def key_forms(private: rsa.RSAPrivateKey) -> dict[str, str]:
    public = private.public_key()
    numbers = public.public_numbers()
    jwk = {"kty": "RSA", "use": "sig", "alg": "RS256", "e": _b64url(numbers.e)}
    jwk["n"] = _b64url(numbers.n)
    p_value = base64.b64encode(
        public.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    ).decode()
    pem = public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
    return {
        "p_value": p_value,
        "dkim_record": f"v=DKIM1; t=s; h=sha256; p={p_value};",
        "wrapped_p_value": "\n".join(p_value[i : i + 64] for i in range(0, len(p_value), 64)),
        "pem": pem,
        "pkcs1_pem": public.public_bytes(Encoding.PEM, PublicFormat.PKCS1).decode(),
        "jwk": json.dumps(jwk),
        "jwks": json.dumps({"keys": [{"kty": "EC", "crv": "P-256"}, jwk]}),
    }


@pytest.mark.parametrize(
    "form", ["p_value", "dkim_record", "wrapped_p_value", "pem", "pkcs1_pem", "jwk", "jwks"]
)
def test_public_key_forms_postal_publishes_are_accepted(current: Keypair, form: str) -> None:
    body = payload("postal", "sent")
    make_parser(key_forms(current[0])[form]).verify(request(body, sign_postal(body, current[0])))


@pytest.mark.parametrize(
    "bad",
    [
        "bm90IGEga2V5",
        "-----BEGIN PUBLIC KEY-----\nxx\n-----END PUBLIC KEY-----",
        '{"kty": "RSA"}',
        '{"keys": []}',
        '{"keys": [{"kty": "RSA", "n": "!!", "e": "AQAB"}]}',
        "{not json",
    ],
)
def test_unloadable_public_key_stops_startup(current: Keypair, bad: str) -> None:
    with pytest.raises(ConfigError, match="SYNCWORKER_POSTAL_PUBLIC_KEY_PREVIOUS"):
        make_parser(current[1], PUBLIC_KEY_PREVIOUS=bad)


def test_non_rsa_public_key_stops_startup() -> None:
    der = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(ConfigError, match="not an RSA public key"):
        make_parser(base64.b64encode(der).decode())


def test_a_message_held_for_the_suppression_list_is_a_hard_bounce(current: Keypair) -> None:
    """Postal puts an address on its suppression list after hard fails and holds later mail to
    it: proof enough to suppress at once, with Postal's details as the reason."""
    [event] = verified("held_suppressed", current).events
    assert (event.email, event.kind) == ("listed@example.com", Kind.HARD_BOUNCE)
    assert event.reason == (
        "Recipient (listed@example.com) is on the suppression list (reason: too many hard fails)"
    )


@pytest.mark.parametrize(
    "details",
    [
        "Credential is configured to hold all messages authenticated by it.",
        "Message has a spam score higher than the server's maximum.",
        None,
    ],
)
def test_a_message_held_for_another_reason_is_ignored(
    current: Keypair, details: str | None
) -> None:
    doc = orjson.loads(payload("postal", "held_suppressed"))
    doc["payload"]["details"] = details
    result = make_parser(current[1]).parse(orjson.dumps(doc))
    assert result.events == [] and result.ignored == Counter(MessageHeld=1)
