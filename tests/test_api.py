"""The token-protected JSON API: contact lookup, manual suppress/unsuppress, stats."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis
from flask.testing import FlaskClient

from syncworker.bootstrap import Runtime
from syncworker.destinations import EVENT_NAMES
from syncworker.devkit.emulators.segment import SegmentEmulator
from syncworker.events import HygieneEvent, Kind
from syncworker.web.app import create_app
from tests.conftest import SettingsFactory

TOKEN = {"Authorization": "Bearer api-token"}


@pytest.fixture()
def client(make_settings: SettingsFactory) -> FlaskClient:
    return create_app(make_settings(api_token="api-token")).test_client()


def test_api_needs_the_bearer_token(client: FlaskClient) -> None:
    assert client.get("/v1/contacts/jane@example.com").status_code == 401
    wrong = client.get("/v1/contacts/jane@example.com", headers={"Authorization": "Bearer x"})
    assert wrong.status_code == 401
    assert wrong.json is not None and wrong.json["error"] == "unauthorized"


def test_previous_token_is_accepted_while_rotating(make_settings: SettingsFactory) -> None:
    settings = make_settings(api_token="api-token", api_token_previous="old-token")
    client = create_app(settings).test_client()
    for token in ("api-token", "old-token"):
        response = client.get("/v1/stats", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200, token
    wrong = client.get("/v1/stats", headers={"Authorization": "Bearer other-token"})
    assert wrong.status_code == 401


def test_api_is_off_without_a_token(make_settings: SettingsFactory) -> None:
    client = create_app(make_settings()).test_client()
    response = client.get("/v1/stats", headers={"Authorization": "Bearer "})
    assert response.status_code == 401
    assert response.json is not None and "SYNCWORKER_API_TOKEN" in response.json["detail"]


def test_unknown_contact_is_404(client: FlaskClient) -> None:
    response = client.get("/v1/contacts/nobody@example.com", headers=TOKEN)
    assert response.status_code == 404


def test_lookup_shows_state_reasons_history(client: FlaskClient) -> None:
    app_state = client.application.extensions["syncworker"]
    event = HygieneEvent("k1", "postmark", "postmark", "jane@example.com", Kind.SPAM_COMPLAINT, 5.0)
    app_state.runtime.ledger.apply([event])
    body = client.get("/v1/contacts/Jane@Example.com", headers=TOKEN).json
    assert body is not None
    assert body["suppressed"] is True
    assert body["reasons"] == {"spam_complaint": {"at": 5.0, "source": "postmark", "detail": None}}
    assert body["history"][0]["effect"] == "suppressed"


def test_manual_suppress_and_unsuppress_are_recorded(
    client: FlaskClient, redis_conn: redis.Redis
) -> None:
    url = "/v1/contacts/bob@example.com"
    done = client.post(url + "/suppress", json={"reason": "legal request"}, headers=TOKEN).json
    assert done is not None and done["suppressed"] is True
    assert done["reasons"]["manual"]["detail"] == "legal request"
    assert done["reasons"]["manual"]["source"] == "api"
    undone = client.post(url + "/unsuppress", json={"reason": "mistake"}, headers=TOKEN).json
    assert undone is not None and undone["suppressed"] is False
    assert [h["kind"] for h in undone["history"]] == ["manual_unsuppress", "manual"]


def test_manual_change_rejects_bad_input(client: FlaskClient) -> None:
    response = client.post(
        "/v1/contacts/bob@example.com/suppress", json={"reason": 5}, headers=TOKEN
    )
    assert response.status_code == 400
    assert client.post("/v1/contacts/bob/suppress", json={}, headers=TOKEN).status_code == 400


def test_stats(client: FlaskClient) -> None:
    body = client.get("/v1/stats", headers=TOKEN).json
    assert body is not None
    assert body["queues"] == {"ingest": 0, "deliver": 0}


def test_manual_changes_reach_the_event_streams(
    make_settings: SettingsFactory,
    use_runtime: Callable[..., Runtime],
    run_worker: Callable[..., int],
) -> None:
    """The README promises event streams a manual suppress as an unsubscribe and an unsuppress
    as a resubscribe: through the API, a worker, and a Segment emulator."""
    with SegmentEmulator(write_key="seg") as segment:
        settings = make_settings(
            api_token="api-token",
            destinations={"segment": {"WRITE_KEY": "seg", "BASE_URL": segment.url}},
        )
        use_runtime(settings)
        client = create_app(settings).test_client()
        url = "/v1/contacts/Bob@Example.com"
        assert client.post(url + "/suppress", json={"reason": "legal"}, headers=TOKEN).json
        assert client.post(url + "/unsuppress", json={"reason": "oops"}, headers=TOKEN).json
        run_worker()
        tracks = sorted(segment.tracks, key=lambda t: t["timestamp"])
    assert [t["event"] for t in tracks] == [
        EVENT_NAMES[Kind.UNSUBSCRIBE],
        EVENT_NAMES[Kind.RESUBSCRIBE],
    ]
    assert [t["properties"]["reason"] for t in tracks] == ["legal", "oops"]
    assert {t["properties"]["source"] for t in tracks} == {"api"}
