"""Every ESP module in ESP_PARSERS keeps the intake contract: 401 for bad auth, 400 for garbage,
unknown codes ignored, and nothing but an IntakeError ever escapes."""

from __future__ import annotations

import pytest

from syncworker.errors import IntakeError, PayloadInvalid, SignatureInvalid
from syncworker.intake.contract import EspParser, ParseResult
from syncworker.intake.registry import ESP_PARSERS
from tests.intake.signing import UNKNOWN_CODE, EspSigner, request, signer_for, signers

ESPS = sorted(ESP_PARSERS)
GARBAGE = [
    b"",
    b"\x00\x01\x02garbage",
    b"{",
    b"not json at all",
    b"\xff\xfe\xfd",
    b"[" * 5000 + b"]" * 5000,
    b"null",
]
NASTY = [
    *GARBAGE,
    b"[]",
    b"{}",
    b"0",
    b"-1e999",
    b'"\\ud800"',
    b'[{"event": null}]',
    b'{"event-data": null, "signature": null}',
    b'{"RecordType": ["Bounce"]}',
    b'[{"event": "bounce", "email": {}, "timestamp": []}]',
    b'{"event": "bounce", "email": "a@example.com", "time": 1e400}',
]


@pytest.fixture(params=ESPS)
def signer(request: pytest.FixtureRequest) -> EspSigner:
    esp: str = request.param
    if esp not in signers():
        pytest.fail(f"{esp} is in ESP_PARSERS but tests/intake/signing.py has no signer for it")
    return signer_for(esp)


def test_every_esp_has_a_signer() -> None:
    missing = sorted(set(ESP_PARSERS) - set(signers()))
    assert not missing, f"add tests/intake/signers/<esp>.py (signer()) for: {missing}"


def test_parser_declares_its_slug_settings_and_verification(signer: EspSigner) -> None:
    parser_class = ESP_PARSERS[signer.esp]
    assert parser_class.esp == signer.esp
    assert parser_class.settings and set(parser_class.settings) <= set(signer.values)
    assert parser_class.verification
    assert parser_class.__module__ == f"syncworker.intake.esps.{signer.esp}"


def test_signed_request_is_accepted(signer: EspSigner) -> None:
    parser = signer.parser()
    req = signer.sign(signer.envelope(signer.unknown_event))
    parser.verify(req)
    assert isinstance(parser.parse(req.body), ParseResult)


def test_request_signed_with_other_secrets_is_401(signer: EspSigner) -> None:
    other = signer_for(signer.esp)
    req = other.sign(signer.envelope(signer.unknown_event))
    with pytest.raises(SignatureInvalid) as exc:
        signer.parser().verify(req)
    assert exc.value.status == 401


def test_unsigned_request_is_401(signer: EspSigner) -> None:
    with pytest.raises(SignatureInvalid) as exc:
        signer.parser().verify(request(signer.envelope(signer.unknown_event)))
    assert exc.value.status == 401


@pytest.mark.slow
@pytest.mark.parametrize("garbage", GARBAGE)
def test_garbage_after_valid_auth_is_400(signer: EspSigner, garbage: bytes) -> None:
    parser = signer.parser()
    req = signer.sign(garbage)
    if signer.signs_any_bytes:
        parser.verify(req)
    with pytest.raises(PayloadInvalid) as exc:
        parser.parse(req.body)
    assert exc.value.status == 400


def test_wrong_envelope_after_valid_auth_is_400(signer: EspSigner) -> None:
    parser = signer.parser()
    req = signer.sign(signer.wrong_shape)
    parser.verify(req)
    with pytest.raises(PayloadInvalid):
        parser.parse(req.body)


def test_unknown_event_code_is_ignored(signer: EspSigner) -> None:
    parser = signer.parser()
    req = signer.sign(signer.envelope(signer.unknown_event))
    parser.verify(req)
    result = parser.parse(req.body)
    assert result.events == [] and result.quarantined == []
    assert dict(result.ignored) == {UNKNOWN_CODE: 1}


@pytest.mark.slow
@pytest.mark.parametrize("body", NASTY)
def test_only_intake_errors_escape(signer: EspSigner, body: bytes) -> None:
    parser: EspParser = signer.parser()
    for req in (request(body), signer.sign(body)):
        try:
            parser.verify(req)
        except SignatureInvalid:
            pass
        try:
            parser.parse(req.body)
        except PayloadInvalid:
            pass
        except IntakeError as exc:
            pytest.fail(f"parse raised {type(exc).__name__}, expected PayloadInvalid")
