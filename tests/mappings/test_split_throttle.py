"""A 429 on a later request of a batch sent in several requests: what was answered before it is
recorded delivered, only the contacts left wait (unspent, behind a pause), and a retry sends
each event exactly once - by the receiver's dedupe id and by content."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import requests

from mappings.salesforce import OPT_OUT
from syncworker.bootstrap import Runtime
from syncworker.config import Settings
from syncworker.delivery import schedule
from syncworker.delivery.loop import Delivery
from syncworker.destinations import (
    ContactChange,
    Destination,
    DestinationConfig,
    HttpClient,
    Outcome,
    OutcomeStatus,
)
from syncworker.devkit.emulators.amplitude import AmplitudeEmulator
from syncworker.devkit.emulators.base import Emulator
from syncworker.devkit.emulators.braze import BrazeEmulator
from syncworker.devkit.emulators.hubspot import HubSpotEmulator
from syncworker.devkit.emulators.mailchimp import MailchimpEmulator, subscriber_hash
from syncworker.devkit.emulators.mixpanel import MixpanelEmulator
from syncworker.devkit.emulators.rd_station import RDStationEmulator
from syncworker.devkit.emulators.salesforce import SalesforceEmulator
from syncworker.devkit.emulators.segment import SegmentEmulator
from syncworker.devkit.emulators.webhook_receiver import WebhookReceiver, new_secret
from syncworker.events import HygieneEvent, Kind
from syncworker.store.keys import ATTEMPTS, PAUSE, PENDING
from tests.conftest import SettingsFactory
from tests.mappings.contract import state_change
from tests.replies import scored

SECRET = new_secret()
EMAILS = [f"p{i}@example.com" for i in range(8)]
T0 = time.time() - 3600  # recent: analytics tools refuse old events
REASON = "550 mailbox unavailable " + "x" * 1200  # long: a few events fill a request


@pytest.fixture()
def runtime_for(
    make_settings: SettingsFactory, use_runtime: Callable[[Settings], Runtime]
) -> Callable[[str, dict[str, str]], Runtime]:
    def build(name: str, values: dict[str, str]) -> Runtime:
        settings = make_settings(
            destinations={name: {"RATE": "1000/1", **values}},
            backoff_base_s=10.0,
            max_attempts=3,
            http_timeout_s=2.0,
        )
        return use_runtime(settings)

    return build


def hard_bounces(rt: Runtime) -> list[str]:
    """One hard bounce per address; returns the event keys."""
    events = [
        HygieneEvent(f"ev-{e}", "test", "test", e, Kind.HARD_BOUNCE, T0 + i, reason=REASON)
        for i, e in enumerate(EMAILS)
    ]
    rt.ledger.apply(events)
    return [e.key for e in events]


def pending(conn: redis.Redis, dest: str) -> dict[str, float]:
    return {k.decode(): v for k, v in scored(conn.zrange(PENDING + dest, 0, -1, withscores=True))}


def apply(rt: Runtime, kinds: list[Kind]) -> None:
    """One event per address, of the given kinds."""
    rt.ledger.apply(
        [
            HygieneEvent(f"ev-{e}", "test", "test", e, kind, T0 + i, reason="550 no such user")
            for i, (e, kind) in enumerate(zip(EMAILS, kinds, strict=True))
        ]
    )


def throttle_then_resume(
    rt: Runtime,
    conn: redis.Redis,
    dest: str,
    keys: list[str],
    delivered_keys: Callable[[], set[str]],
    before_resume: Callable[[], None] = lambda: None,
) -> set[str]:
    """Run the loop into the throttle, check what it left, lift the pause and run it to the end;
    return the keys (event keys, or addresses for a CRM) delivered before the throttle."""
    before = time.time()
    report = Delivery(rt, dest).run()
    assert report.stopped == "throttled"
    assert 20 < schedule.paused_for(conn, dest) <= 30  # Retry-After, less the time since
    first = delivered_keys()
    assert first and first < set(keys)  # some parts went through, some did not
    due = pending(conn, dest)
    assert set(due) == set(keys) - first  # only the undelivered wait ...
    assert all(before + 29 < at <= time.time() + 30 for at in due.values())  # ... behind the pause
    assert conn.hlen(ATTEMPTS + dest) == 0  # ... without spending an attempt
    for change_key, email in zip(keys, EMAILS, strict=True):
        view = rt.ledger.view(email)
        assert view is not None
        wanted = "applied" if change_key in first else "throttled"
        assert view.sync[dest]["status"] == wanted, email
    # Retry-After has passed
    before_resume()
    conn.delete(PAUSE + dest)
    conn.zadd(PENDING + dest, dict.fromkeys(due, time.time()))
    assert Delivery(rt, dest).run().stopped == "drained"
    assert delivered_keys() == set(keys)
    assert not pending(conn, dest)
    return first


# -- webhook -----------------------------------------------------------------------------------


@pytest.fixture()
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(SECRET) as emulator:
        yield emulator


def webhook_events(receiver: WebhookReceiver) -> list[dict[str, Any]]:
    """Every event of every body the receiver accepted (bodies with a new webhook-id)."""
    return receiver.events


def test_webhook_sends_each_event_once_when_a_later_body_is_throttled(
    runtime_for: Callable[[str, dict[str, str]], Runtime],
    redis_conn: redis.Redis,
    receiver: WebhookReceiver,
) -> None:
    rt = runtime_for(
        "webhook", {"URL": receiver.endpoint, "SECRET": SECRET, "MAX_BATCH_BYTES": "4000"}
    )
    keys = hard_bounces(rt)
    receiver.fail_next(1, 429, after=2, headers={"Retry-After": "30"})
    throttle_then_resume(
        rt, redis_conn, "webhook", keys, lambda: {e["key"] for e in webhook_events(receiver)}
    )
    assert receiver.duplicates == 0
    sent = Counter(e["key"] for e in webhook_events(receiver))
    assert sent == Counter(keys)  # by content: each event in exactly one accepted body
    # the 429 answered body is sent again as the same events under the same webhook-id
    throttled = [r for r in receiver.requests if r.status == 429]
    assert len(throttled) == 1
    assert throttled[0].headers["webhook-id"] in receiver.webhook_ids


def test_webhook_through_the_worker_delivers_each_event_once_after_a_429(
    runtime_for: Callable[[str, dict[str, str]], Runtime],
    redis_conn: redis.Redis,
    receiver: WebhookReceiver,
    run_worker: Callable[..., int],
) -> None:
    """The real deliver job: it pauses, nothing is scheduled until Retry-After has passed, then
    the rest goes once."""
    rt = runtime_for(
        "webhook", {"URL": receiver.endpoint, "SECRET": SECRET, "MAX_BATCH_BYTES": "4000"}
    )
    keys = hard_bounces(rt)
    receiver.fail_next(1, 429, after=1, headers={"Retry-After": "30"})
    schedule.wake(rt, ["webhook"])
    run_worker()
    first = {e["key"] for e in webhook_events(receiver)}
    assert first and first < set(keys)
    due = pending(redis_conn, "webhook")
    assert set(due) == set(keys) - first
    assert redis_conn.hlen(ATTEMPTS + "webhook") == 0
    assert 20 < schedule.paused_for(redis_conn, "webhook") <= 30  # Retry-After, less the time since
    assert schedule.tick(rt) == []
    # Retry-After has passed
    redis_conn.delete(PAUSE + "webhook")
    redis_conn.zadd(PENDING + "webhook", dict.fromkeys(due, time.time()))
    assert schedule.tick(rt) == ["webhook"]
    run_worker()
    assert Counter(e["key"] for e in webhook_events(receiver)) == Counter(keys)
    assert receiver.duplicates == 0
    assert not pending(redis_conn, "webhook")


# -- Segment -----------------------------------------------------------------------------------


def test_segment_sends_each_message_once_when_a_later_batch_is_throttled(
    runtime_for: Callable[[str, dict[str, str]], Runtime], redis_conn: redis.Redis
) -> None:
    with SegmentEmulator(write_key="seg") as segment:
        rt = runtime_for(
            "segment", {"WRITE_KEY": "seg", "BASE_URL": segment.url, "MAX_BATCH_BYTES": "8000"}
        )
        keys = hard_bounces(rt)
        segment.fail_next(1, 429, after=1, headers={"Retry-After": "30"})

        def delivered() -> set[str]:
            return {m["properties"]["event_key"] for m in segment.received if m["type"] == "track"}

        throttle_then_resume(rt, redis_conn, "segment", keys, delivered)
        assert segment.duplicates == 0
        received = segment.received
        assert len(received) == len(segment.message_ids) == 2 * len(keys)  # by messageId
        tracks = Counter(m["properties"]["event_key"] for m in received if m["type"] == "track")
        assert tracks == Counter(keys)  # by content


# -- Mixpanel ----------------------------------------------------------------------------------


def test_mixpanel_imports_each_event_once_when_a_later_import_is_throttled(
    runtime_for: Callable[[str, dict[str, str]], Runtime], redis_conn: redis.Redis
) -> None:
    with MixpanelEmulator() as mixpanel:
        rt = runtime_for(
            "mixpanel",
            {"TOKEN": "mixpanel-test-token", "BASE_URL": mixpanel.url, "MAX_BATCH_BYTES": "4000"},
        )
        keys = hard_bounces(rt)
        mixpanel.fail_next(1, 429, after=1, headers={"Retry-After": "30"})

        def delivered() -> set[str]:
            return {e["properties"]["event_key"] for e in mixpanel.received}

        throttle_then_resume(rt, redis_conn, "mixpanel", keys, delivered)
        assert mixpanel.duplicates == 0
        assert len(mixpanel.received) == len(mixpanel.insert_ids) == len(keys)  # by $insert_id
        assert Counter(e["properties"]["event_key"] for e in mixpanel.received) == Counter(keys)


# -- Amplitude ---------------------------------------------------------------------------------


def test_amplitude_sends_each_event_once_when_a_later_upload_is_throttled(
    runtime_for: Callable[[str, dict[str, str]], Runtime], redis_conn: redis.Redis
) -> None:
    with AmplitudeEmulator() as amplitude:
        rt = runtime_for(
            "amplitude",
            {
                "API_KEY": "amplitude-test-api-key",
                "BASE_URL": amplitude.url,
                "MAX_BATCH_BYTES": "6000",
            },
        )
        keys = hard_bounces(rt)
        amplitude.fail_next(1, 429, after=1, headers={"Retry-After": "30"})

        def delivered() -> set[str]:
            return {e["event_properties"]["event_key"] for e in amplitude.received}

        throttle_then_resume(rt, redis_conn, "amplitude", keys, delivered)
        assert amplitude.duplicates == 0
        assert len(amplitude.received) == len(amplitude.insert_ids) == len(keys)  # by insert_id
        received = Counter(e["event_properties"]["event_key"] for e in amplitude.received)
        assert received == Counter(keys)  # by content


def test_webhook_resends_a_throttled_body_under_its_webhook_id_whatever_the_pending_order(
    runtime_for: Callable[[str, dict[str, str]], Runtime],
    redis_conn: redis.Redis,
    receiver: WebhookReceiver,
) -> None:
    """The contacts left wait side by side and come back in another order than they were taken:
    the bodies are split the same way again, so the receiver sees the throttled body's id."""
    rt = runtime_for(
        "webhook", {"URL": receiver.endpoint, "SECRET": SECRET, "MAX_BATCH_BYTES": "4000"}
    )
    keys = hard_bounces(rt)
    # taken in an order that is neither the keys' nor the events' (pending since a while)
    taken_order = [keys[i] for i in (5, 1, 7, 3, 0, 6, 2, 4)]
    redis_conn.zadd(PENDING + "webhook", {k: T0 + n for n, k in enumerate(taken_order)})
    receiver.fail_next(1, 429, after=1, headers={"Retry-After": "30"})
    throttle_then_resume(
        rt, redis_conn, "webhook", keys, lambda: {e["key"] for e in webhook_events(receiver)}
    )
    throttled = [r.headers["webhook-id"] for r in receiver.requests if r.status == 429]
    assert len(throttled) == 1 and throttled[0] in receiver.webhook_ids
    assert Counter(e["key"] for e in webhook_events(receiver)) == Counter(keys)
    assert receiver.duplicates == 0


