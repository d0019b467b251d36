"""One definition of a valid event, shared by the intake and the worker: what the web accepted,
the worker applies or quarantines, event by event, and never fails the whole job over one."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rq import Queue
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer

from syncworker import bootstrap as runtime
from syncworker import codec
from syncworker.events import (
    MAX_KEY,
    HygieneEvent,
    Kind,
    address_problem,
    normalize_email,
)
from syncworker.intake.fields import load_address
from syncworker.intake.registry import ESP_PARSERS
from syncworker.ops.replay import replay
from syncworker.store.keys import CONTACT, INGEST, QUARANTINE
from syncworker.web.app import create_app
from tests import ledger_reads
from tests.conftest import SettingsFactory
from tests.intake.signing import headers_of, payload, signer_for

LONG_DOMAIN = ".".join(["d" * 60] * 3) + ".example"  # 191 characters
ACCEPTED = [
    "jane@example.com",
    "İnci@example.com",  # lowercases to "i" + U+0307: the worker used to refuse that form
    "ÉLODIE@exämple.fr",
    "user+tag@sub.example.co.uk",
    "user@localhost",
    "user@[192.0.2.1]",
    '"john..doe"@example.com',
    "a@b.c0m",
    "用户@例子.广告",
    f"{'l' * 59}@{LONG_DOMAIN}",  # 251 characters: an Amazon SES recipient seen refused
    "Jane Doe <Jane.Doe@Example.com>",
    '"Doe, Jane" <jane@example.com>',
]
REFUSED = ["", "plain", "@example.com", "jane@", "jane@@example.com", "jane doe@example.com",
           "jane@example", "a" * 320 + "@example.com", "jane@exa mple.com", "<>"]  # fmt: skip


@pytest.mark.parametrize("address", ACCEPTED)
def test_the_intake_field_and_the_codec_accept_the_same_address(address: str) -> None:
    loaded = load_address(address)
    assert loaded == normalize_email(address)
    assert address_problem(loaded) is None
    event = HygieneEvent("k", "src", "esp", loaded, Kind.HARD_BOUNCE, 1.0)
    assert codec.load(orjson.loads(orjson.dumps(codec.dump(event)))) == event


def test_display_names_are_dropped() -> None:
    assert load_address('"Jane Doe" <Jane@Example.com>') == "jane@example.com"
    assert load_address("Jane <jane@example.com>") == "jane@example.com"


@pytest.mark.parametrize("address", REFUSED)
def test_what_is_not_an_address_is_refused_by_both(address: str) -> None:
    assert address_problem(normalize_email(address)) is not None
    form = codec.dump(HygieneEvent("k", "src", "esp", address, Kind.HARD_BOUNCE, 1.0))
    with pytest.raises(codec.InvalidEvent) as caught:
        codec.load(form)
    assert "@" not in str(caught.value)  # the reason never repeats the address


@pytest.mark.parametrize("length", [MAX_KEY + 1, 256, 300, 5000])
def test_long_vendor_ids_become_bounded_stable_keys(length: int) -> None:
    vendor = "é" * length
    first = HygieneEvent(
        f"sparkpost:{vendor}", "s", "sparkpost", "a@example.com", Kind.HARD_BOUNCE, 1.0
    )
    again = HygieneEvent(
        f"sparkpost:{vendor}", "s", "sparkpost", "a@example.com", Kind.HARD_BOUNCE, 1.0
    )
    other = HygieneEvent(
        f"sparkpost:{vendor}x", "s", "sparkpost", "a@example.com", Kind.HARD_BOUNCE, 1.0
    )
    assert len(first.key) <= MAX_KEY and first.key.startswith("sparkpost:")
    assert first.key == again.key != other.key
    assert codec.problem(first) is None


def test_events_stored_before_reason_and_code_were_apart_still_load() -> None:
    legacy = {"key": "k", "source": "s", "esp": "e", "email": "a@example.com",
              "kind": "hard_bounce", "occurred_at": 5, "detail": "550 mailbox unknown",
              "stream": 1}  # fmt: skip
    event = codec.load(legacy)
    assert (event.reason, event.smtp_code, event.occurred_at) == ("550 mailbox unknown", None, 5.0)


TEXT = st.one_of(st.none(), st.text(max_size=300))


@pytest.mark.slow
@given(
    key=st.text(min_size=1, max_size=400),
    local=st.from_regex(r"[a-zA-Z0-9İçÉ._%+-]{1,64}", fullmatch=True),
    kind=st.sampled_from(list(Kind)),
    at=st.floats(min_value=0, max_value=253_402_300_799),
    texts=st.tuples(TEXT, TEXT, TEXT, TEXT),
)
@settings(max_examples=300, deadline=None)
def test_every_event_the_codec_admits_round_trips_through_json(
    key: str,
    local: str,
    kind: Kind,
    at: float,
    texts: tuple[str | None, str | None, str | None, str | None],
) -> None:
    email = normalize_email(f"{local}@example.com")
    event = HygieneEvent(key, "src", "esp", email, kind, at, *texts)
    if codec.problem(event) is None:
        assert codec.load(orjson.loads(orjson.dumps(codec.dump(event)))) == event
    else:
        with pytest.raises(codec.InvalidEvent):
            codec.load(codec.dump(event))


@pytest.mark.slow
def test_the_worker_applies_each_event_on_its_own(
    make_settings: SettingsFactory,
    use_runtime: Callable[..., runtime.Runtime],
    run_worker: Callable[..., int],
    redis_conn: redis.Redis,
) -> None:
    """An event the codec refuses and one Redis refuses are quarantined with their reasons; their
    siblings are applied, and the job itself succeeds. Once the cause is gone, a quarantine
    replay applies the one Redis refused (its failed script left no dedupe marker)."""
    rt = use_runtime(
        make_settings(sources={"pm": ("postmark", {"USERNAME": "u", "PASSWORD": "p"})})
    )

    def event(key: str, email: str, kind: Kind, at: float) -> HygieneEvent:
        return HygieneEvent(key, "pm", "postmark", email, kind, at)

    good = [event(f"good-{i}", f"good{i}@example.com", Kind.UNSUBSCRIBE, 10.0 + i)
            for i in range(3)]  # fmt: skip
    redis_conn.set(CONTACT + "wrongtype@example.com", "not a record")  # the script will fail
    refused_by_redis = event("bad-redis", "wrongtype@example.com", Kind.HARD_BOUNCE, 1.0)
    forms = [codec.dump(e) for e in (good[0], refused_by_redis, good[1], good[2])]
    forms.insert(2, {**codec.dump(good[0]), "key": "bad-codec", "email": "no address"})
    forms.insert(3, {"key": "x"})
    payload_ = {"source": "pm", "esp": "postmark", "events": forms, "quarantined": []}
    Queue(INGEST, connection=redis_conn, serializer=JSONSerializer).enqueue(
        "syncworker.jobs.ingest", payload_
    )
    run_worker((INGEST,))
    for e in good:
        assert [h["key"] for h in ledger_reads.history(redis_conn, e.email)] == [e.key]
        assert rt.ledger.state(e.email).suppressed
    assert ledger_reads.applied(redis_conn) == len(good)  # nothing of bad-codec or bad-redis
    assert len(FailedJobRegistry(INGEST, connection=redis_conn)) == 0
    records = [orjson.loads(r) for r in redis_conn.lrange(QUARANTINE, 0, -1)]
    reasons = sorted(r["reason"].split(":")[0] for r in records)
    assert reasons == ["invalid event", "invalid event", "not applied"]
    assert {r["event"].get("key") for r in records} == {"bad-codec", "x", "bad-redis"}

    redis_conn.delete(CONTACT + "wrongtype@example.com")  # the operator mends the cause
    report = replay(rt)
    assert (report.replayed, report.recovered, report.still_invalid) == (1, 1, 2)
    run_worker((INGEST,))
    assert rt.ledger.state("wrongtype@example.com").suppressed
    assert redis_conn.llen(QUARANTINE) == 2  # the two that are not events stay, with reasons


# -- every ESP: generated ids and addresses, through the app, the queue and a real worker --------

PUBLIC_URL = "https://hooks.example.com"
ADDRESS_IN_TEXT = re.compile(rb"[A-Za-z0-9._%+\-]+@example\.com")
ID_IN_TEXT = re.compile(rb'("(?:[A-Za-z_-]*[iI][dD])"\s*:\s*)"[^"\\]*"')
ESPS = sorted(ESP_PARSERS)

LOCALS = st.from_regex(r"[a-zA-Z0-9İıÉéßçæ._+-]{1,64}", fullmatch=True)
DOMAINS = st.sampled_from(["example.com", "exämple.de", "例子.广告", LONG_DOMAIN, "localhost",
                           "[192.0.2.7]", "sub.example.co.uk"])  # fmt: skip
IDS = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters='"\\'),
    min_size=1,
    max_size=320,
)


def _json_text(value: str) -> bytes:
    """``value`` as the inside of a JSON string, ASCII only (safe inside a nested JSON string)."""
    return orjson.dumps(value)[1:-1] if value.isascii() else _ascii(value)


def _ascii(value: str) -> bytes:
    out = []
    for ch in value:
        code = ord(ch)
        if code < 0x80:
            out.append(ch)
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            code -= 0x10000
            out.append(f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}")
    return "".join(out).encode()


@pytest.mark.slow
@pytest.mark.parametrize("esp", ESPS)
@given(data=st.data())
@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_what_any_source_accepts_is_applied_or_quarantined(
    esp: str,
    data: st.DataObject,
    make_settings: SettingsFactory,
    use_runtime: Callable[..., runtime.Runtime],
    run_worker: Callable[..., int],
    redis_conn: redis.Redis,
) -> None:
    signer = signer_for(esp)
    settings_ = make_settings(sources={esp: (esp, signer.values)}, public_url=PUBLIC_URL)
    use_runtime(settings_)
    client = create_app(settings_).test_client()
    body = payload(esp, signer.sample[0])
    bare = st.builds("{}@{}".format, LOCALS, DOMAINS)
    address = data.draw(st.one_of(bare, bare.map("Jane Q. Doe <{}>".format)), label="address")
    vendor_id = data.draw(IDS, label="id")
    # a function as the replacement: its text is used as it is, escapes included
    body = ADDRESS_IN_TEXT.sub(lambda _: _json_text(address), body)
    body = ID_IN_TEXT.sub(lambda m: m.group(1) + b'"' + _ascii(vendor_id) + b'"', body)
    signed = signer.sign(body)
    redis_conn.delete(QUARANTINE)
    headers = headers_of(signed)
    answer = client.post(f"/webhooks/{esp}", data=signed.body, headers=headers)
    assert answer.status_code < 500, answer.text
    answered: Any = answer.json or {}
    if answer.status_code != 200 or "accepted" not in answered:
        return
    expected = answered["accepted"]
    run_worker((INGEST,))
    assert len(FailedJobRegistry(INGEST, connection=redis_conn)) == 0
    # every accepted event was applied (its dedupe marker) or quarantined by the worker
    parsed = ESP_PARSERS[esp](settings_.sources[esp]).parse_request(signed)
    records = [orjson.loads(r) for r in redis_conn.lrange(QUARANTINE, 0, -1)]
    refused = {r["event"]["key"] for r in records if "event" in r}
    admitted = [e for e in parsed.events if codec.problem(e) is None]
    assert len(admitted) == expected
    for event in admitted:
        keys = {h["key"] for h in ledger_reads.history(redis_conn, event.email)}
        assert event.key in keys or event.key in refused, event.key
        assert "<" not in event.email  # a display name is dropped, the bare address kept
    assert not refused, "the worker refused what the web accepted"


@pytest.mark.parametrize(
    ("esp", "prefix", "body"),
    [
        (
            "standard_webhooks",
            "webhook-",
            orjson.dumps(
                {
                    "events": [
                        {"id": "é" * 200, "kind": "hard_bounce", "email": "one@example.com",
                         "occurred_at": "2026-03-01T10:00:00Z"},
                        {"kind": "unsubscribe", "email": "İnci@example.com",
                         "occurred_at": "2026-03-01T10:00:01Z"},
                    ]
                }
            ),
        ),
        ("resend", "svix-", payload("resend", "complained")),
    ],
)  # fmt: skip
def test_ids_the_verifier_accepts_make_keys_the_worker_takes(
    esp: str,
    prefix: str,
    body: bytes,
    make_settings: SettingsFactory,
    use_runtime: Callable[..., runtime.Runtime],
    run_worker: Callable[..., int],
    redis_conn: redis.Redis,
) -> None:
    """A 256-character message id and a 200-character event id (each allowed by its scheme)
    once made keys the worker refused, and the whole request was lost after its 200."""
    from tests.intake.signers.standard_webhooks import signed_headers

    signer = signer_for(esp)
    settings_ = make_settings(sources={esp: (esp, signer.values)})
    use_runtime(settings_)
    secret = (
        signer.values["SECRET"] if esp == "standard_webhooks" else signer.values["SIGNING_SECRET"]
    )
    headers = signed_headers(body, secret, prefix=prefix, msg_id="m" * 256)
    answer = (
        create_app(settings_).test_client().post(f"/webhooks/{esp}", data=body, headers=headers)
    )
    assert answer.status_code == 200 and answer.json is not None
    assert answer.json["accepted"] >= 1 and answer.json["quarantined"] == 0
    run_worker((INGEST,))
    assert len(FailedJobRegistry(INGEST, connection=redis_conn)) == 0
    assert redis_conn.llen(QUARANTINE) == 0
    keys = []
    for raw in redis_conn.scan_iter(CONTACT + "*"):
        keys += [h["key"] for h in ledger_reads.history(redis_conn, raw.decode()[len(CONTACT) :])]
    assert len(keys) == answer.json["accepted"]
    assert all(len(k) <= MAX_KEY for k in keys)
