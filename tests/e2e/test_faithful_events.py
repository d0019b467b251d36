"""What an event stream receives is what the parser produced, field by field: the queue and the
stored event share one codec, so no field is dropped or glued to another on the way."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import datetime
from typing import Any

import pytest
import redis

from syncworker import bootstrap as runtime
from syncworker.devkit.emulators.amplitude import AmplitudeEmulator
from syncworker.devkit.emulators.mixpanel import MixpanelEmulator
from syncworker.devkit.emulators.segment import SegmentEmulator
from syncworker.devkit.emulators.webhook_receiver import WebhookReceiver, new_secret
from syncworker.events import HygieneEvent
from syncworker.queue.enqueue import Enqueuer
from tests.conftest import SettingsFactory
from tests.intake.signing import payload, signer_for

pytestmark = pytest.mark.slow  # the whole pipeline in real processes

FIELDS = ("source", "esp", "reason", "smtp_code", "message_id", "list_id")


def _ms(value: Any) -> int:
    if isinstance(value, str):
        return round(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)
    return int(value)


def _segment(emulator: SegmentEmulator) -> list[dict[str, Any]]:
    return [
        {**t["properties"], "message_id": t["properties"].get("email_id"), "at": t["timestamp"]}
        for t in emulator.tracks
    ]


def _mixpanel(emulator: MixpanelEmulator) -> list[dict[str, Any]]:
    return [
        {
            **e["properties"],
            "message_id": e["properties"].get("email_id"),
            "at": e["properties"]["time"],
        }
        for e in emulator.events
    ]


def _amplitude(emulator: AmplitudeEmulator) -> list[dict[str, Any]]:
    return [
        {
            **e.get("event_properties", {}),
            "message_id": e.get("event_properties", {}).get("email_id"),
            "at": e["time"],
        }
        for e in emulator.events
    ]


def _webhook(emulator: WebhookReceiver) -> list[dict[str, Any]]:
    return [{**e, "at": e["occurred_at"]} for e in emulator.events]


Stream = tuple[dict[str, str], Callable[[], list[dict[str, Any]]]]


@pytest.fixture()
def streams() -> Iterator[dict[str, Stream]]:
    secret = new_secret()
    with ExitStack() as stack:
        seg = stack.enter_context(SegmentEmulator(write_key="seg"))
        mp = stack.enter_context(MixpanelEmulator())
        am = stack.enter_context(AmplitudeEmulator())
        rx = stack.enter_context(WebhookReceiver(secret))
        yield {
            "segment": ({"WRITE_KEY": "seg", "BASE_URL": seg.url}, lambda: _segment(seg)),
            "mixpanel": ({"TOKEN": mp.token, "BASE_URL": mp.url}, lambda: _mixpanel(mp)),
            "amplitude": ({"API_KEY": am.api_key, "BASE_URL": am.url}, lambda: _amplitude(am)),
            "webhook": ({"URL": rx.endpoint, "SECRET": secret}, lambda: _webhook(rx)),
        }


@pytest.mark.parametrize("name", ["segment", "mixpanel", "amplitude", "webhook"])
def test_event_streams_receive_every_field_the_parser_produced(
    name: str,
    streams: dict[str, Stream],
    make_settings: SettingsFactory,
    use_runtime: Callable[..., runtime.Runtime],
    run_worker: Callable[..., int],
    redis_conn: redis.Redis,
) -> None:
    settings_values, received = streams[name]
    rt = use_runtime(make_settings(destinations={name: settings_values}))
    parsed = signer_for("sendgrid").parser().parse(payload("sendgrid", "batch")).events
    # the fixture has bounces with both a reason and an SMTP code, and events with a list id
    assert any(e.reason and e.smtp_code for e in parsed) and any(e.list_id for e in parsed)
    Enqueuer(redis_conn).ingest_events("sendgrid", "sendgrid", parsed, [], {})
    run_worker()

    cares = rt.destinations[name].cls.kinds
    expected: dict[str, HygieneEvent] = {e.message_id or "": e for e in parsed if e.kind in cares}
    got = {r["message_id"]: r for r in received()}
    assert set(got) == set(expected)
    for message_id, event in expected.items():
        sent = got[message_id]
        for name_ in FIELDS:
            # the analytics tools leave empty properties out or send ""; both mean "none"
            assert (sent.get(name_) or None) == getattr(event, name_), name_
        assert _ms(sent["at"]) == round(event.occurred_at * 1000)