# -- CRMs: one write per contact reaches the destination once ------------------------------------


def written(emulator: Emulator, path: str, method: str = "POST") -> set[str]:
    """Addresses named by the answered (2xx) requests to ``path``."""
    return {
        e
        for r in emulator.calls(path, method)
        if 200 <= r.status < 300
        for e in EMAILS
        if e in (r.path + r.body.decode())
    }


def once_each(emulator: Emulator, path: str, method: str = "POST") -> Counter[str]:
    return Counter(
        e
        for r in emulator.calls(path, method)
        if 200 <= r.status < 300
        for e in EMAILS
        if e in (r.path + r.body.decode())
    )


def test_hubspot_per_contact_opt_outs_are_sent_once_when_one_is_throttled(
    runtime_for: Callable[[str, dict[str, str]], Runtime], redis_conn: redis.Redis
) -> None:
    with HubSpotEmulator() as hubspot:
        hubspot.seed(*EMAILS)
        rt = runtime_for(
            "hubspot",
            {"TOKEN": hubspot.token, "BASE_URL": hubspot.url, "SUBSCRIPTION_BATCH": "false"},
        )
        apply(rt, [Kind.UNSUBSCRIBE] * len(EMAILS))
        hubspot.fail_next(1, 429, after=3, headers={"Retry-After": "30"})
        path = "/communication-preferences/v4/statuses/"
        first = throttle_then_resume(
            rt, redis_conn, "hubspot", EMAILS, lambda: written(hubspot, path)
        )
        assert first == set(EMAILS[:3])
        assert once_each(hubspot, path) == Counter(EMAILS)
        assert hubspot.opted_out == set(EMAILS)


