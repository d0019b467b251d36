"""A destination outage several times longer than the whole retry schedule, with a real worker:
the breaker opens, the destination is only probed, no contact is dead-lettered, status and
metrics say so, and the backlog drains once it answers again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from click.testing import CliRunner

from syncworker import codec
from syncworker.cli import main
from syncworker.delivery import breaker
from syncworker.devkit.emulators.hubspot import HubSpotEmulator
from syncworker.events import HygieneEvent, Kind
from syncworker.queue.enqueue import Enqueuer
from syncworker.store.keys import DEAD, INFLIGHT, PENDING
from syncworker.web.app import create_app
from tests.conftest import SettingsFactory
from tests.processes import clean_env, start_worker, wait_until
from tests.test_status import metric_samples

EMAILS = [f"outage{i:03d}@example.com" for i in range(200)]
PROBE_S = 1.0  # one probe a second while open
PROBES = 8  # the outage lasts at least this many probe intervals
SCHEDULE = {  # the whole retry schedule is over within 2 s of a contact's first failure
    "SYNCWORKER_MAX_ATTEMPTS": "3",
    "SYNCWORKER_MAX_AGE": "2",
    "SYNCWORKER_BACKOFF_BASE": "0.2",
    "SYNCWORKER_BACKOFF_CAP": "0.5",
}


@pytest.fixture()
def hubspot() -> Iterator[HubSpotEmulator]:
    with HubSpotEmulator(token="hs") as emulator:
        emulator.seed(*EMAILS)
        yield emulator


def worker_env(redis_url: str, hubspot: HubSpotEmulator) -> dict[str, str]:
    return clean_env(
        {
            "REDIS_URL": redis_url,
            "SYNCWORKER_DESTINATIONS": "hubspot",
            "SYNCWORKER_HUBSPOT_TOKEN": "hs",
            "SYNCWORKER_HUBSPOT_BASE_URL": hubspot.url,
            "SYNCWORKER_HUBSPOT_RATE": "20/1",
            "SYNCWORKER_HUBSPOT_BATCH_SIZE": "10",
            "SYNCWORKER_BREAKER_FAILURES": "3",
            "SYNCWORKER_BREAKER_PROBE": str(PROBE_S),
            **SCHEDULE,
        }
    )


def events() -> list[dict[str, Any]]:
    return [
        codec.dump(HygieneEvent(f"out-{i}", "t", "t", e, Kind.UNSUBSCRIBE, 1_700_000_000.0 + i))
        for i, e in enumerate(EMAILS)
    ]


def test_an_outage_longer_than_the_retry_schedule_dead_letters_nothing(
    redis_url: str,
    redis_conn: redis.Redis,
    hubspot: HubSpotEmulator,
    make_settings: SettingsFactory,
    tmp_path: Path,
) -> None:
    env = worker_env(redis_url, hubspot)
    hubspot.down(503)
    Enqueuer(redis_conn).ingest({"source": "t", "events": events()}, "ingest test", {})
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        wait_until(
            lambda: breaker.read(redis_conn, "hubspot")["state"] != "closed", 30, "the breaker"
        )
        opened = 3  # BREAKER_FAILURES calls open it
        hubspot.wait_for(lambda: len(hubspot.requests) >= opened + PROBES, timeout=60)

        # what an operator sees during the outage
        status = CliRunner().invoke(main, ["status"], env=env)
        assert status.exit_code == 0, status.output
        shown = orjson.loads(status.output)["destinations"]["hubspot"]
        assert shown["breaker"]["state"] in ("open", "half_open")
        assert shown["breaker"]["failures"] >= 3 + PROBES - 1
        assert shown["breaker"]["since"] is not None
        assert shown["last_success_at"] is None and shown["last_error_at"] is not None
        assert "503" in shown["last_error"]
        assert shown["oldest_pending_s"] > PROBES - 2
        settings = make_settings(
            api_token="t",
            destinations={"hubspot": {"TOKEN": "hs", "BASE_URL": hubspot.url}},
        )
        client = create_app(settings).test_client()
        stats = client.get("/v1/stats", headers={"Authorization": "Bearer t"}).json
        assert stats is not None
        assert stats["destinations"]["hubspot"]["breaker"]["state"] in ("open", "half_open")
        samples = metric_samples(client.get("/metrics").get_data(as_text=True))
        open_now = samples[
            ("syncworker_breaker_state", (("destination", "hubspot"), ("state", "open")))
        ]
        half_now = samples[
            ("syncworker_breaker_state", (("destination", "hubspot"), ("state", "half_open")))
        ]
        assert open_now + half_now == 1
        assert samples[("syncworker_breaker_failures", (("destination", "hubspot"),))] >= 3
        assert samples[("syncworker_oldest_pending_age_seconds", (("destination", "hubspot"),))] > 0
        assert samples[("syncworker_last_success_seconds", (("destination", "hubspot"),))] == 0

        outage = hubspot.requests
        hubspot.up()
        assert all(r.status == 503 for r in outage)
        lasted = outage[-1].at - outage[0].at
        assert lasted > 3 * 2.0  # several times the whole retry schedule (MAX_AGE)
        probes = outage[opened:]
        assert all(len(r.json["inputs"]) == 1 for r in probes)  # then nothing but probes
        probing = probes[-1].at - outage[opened - 1].at
        assert len(probes) <= probing / PROBE_S + 1  # at most the probe rate while open
        assert redis_conn.llen(DEAD + "hubspot") == 0

        wait_until(
            lambda: (
                hubspot.opted_out == set(EMAILS)
                and redis_conn.zcard(PENDING + "hubspot") == 0
                and redis_conn.zcard(INFLIGHT + "hubspot") == 0
            ),
            60,
            "the backlog to drain",
        )
    finally:
        worker.stop()
    assert redis_conn.llen(DEAD + "hubspot") == 0
    seen = breaker.read(redis_conn, "hubspot")
    assert seen["state"] == "closed" and seen["failures"] == 0
    assert seen["last_success_at"] is not None
    drained = [r for r in hubspot.requests[len(outage) :] if r.status == 200]
    assert sum(len(r.json["inputs"]) for r in drained) >= len(EMAILS)
    print(
        orjson.dumps(
            {
                "outage_s": round(lasted, 1),
                "requests_while_open": len(probes),
                "requests_per_s_while_open": round(len(probes) / probing, 2),
                "drain_requests": len(drained),
                "drain_requests_per_s": round(
                    len(drained) / max(1e-3, drained[-1].at - drained[0].at), 1
                ),
                "dead_letters": redis_conn.llen(DEAD + "hubspot"),
            }
        ).decode()
    )
