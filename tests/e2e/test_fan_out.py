"""One batch fans out to every destination at once, while one is throttled and another is down:
the healthy ones converge to the ledger, and the others catch up once they recover."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import requests

from syncworker.devkit.emulators.amplitude import AmplitudeEmulator
from syncworker.devkit.emulators.braze import BrazeEmulator
from syncworker.devkit.emulators.hubspot import HubSpotEmulator
from syncworker.devkit.emulators.mailchimp import MailchimpEmulator
from syncworker.devkit.emulators.mixpanel import MixpanelEmulator
from syncworker.devkit.emulators.rd_station import RDStationEmulator
from syncworker.devkit.emulators.salesforce import SalesforceEmulator
from syncworker.devkit.emulators.segment import SegmentEmulator
from syncworker.devkit.emulators.webhook_receiver import WebhookReceiver, new_secret
from syncworker.store.keys import DEAD, INFLIGHT, PENDING
from tests import ledger_reads
from tests.intake.signing import sendgrid_keypair, sign_sendgrid
from tests.processes import Process, clean_env, start_gunicorn, start_worker, wait_until
from tests.replies import fields

pytestmark = pytest.mark.slow  # the whole pipeline in real processes

ADDRESSES = [f"fan{i:03d}@example.com" for i in range(60)]
CODES = [("bounce", {"type": "bounce"}), ("spamreport", {}), ("unsubscribe", {})]


@dataclass
class Ledger:
    """What the ledger says, read from Redis: the truth every destination must reach."""

    suppressed: dict[str, set[str]]  # address -> reasons
    events: int  # unique hygiene events applied

    @classmethod
    def read(cls, conn: redis.Redis) -> Ledger:
        suppressed: dict[str, set[str]] = {}
        events = 0
        for email in ADDRESSES:
            reasons = ledger_reads.reasons(conn, email)
            if reasons:
                suppressed[email] = reasons
            events += len(ledger_reads.history(conn, email))
        return cls(suppressed, events)


@dataclass
class Destination:
    """A destination in this test: its emulator, its settings, and what "converged" means."""

    name: str
    emulator: Any
    settings: dict[str, str]
    converged: Callable[[Any, Ledger], bool]


def hubspot_converged(hs: HubSpotEmulator, ledger: Ledger) -> bool:
    return hs.opted_out == set(ledger.suppressed)


def segment_converged(seg: SegmentEmulator, ledger: Ledger) -> bool:
    return len(seg.tracks) == ledger.events and seg.duplicates == 0


def webhook_converged(rx: WebhookReceiver, ledger: Ledger) -> bool:
    keys = [e["key"] for e in rx.events]
    return len(keys) == len(set(keys)) == ledger.events


def salesforce_converged(sf: SalesforceEmulator, ledger: Ledger) -> bool:
    return all(
        all(r["HasOptedOutOfEmail"] for r in sf.records(e)) == (e in ledger.suppressed)
        for e in ADDRESSES
    )


def mailchimp_converged(mc: MailchimpEmulator, ledger: Ledger) -> bool:
    statuses = mc.statuses("list1")
    return all((statuses.get(e) == "unsubscribed") == (e in ledger.suppressed) for e in ADDRESSES)


def braze_converged(bz: BrazeEmulator, ledger: Ledger) -> bool:
    profiles = bz.profiles()
    return all((profiles[e][0] == "unsubscribed") == (e in ledger.suppressed) for e in ADDRESSES)


def rd_station_converged(rd: RDStationEmulator, ledger: Ledger) -> bool:
    def declined(email: str) -> bool:
        contact = rd.contact(email) or {}
        return all(b["status"] == "declined" for b in contact.get("legal_bases", []))

    return all(declined(e) == (e in ledger.suppressed) for e in ADDRESSES)


def stream_converged(emulator: MixpanelEmulator | AmplitudeEmulator, ledger: Ledger) -> bool:
    return len(emulator.insert_ids) == len(emulator.events) == ledger.events


@pytest.fixture()
def destinations() -> Iterator[dict[str, Destination]]:
    secret = new_secret()
    with ExitStack() as stack:
        hs = stack.enter_context(HubSpotEmulator(token="hs"))
        hs.seed(*ADDRESSES)
        seg = stack.enter_context(SegmentEmulator(write_key="seg"))
        rx = stack.enter_context(WebhookReceiver(secret))
        sf = stack.enter_context(SalesforceEmulator())
        for email in ADDRESSES:
            sf.seed(email, "Contact")
        sf.seed(ADDRESSES[0], "Lead")  # a Lead with the same address: both must be updated
        mc = stack.enter_context(MailchimpEmulator())
        mc.seed("list1", *ADDRESSES)
        bz = stack.enter_context(BrazeEmulator())
        bz.seed(*ADDRESSES)
        rd = stack.enter_context(RDStationEmulator())
        granted = {"category": "communications", "type": "consent", "status": "granted"}
        for email in ADDRESSES:
            rd.seed(email, legal_bases=[granted])
        mp = stack.enter_context(MixpanelEmulator())
        am = stack.enter_context(AmplitudeEmulator())
        yield {
            "hubspot": Destination(
                "hubspot", hs, {"TOKEN": "hs", "BASE_URL": hs.url}, hubspot_converged
            ),
            "segment": Destination(
                "segment", seg, {"WRITE_KEY": "seg", "BASE_URL": seg.url}, segment_converged
            ),
            "webhook": Destination(
                "webhook", rx, {"URL": rx.endpoint, "SECRET": secret}, webhook_converged
            ),
            "salesforce": Destination(
                "salesforce",
                sf,
                {
                    "CLIENT_ID": sf.client_id,
                    "CLIENT_SECRET": sf.client_secret,
                    "REFRESH_TOKEN": sf.refresh_token,
                    "BASE_URL": sf.url,
                },
                salesforce_converged,
            ),
            "mailchimp": Destination(
                "mailchimp",
                mc,
                {"API_KEY": mc.api_key, "LIST_ID": "list1", "BASE_URL": mc.url + "/3.0"},
                mailchimp_converged,
            ),
            "braze": Destination(
                "braze", bz, {"API_KEY": bz.api_key, "BASE_URL": bz.url}, braze_converged
            ),
            "rd_station": Destination(
                "rd_station",
                rd,
                {
                    "CLIENT_ID": rd.client_id,
                    "CLIENT_SECRET": rd.client_secret,
                    "REFRESH_TOKEN": rd.refresh_token,
                    "BASE_URL": rd.url,
                },
                rd_station_converged,
            ),
            "mixpanel": Destination(
                "mixpanel", mp, {"TOKEN": mp.token, "BASE_URL": mp.url}, stream_converged
            ),
            "amplitude": Destination(
                "amplitude", am, {"API_KEY": am.api_key, "BASE_URL": am.url}, stream_converged
            ),
        }


def test_fan_out_with_one_destination_throttled_and_one_down(
    redis_url: str,
    redis_conn: redis.Redis,
    tmp_path: Path,
    destinations: dict[str, Destination],
) -> None:
    throttled, down = destinations["hubspot"], destinations["webhook"]
    healthy = [d for d in destinations.values() if d not in (throttled, down)]
    throttled.emulator.rate_limit(0, 2.0)  # every call: 429, Retry-After: 2
    down.emulator.down()  # every call: connection dropped

    private_key, public_key = sendgrid_keypair()
    rng = random.Random(7)
    batch = []
    for i, email in enumerate(ADDRESSES):
        code, extra = CODES[i % len(CODES)]
        batch.append({"email": email, "event": code, "timestamp": 1_790_000_000 + i, **extra})
        if rng.random() < 0.3:  # some addresses get a second kind of event
            batch.append({"email": email, "event": "spamreport", "timestamp": 1_790_001_000 + i})
    body = orjson.dumps(batch)

    env = clean_env(
        {
            "REDIS_URL": redis_url,
            "SYNCWORKER_SOURCES": "sendgrid",
            "SYNCWORKER_SENDGRID_PUBLIC_KEY": public_key,
            "SYNCWORKER_DESTINATIONS": ",".join(destinations),
            "SYNCWORKER_BACKOFF_BASE": "0.5",
            "SYNCWORKER_BACKOFF_CAP": "2",
            "SYNCWORKER_HTTP_TIMEOUT": "2",
        }
    )
    for dest in destinations.values():
        for key, value in dest.settings.items():
            env[f"SYNCWORKER_{dest.name.upper()}_{key}"] = value
        env.setdefault(f"SYNCWORKER_{dest.name.upper()}_RATE", "1000/1")
    web, url = start_gunicorn(env, tmp_path / "web.log")
    worker: Process | None = None
    try:
        answer = requests.post(
            f"{url}/webhooks/sendgrid", data=body, headers=sign_sendgrid(body, private_key)
        )
        assert answer.status_code == 200, answer.text
        worker = start_worker(env, tmp_path / "worker.log")

        def converged(group: list[Destination]) -> Callable[[], bool]:
            def check() -> bool:
                assert worker is not None and worker.alive(), worker and worker.output()
                ledger = Ledger.read(redis_conn)
                return bool(ledger.events) and all(d.converged(d.emulator, ledger) for d in group)

            return check

        # the healthy ones converge while the others are throttled or down
        wait_until(converged(healthy), 60, "the healthy destinations", interval=0.2)
        wait_until(lambda: throttled.emulator.throttled >= 2, 30, "the throttled one to be tried")
        wait_until(lambda: len(down.emulator.requests) >= 2, 30, "the down one to be retried")
        ledger = Ledger.read(redis_conn)
        assert not throttled.converged(throttled.emulator, ledger)
        assert not down.converged(down.emulator, ledger)

        throttled.emulator.rate_limit(None)
        down.emulator.up()
        wait_until(converged(list(destinations.values())), 90, "every destination", 0.2)
        for dest in destinations.values():

            def idle(d: str = dest.name) -> bool:
                return redis_conn.zcard(PENDING + d) + redis_conn.zcard(INFLIGHT + d) == 0

            wait_until(idle, 30, f"{dest.name} idle")
    finally:
        if worker is not None:
            worker.stop()
        web.stop()

    ledger = Ledger.read(redis_conn)
    assert len(ledger.suppressed) == len(ADDRESSES) and ledger.events == len(batch)
    for dest in destinations.values():
        assert dest.converged(dest.emulator, ledger), dest.name
        assert redis_conn.llen(DEAD + dest.name) == 0, f"{dest.name}: nothing was given up"
    # throttling spends no attempt: the throttled destination's contacts never counted a retry
    stats = {k.decode(): int(v) for k, v in fields(redis_conn.hgetall("sw:dstats:hubspot")).items()}
    assert stats.get("throttled", 0) >= 1 and stats.get("retry", 0) == 0