def test_hubspot_contacts_done_before_a_throttled_property_update_keep_their_outcome(
    runtime_for: Callable[[str, dict[str, str]], Runtime], redis_conn: redis.Redis
) -> None:
    """Unsubscribes need the opt-out only; hard bounces the opt-out and the flag properties."""
    with HubSpotEmulator() as hubspot:
        hubspot.seed(*EMAILS)
        rt = runtime_for("hubspot", {"TOKEN": hubspot.token, "BASE_URL": hubspot.url})
        apply(rt, [Kind.UNSUBSCRIBE] * 4 + [Kind.HARD_BOUNCE] * 4)
        hubspot.fail_next(1, 429, after=1, headers={"Retry-After": "30"})
        update = "/crm/v3/objects/contacts/batch/update"

        def done() -> set[str]:  # opted out, and flagged where they need it
            flagged = written(hubspot, update)
            return set(EMAILS[:4]) & hubspot.opted_out | flagged

        first = throttle_then_resume(rt, redis_conn, "hubspot", EMAILS, done)
        assert first == set(EMAILS[:4])
        assert once_each(hubspot, update) == Counter(EMAILS[4:])
        opt_outs = once_each(hubspot, "/communication-preferences/v4/statuses/batch/")
        assert all(opt_outs[e] == 1 for e in EMAILS[:4])  # the unsubscribes: not sent again
        assert hubspot.opted_out == set(EMAILS)


