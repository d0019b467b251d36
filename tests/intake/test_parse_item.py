"""Every ESP module parses a quarantined item again (``parse_item``), which is what
``syncworker quarantine replay`` relies on: an event's ``raw`` yields that same event, and a
quarantined item yields one outcome, never several (a replay must not multiply records)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncworker.errors import PayloadInvalid
from syncworker.intake.contract import EspParser, ParseResult
from syncworker.intake.registry import ESP_PARSERS
from tests.intake.signing import PAYLOADS, EspSigner, payload, signer_for
from tests.intake.test_fuzz import EVENTS, JSON_VALUES, check_result, mutated
from tests.intake.test_fuzz import signer_for as cached_signer

ESPS = sorted(ESP_PARSERS)
FUZZ = settings(max_examples=100, deadline=None)


def stored(raw: Any) -> Any:
    """``raw`` as a quarantine record holds it: through JSON and back."""
    return orjson.loads(orjson.dumps(raw))


def received(signer: EspSigner, parser: EspParser, body: bytes) -> ParseResult | None:
    """A stored payload as the route parses it once verified; None if it is not a valid body."""
    req = signer.sign(body)
    parser.verify(req)
    try:
        return parser.parse_request(req)
    except PayloadInvalid:
        return None


def outcomes(result: ParseResult) -> int:
    return len(result.events) + sum(result.ignored.values()) + len(result.quarantined)


@pytest.mark.parametrize("esp", ESPS)
def test_each_event_raw_parses_to_the_same_event(esp: str) -> None:
    """For every fixture payload of the ESP: each event's raw, fed to parse_item, yields that
    event (same key, kind, address and details), and each quarantined item stays quarantined
    with the same reason."""
    signer = signer_for(esp)
    parser = signer.parser()
    events = 0
    for path in sorted((PAYLOADS / esp).glob("*.json")):
        result = received(signer, parser, payload(esp, path.stem))
        if result is None:
            continue
        for event in result.events:
            again = parser.parse_item(stored(event.raw))
            assert again.events == [event], (path.name, event.key)
            assert not again.quarantined and not again.ignored, path.name
            events += 1
        for bad in result.quarantined:
            again = parser.parse_item(stored(bad.raw))
            assert again.events == [] and not again.ignored, path.name
            assert [(q.reason, q.raw) for q in again.quarantined] == [(bad.reason, bad.raw)]
    assert events, f"no fixture of {esp} yields an event"


@pytest.mark.parametrize("esp", ESPS)
def test_the_sample_keeps_its_keys_through_parse_item(esp: str) -> None:
    """The sample the end-to-end test posts: the keys a replay gives are the route's keys."""
    signer = signer_for(esp)
    parser = signer.parser()
    result = received(signer, parser, payload(esp, signer.sample[0]))
    assert result is not None
    keys = [e.key for e in result.events]
    replayed = [
        again.key
        for event in result.events
        for again in parser.parse_item(stored(event.raw)).events
    ]
    assert replayed == keys and len(set(keys)) == len(keys)


@pytest.mark.slow
@pytest.mark.parametrize("esp", ESPS)
@FUZZ
@given(data=st.data())
def test_a_quarantined_item_replays_to_exactly_one_outcome(esp: str, data: st.DataObject) -> None:
    """Whatever an odd event is, what a verified request makes of it replays to one outcome:
    the same event, the same quarantine, or one count of ignored."""
    event = data.draw(mutated(esp) | EVENTS | JSON_VALUES, label="event")
    signer = cached_signer(esp)
    parser = signer.parser()
    result = received(signer, parser, signer.envelope(event))
    if result is None:
        return
    for item in [*(e.raw for e in result.events), *(q.raw for q in result.quarantined)]:
        again = parser.parse_item(stored(item))
        assert check_result(again, esp) == 1
    for bad in result.quarantined:
        [kept] = parser.parse_item(stored(bad.raw)).quarantined
        assert kept.reason == bad.reason


@pytest.mark.slow
@pytest.mark.parametrize("esp", ESPS)
@FUZZ
@given(raw=JSON_VALUES)
def test_any_raw_parses_or_is_payload_invalid(esp: str, raw: Any) -> None:
    """A record edited by hand, or quarantined by another release: a result or a clear error."""
    parser = cached_signer(esp).parser()
    try:
        result = parser.parse_item(raw)
    except PayloadInvalid:
        return
    check_result(result, esp)


def test_an_item_quarantined_before_its_key_was_kept_is_keyed_by_content() -> None:
    """Mailgun items quarantined by an older release hold event-data alone, without the token
    that keys the event: parse_item still recovers them, keyed by their content."""
    signer = signer_for("mailgun")
    parser = signer.parser()
    result = received(signer, parser, payload("mailgun", "failed_permanent"))
    assert result is not None
    [event] = result.events
    [old] = parser.parse_item(stored(event.raw["event-data"])).events
    assert old.key.startswith("mailgun:h:") and (old.email, old.kind) == (event.email, event.kind)
    assert parser.parse_item(stored(event.raw["event-data"])).events == [old]  # stable


def test_a_recipient_quarantined_alone_by_an_older_release_stays_invalid() -> None:
    parser = signer_for("amazon_ses").parser()
    for raw in ({"emailAddress": "not an address"}, "gone-too@example.com"):
        with pytest.raises(PayloadInvalid, match="without its notification"):
            parser.parse_item(raw)


def test_a_flat_unisender_event_kept_by_an_older_release_is_read_as_flat() -> None:
    parser = signer_for("unisender_go").parser()
    flat = orjson.loads(payload("unisender_go", "single_event"))
    del flat["auth"]
    [event] = parser.parse_item(flat).events
    assert (event.email, event.kind) == ("single.bounce@example.com", "hard_bounce")
