"""/metrics labels come only from event codes an ESP module knows: an unknown code, or an address
sent as a code, is counted under `other`, so no address reaches /metrics and the label set stays
bounded; the exposition stays well-formed."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest
import redis
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from syncworker.intake.contract import OTHER_CODE
from syncworker.intake.registry import ESP_PARSERS
from syncworker.store.keys import STATS
from syncworker.web.app import create_app
from tests.conftest import SettingsFactory
from tests.intake.signing import UNKNOWN_CODE, headers_of, signer_for
from tests.replies import fields

PUBLIC_URL = "https://hooks.example.com"  # what URL-signing ESPs signed; the app is told so
AUTH = {"Authorization": "Basic " + base64.b64encode(b"u:p").decode()}


def intake_labels(client: FlaskClient) -> dict[tuple[str, str], float]:
    """(source, event) -> value of syncworker_intake_events; the parser rejects bad text."""
    text = client.get("/metrics").get_data(as_text=True)
    return {
        (sample.labels["source"], sample.labels["event"]): sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "syncworker_intake_events"
        for sample in family.samples
    }


@pytest.fixture()
def client(make_settings: SettingsFactory) -> FlaskClient:
    creds = {"USERNAME": "u", "PASSWORD": "p"}
    sources = {"postmark": ("postmark", creds), "mailjet": ("mailjet", creds)}
    return create_app(make_settings(sources=sources)).test_client()


def test_unknown_and_address_codes_are_counted_as_other(
    client: FlaskClient, redis_conn: redis.Redis
) -> None:
    def post(source: str, body: Any) -> None:
        answer = client.post(f"/webhooks/{source}", data=orjson.dumps(body), headers=AUTH)
        assert answer.status_code == 200, answer.json

    post("postmark", {"RecordType": "jane.doe@example.com", "Recipient": "x@example.com"})
    post("postmark", {"RecordType": "Bounce", "Type": "bob@example.com", "ID": 1})
    post("postmark", {"RecordType": "Delivery", "Recipient": "x@example.com"})
    post("postmark", {"RecordType": "Bounce", "Type": "AutoResponder", "ID": 2})
    # one request, several codes: two unknown ones add up under one label
    batch = [{"event": "carol@example.com"}, {"event": "brand_new"}, {"event": "open"}]
    post("mailjet", batch)

    counted = {k.decode(): int(v) for k, v in fields(redis_conn.hgetall(STATS)).items()}
    assert counted == {
        "in:postmark:other": 2,
        "in:postmark:Delivery": 1,
        "in:postmark:Bounce:AutoResponder": 1,
        "in:mailjet:other": 2,
        "in:mailjet:open": 1,
    }
    assert intake_labels(client) == {
        ("postmark", "other"): 2,
        ("postmark", "Delivery"): 1,
        ("postmark", "Bounce:AutoResponder"): 1,
        ("mailjet", "other"): 2,
        ("mailjet", "open"): 1,
    }
    assert b"@" not in client.get("/metrics").data


def test_counters_kept_from_an_older_release_show_as_other(
    client: FlaskClient, redis_conn: redis.Redis
) -> None:
    """Counters an older release wrote with any code are summed under `other` in /metrics."""
    redis_conn.hset(
        STATS,
        mapping={
            "in:postmark:jane@example.com": 2,
            "in:postmark:Bounce:bob@example.com": 3,
            'in:postmark:a"b\\c\nd': 1,
            "in:postmark:Delivery": 4,
            "in:postmark:hard_bounce": 5,
            "in:postmark:quarantined": 6,
        },
    )
    assert intake_labels(client) == {
        ("postmark", "other"): 6,
        ("postmark", "Delivery"): 4,
        ("postmark", "hard_bounce"): 5,
        ("postmark", "quarantined"): 6,
    }
    assert b"@" not in client.get("/metrics").data


@pytest.mark.parametrize("esp", sorted(ESP_PARSERS))
def test_every_esp_counts_an_unknown_code_as_other(
    esp: str, make_settings: SettingsFactory, redis_conn: redis.Redis
) -> None:
    signer = signer_for(esp)
    settings = make_settings(sources={esp: (esp, signer.values)}, public_url=PUBLIC_URL)
    client = create_app(settings).test_client()
    signed = signer.sign(signer.envelope(signer.unknown_event))
    headers = headers_of(signed)
    answer = client.post(f"/webhooks/{esp}", data=signed.body, headers=headers)
    assert answer.status_code == 200, answer.json
    assert redis_conn.hget(STATS, f"in:{esp}:{OTHER_CODE}") == b"1"
    assert not redis_conn.hexists(STATS, f"in:{esp}:{UNKNOWN_CODE}")
    assert UNKNOWN_CODE.encode() not in client.get("/metrics").data


@pytest.mark.parametrize("esp", sorted(ESP_PARSERS))
def test_every_esp_module_declares_its_known_codes(esp: str) -> None:
    known = ESP_PARSERS[esp].known_codes
    assert known and all(isinstance(code, str) and code for code in known)
    assert OTHER_CODE not in known and not any("@" in code for code in known)