def test_salesforce_addresses_saved_before_the_request_limit_are_not_written_again(
    runtime_for: Callable[[str, dict[str, str]], Runtime], redis_conn: redis.Redis
) -> None:
    """120 addresses with a Contact and a Lead each: 240 records, two collections PATCHes; the
    API allocation runs out (403 REQUEST_LIMIT_EXCEEDED) at the second."""
    emails = [f"s{i:03d}@example.com" for i in range(120)]
    with SalesforceEmulator() as salesforce:
        for email in emails:
            salesforce.seed(email, "Contact")
            salesforce.seed(email, "Lead")
        rt = runtime_for(
            "salesforce",
            {
                "CLIENT_ID": salesforce.client_id,
                "CLIENT_SECRET": salesforce.client_secret,
                "REFRESH_TOKEN": salesforce.refresh_token,
                "BASE_URL": salesforce.url,
                "LIMIT_PAUSE": "30",
            },
        )
        rt.ledger.apply(
            [HygieneEvent(f"ev-{e}", "test", "test", e, Kind.UNSUBSCRIBE, T0) for e in emails]
        )
        salesforce.api_limit = salesforce.api_used + 3  # two queries and one PATCH

        def saved() -> set[str]:
            return {e for e in emails if all(r[OPT_OUT] for r in salesforce.records(e))}

        def patched() -> Counter[str]:
            ids = Counter(
                rec["id"]
                for r in salesforce.calls("/services/data/", "PATCH")
                if r.status == 200
                for rec in r.json["records"]
            )
            return Counter({e: sum(ids[r["Id"]] for r in salesforce.records(e)) for e in emails})

        before = time.time()
        report = Delivery(rt, "salesforce").run()
        assert report.stopped == "throttled"
        assert (
            20 < schedule.paused_for(redis_conn, "salesforce") <= 30
        )  # Retry-After, less the time since
        first = saved()
        assert 0 < len(first) < len(emails)
        due = pending(redis_conn, "salesforce")
        assert set(due) == set(emails) - first
        assert all(before + 29 < at <= time.time() + 30 for at in due.values())
        assert redis_conn.hlen(ATTEMPTS + "salesforce") == 0
        for email in emails:
            view = rt.ledger.view(email)
            assert view is not None
            wanted = "applied" if email in first else "throttled"
            assert view.sync["salesforce"]["status"] == wanted
        salesforce.api_limit = 10_000
        redis_conn.delete(PAUSE + "salesforce")
        redis_conn.zadd(PENDING + "salesforce", dict.fromkeys(due, time.time()))
        assert Delivery(rt, "salesforce").run().stopped == "drained"
        assert saved() == set(emails)
        assert set(patched().values()) == {2}  # each record written once: Contact and Lead


def test_braze_writes_answered_before_a_429_are_not_sent_again(
    runtime_for: Callable[[str, dict[str, str]], Runtime], redis_conn: redis.Redis
) -> None:
    """Hard bounces go to the blocklist, unsubscribes to the email status: two requests."""
    with BrazeEmulator() as braze:
        braze.seed(*EMAILS)
        rt = runtime_for(
            "braze", {"API_KEY": braze.api_key, "BASE_URL": braze.url, "LOOKUP": "false"}
        )
        apply(rt, [Kind.HARD_BOUNCE] * 4 + [Kind.UNSUBSCRIBE] * 4)
        braze.fail_next(1, 429, after=1, headers={"Retry-After": "30"})

        def done() -> set[str]:
            return written(braze, "/email/blocklist") | written(braze, "/email/status")

        first = throttle_then_resume(rt, redis_conn, "braze", EMAILS, done)
        assert first == set(EMAILS[:4])
        assert once_each(braze, "/email/blocklist") == Counter(EMAILS[:4])
        assert once_each(braze, "/email/status") == Counter(EMAILS[4:])


def test_mailchimp_members_updated_before_a_429_are_not_read_or_written_again(
    runtime_for: Callable[[str, dict[str, str]], Runtime], redis_conn: redis.Redis
) -> None:
    with MailchimpEmulator() as mailchimp:
        mailchimp.seed("list1", *EMAILS)
        rt = runtime_for(
            "mailchimp",
            {"API_KEY": mailchimp.api_key, "LIST_ID": "list1", "BASE_URL": mailchimp.url + "/3.0"},
        )
        apply(rt, [Kind.UNSUBSCRIBE] * len(EMAILS))
        mailchimp.fail_next(
            1, 429, after=6, headers={"Retry-After": "30"}
        )  # a GET and a PATCH each

        def done() -> set[str]:
            statuses = mailchimp.statuses("list1")
            return {e for e in EMAILS if statuses[e] == "unsubscribed"}

        first = throttle_then_resume(rt, redis_conn, "mailchimp", EMAILS, done)
        assert first == set(EMAILS[:3])
        hashes = {subscriber_hash(e): e for e in EMAILS}
        sent = Counter(
            hashes[r.path.rsplit("/", 1)[1]]
            for r in mailchimp.calls("/3.0/lists/list1/members/", "PATCH")
        )
        assert sent == Counter(EMAILS)


def test_rd_station_contacts_updated_before_a_429_are_not_updated_again(
    runtime_for: Callable[[str, dict[str, str]], Runtime], redis_conn: redis.Redis
) -> None:
    with RDStationEmulator() as rd:
        uuids = {rd.seed(e, legal_bases=[]): e for e in EMAILS}
        rt = runtime_for(
            "rd_station",
            {
                "CLIENT_ID": rd.client_id,
                "CLIENT_SECRET": rd.client_secret,
                "REFRESH_TOKEN": rd.refresh_token,
                "BASE_URL": rd.url,
            },
        )
        apply(rt, [Kind.UNSUBSCRIBE] * len(EMAILS))
        rd.fail_next(1, 429, after=7, headers={"Retry-After": "30"})  # token, then GET + PATCH

        def updated() -> Counter[str]:
            return Counter(
                uuids[r.path.rsplit("/", 1)[1]]
                for r in rd.calls("/platform/contacts/", "PATCH")
                if r.status == 200
            )

        first = throttle_then_resume(rt, redis_conn, "rd_station", EMAILS, lambda: set(updated()))
        assert first == set(EMAILS[:3])
        assert [r.method for r in rd.requests if r.status == 429] == ["GET"]
        assert updated() == Counter(EMAILS)


# -- the SDK's per-contact loop ------------------------------------------------------------------


class OneByOne(Destination):
    """A destination without a batch API: HubSpot's per-contact opt-out, through sync_one."""

    name = "one_by_one"

    def sync_one(self, change: ContactChange) -> Outcome:
        path = f"/communication-preferences/v4/statuses/{change.email}/unsubscribe-all"
        self.http.post(path, params={"channel": "EMAIL"}, headers={"Authorization": "Bearer hs"})
        return Outcome.applied("opted out")


def test_the_inherited_per_contact_loop_keeps_the_contacts_synced_before_a_429(
    session: requests.Session,
) -> None:
    with HubSpotEmulator(token="hs") as hubspot:
        hubspot.seed(*EMAILS)
        http = HttpClient("one_by_one", hubspot.url, session=session, timeout=5.0)
        destination = OneByOne(DestinationConfig("one_by_one", {}), http)
        hubspot.fail_next(1, 429, after=3, headers={"Retry-After": "30"})
        outcomes = destination.sync([state_change(e, "unsubscribe") for e in EMAILS])
        assert [o.status for o in outcomes[:3]] == [OutcomeStatus.APPLIED] * 3
        assert all(o.pause and not o.counts and o.retry_after == 30 for o in outcomes[3:])
        assert len(hubspot.requests) == 4  # nothing sent after the 429
        assert hubspot.opted_out == set(EMAILS[:3])
