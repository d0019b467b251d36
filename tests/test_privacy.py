"""No address leaks: masking, and Sentry events captured with a local transport."""

from __future__ import annotations

import json
import logging
import re
import sys
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
import redis
import sentry_sdk
from flask import Flask
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from rq import Queue
from rq.serializers import JSONSerializer
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import Transport

from syncworker.delivery.loop import Delivery
from syncworker.devkit.emulators.base import Request, Response
from syncworker.devkit.emulators.hubspot import HubSpotEmulator
from syncworker.events import HygieneEvent, Kind
from syncworker.observability import LOG_FORMAT, MaskingFormatter, before_send, setup_sentry
from syncworker.privacy import mask, mask_text, scrub, scrub_body
from syncworker.queue.workers import QuickStopSimpleWorker
from syncworker.store.keys import DEAD, INGEST, PAUSE, PENDING
from syncworker.web.app import create_app
from tests.conftest import SettingsFactory

ADDRESS = re.compile(rb"[A-Za-z0-9._%+-]{2,}@example\.com")


class CapturingTransport(Transport):
    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self.envelopes: list[bytes] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        self.envelopes.append(envelope.serialize())


@pytest.fixture()
def sentry() -> Iterator[CapturingTransport]:
    transport = CapturingTransport()
    assert setup_sentry("http://public@127.0.0.1:9/1", transport=transport)
    yield transport
    sentry_sdk.get_client().close()
    sentry_sdk.init(dsn=None)


def test_mask_keeps_first_letter_and_domain() -> None:
    assert mask("jane.doe@example.com") == "j***@example.com"
    assert mask("nonsense") == "***"
    assert mask_text("550 <jane@example.com> unknown") == "550 <j***@example.com> unknown"
    assert scrub({"to": ["jane@example.com"], "n": 1}) == {"to": ["j***@example.com"], "n": 1}


def test_sentry_event_from_a_failing_request_has_no_address(
    make_settings: SettingsFactory, sentry: CapturingTransport
) -> None:
    app: Flask = create_app(make_settings())
    app.config["PROPAGATE_EXCEPTIONS"] = False

    @app.post("/boom")
    def boom() -> str:
        recipient = "jane.doe@example.com"  # a local variable Sentry must not ship
        raise RuntimeError(f"cannot handle {recipient}")

    secret = "-".join(("s3cr3t", "t0ken", "value"))  # not literal: Sentry ships source lines
    response = app.test_client().post(
        "/boom",
        json={"email": "jane.doe@example.com"},
        headers={"Authorization": f"Bearer {secret}", "X-Recipient": "jane.doe@example.com"},
    )
    assert response.status_code == 503  # ours, so the sender retries: never a 500
    assert response.get_json() == {
        "error": "unavailable",
        "detail": "an unexpected error; retry later",
    }
    sentry_sdk.flush()
    assert sentry.envelopes, "the error reached Sentry"
    blob = b"".join(sentry.envelopes)
    assert b"cannot handle j***@example.com" in blob
    assert not ADDRESS.findall(blob)
    assert b"s3cr3t-t0ken-value" not in blob


@pytest.mark.slow
def test_sentry_event_from_a_failing_job_has_no_address(
    redis_conn: redis.Redis, sentry: CapturingTransport, use_runtime: Any, make_settings: Any
) -> None:
    use_runtime(make_settings())
    queue = Queue(INGEST, connection=redis_conn, serializer=JSONSerializer)
    # an invalid event is quarantined, not a failure: a payload that is not one fails the job
    bad = ["jane.doe@example.com"]
    queue.enqueue_call("syncworker.jobs.ingest", args=(bad,), description="ingest test")
    logging.getLogger("test").error("while handling jane.doe@example.com")
    worker = QuickStopSimpleWorker([queue], connection=redis_conn, serializer=JSONSerializer)
    worker.work(burst=True, logging_level="CRITICAL")
    assert queue.failed_job_registry.count == 1
    sentry_sdk.flush()
    blob = b"".join(sentry.envelopes)
    assert b"AttributeError" in blob
    assert not ADDRESS.findall(blob)


# -- every form the intake accepts, in every encoding it can reach a log in ---------------------

# domains the intake accepts: IDN (unicode and punycode), TLDs with digits, dotless, IP literals
DOMAINS = [
    "example.com",
    "bücher.de",
    "xn--bcher-kva.de",
    "例子.广告",
    "example.c0m",
    "host.xn--p1ai",
    "localhost",
    "[192.0.2.1]",
    "[IPv6:2001:db8::1]",
    "192.0.2.10",
]
IP_PARTS = ("192.0.2.1", "2001:db8::1", "192.0.2.10")
labels = st.text(
    st.characters(categories=("Ll", "Lo", "Nd")) | st.just("-"), min_size=1, max_size=10
).filter(lambda s: s[0] != "-" and s[-1] != "-")
# generated IDN domains, their TLD with digits or not; dotless ones too
domains = st.lists(labels, min_size=1, max_size=3).map(".".join)
ATEXT = "!#$%&'*+/=?^_`{|}~-"
atoms = st.text(
    st.characters(categories=("L", "N"), exclude_characters="\x00") | st.sampled_from(ATEXT),
    min_size=1,
    max_size=12,
)
# a local part that looks masked already (``x=j***``) is left as it is, so that masking twice
# changes nothing (privacy._MASKED): the one form not generated
dot_atom = st.lists(atoms, min_size=1, max_size=3).map(".".join).filter(lambda a: "**" not in a)
# a quoted local part holds any printable character, specials and spaces too; " and \ escaped
quoted_content = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E) | st.characters(categories=["L"]),
    min_size=1,
    max_size=16,
)


def quote_local(content: str) -> str:
    return '"' + content.replace("\\", "\\\\").replace('"', '\\"') + '"'


def encodings(text: str) -> dict[str, str]:
    """``text`` as it can appear in a log line, a response body or an exception message."""
    return {
        "raw": text,
        "json": json.dumps(text)[1:-1],
        "json-unicode": json.dumps(text, ensure_ascii=False)[1:-1],
        "json-in-json": json.dumps(json.dumps(text))[1:-1],
        "url": urllib.parse.quote(text, safe=""),
        "url-plus": urllib.parse.quote_plus(text),
        "url-twice": urllib.parse.quote(urllib.parse.quote(text, safe=""), safe=""),
        "python-ascii": ascii(text)[1:-1],
        "python-bytes": repr(text.encode())[2:-1],
    }


def secrets_of(local_text: str) -> list[str]:
    """What must not survive: the local part beyond its first character, and each half of that."""
    rest = local_text[1:]
    parts = [rest] if len(rest) >= 2 else []
    if len(rest) >= 6:
        parts += [rest[: len(rest) // 2], rest[len(rest) // 2 :]]
    return parts


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(
    local=st.one_of(
        dot_atom.map(lambda a: (a, a)),
        quoted_content.map(lambda c: (quote_local(c), c)),
    ),
    domain=st.sampled_from(DOMAINS) | domains,
    name=st.none() | st.text(st.characters(categories=["L"]), min_size=3, max_size=10),
)
def test_mask_text_leaves_no_local_part_in_any_form_or_encoding(
    local: tuple[str, str], domain: str, name: str | None
) -> None:
    written, content = local
    address = f"{written}@{domain}"
    text = address if name is None else f'"{name}" <{address}>'
    hidden = secrets_of(content) + secrets_of(name or "")
    hidden += [ip for ip in IP_PARTS if ip in domain]
    # what the mask keeps, in every encoding: a secret found in it proves nothing
    shown_kept = f' "<@{domain}> {content[:1]}*** {(name or " ")[:1]}***'
    kept = "550 5.1.1 rejected (user unknown) " + " ".join(encodings(shown_kept).values())
    for encoding, encoded in encodings(text).items():
        line = f"550 5.1.1 rejected {encoded} (user unknown)"
        masked = mask_text(line)
        for secret in hidden:
            for shown in set(encodings(secret).values()):
                assume(shown not in kept)
                assert shown not in masked, (encoding, line, masked)
        assert mask_text(masked) == masked, "masking twice changes nothing"


@settings(max_examples=100, deadline=None)
@given(
    value=st.recursive(
        st.sampled_from(["550 <ext_jdoe77@bücher.de>", '"quoted doe"@example.com', "n/a", 3]),
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.tuples(inner, inner)
            | st.dictionaries(
                st.sampled_from(["to", "ext_jdoe77@example.com", "ext_jdoe77%40example.com"]),
                inner,
                max_size=3,
            )
        ),
        max_leaves=8,
    )
)
def test_scrub_masks_nested_values_and_keys(value: Any) -> None:
    blob = json.dumps(scrub(value), ensure_ascii=False)
    for secret in ("xt_jdoe77", "uoted doe"):
        assert secret not in blob


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("jösé.núñez@bücher.de", "j***@bücher.de"),
        ("用户@例子.广告", "用***@例子.广告"),
        ("user@xn--bcher-kva.de", "u***@xn--bcher-kva.de"),
        ("user@host.xn--p1ai", "u***@host.xn--p1ai"),
        ("user@example.c0m", "u***@example.c0m"),
        ("user@localhost", "u***@localhost"),
        ("user@[192.0.2.1]", "u***@[***]"),
        ("user@[IPv6:2001:db8::1]", "u***@[***]"),
        ("user@192.0.2.10", "u***@***"),
        ('"john doe"@example.com', '"j***"@example.com'),
        ('"a@b"@example.com', '"a***"@example.com'),
        ('\\"john doe\\"@example.com', '\\"j***\\"@example.com'),
        ("j\\u00f6rg@example.com", "j***@example.com"),
        ("\\u00e9lise@example.com", "\\u00e9***@example.com"),
        ("jane.doe%40example.com", "j***%40example.com"),
        ("%C3%A9lise%40b%C3%BCcher.de", "%C3%A9***%40b%C3%BCcher.de"),
        ("user%40%5B192.0.2.1%5D", "u***%40%5B***%5D"),
        ('"Jane Doe" <jane@example.com>', '"***" <j***@example.com>'),
        ("jane(comment)@example.com", "j***@example.com"),
        ("a@b.com/c@d.com", "a***@b.com/***@d.com"),
        ("mailto:jane@example.com, bob@example.org.", "mailto:j***@example.com, b***@example.org."),
        ("j***@example.com", "j***@example.com"),
        ("addr=j***@example.com to=<j***@[***]>", "addr=j***@example.com to=<j***@[***]>"),
        ("bounces+jane=example.com@mail.example.org", "b***@mail.example.org"),
        ("see @here or user@ or 10 @ 3", "see @here or user@ or 10 @ 3"),
    ],
)
def test_mask_text_examples(text: str, masked: str) -> None:
    assert mask_text(f"x {text} y") == f"x {masked} y"


def test_mask_of_single_addresses() -> None:
    assert mask('"john doe"@example.com') == '"j***"@example.com'
    assert mask("user@[192.0.2.1]") == "u***@[***]"
    assert mask("éric@bücher.de") == "é***@bücher.de"
    assert mask("@example.com") == "***"


def test_scrub_body_masks_before_it_cuts() -> None:
    """An address at the cut is masked whole, never cut into a part the masking would miss."""
    body = "x" * 490 + " jane.doe@example.com and more"
    assert "ane.d" not in scrub_body(body)
    assert scrub_body(body).endswith(" j***@exam")
    # a long body is masked over a bounded prefix; its partial last word is dropped
    listing = " ".join(f"user{i:04d}.doe@example.com" for i in range(2000))
    out = scrub_body(listing, 1000)
    assert len(out) <= 1000 and "ser0" not in out


CANARY = "jösé.canary@bücher.de"


@dataclass
class Holder:
    """An object Sentry would ship as its repr (a log record's argument, an ``extra`` value)."""

    email: str


def test_before_send_masks_every_part_of_an_event() -> None:
    encoded = urllib.parse.quote(CANARY, safe="")
    event: dict[str, Any] = {
        "message": f"failed for {CANARY}",
        "logentry": {"message": "sync addr=%s", "params": (CANARY, Holder(CANARY))},
        "transaction": f"/v1/contacts/{encoded}",
        "exception": {"values": [{"type": "KeyError", "value": repr(CANARY)}]},
        "breadcrumbs": {"values": [{"message": f"HGETALL sw:c:{CANARY}", "data": {CANARY: 1}}]},
        "extra": {"rq-job": {"args": [{"events": [{"email": CANARY}]}]}, "obj": Holder(CANARY)},
        "contexts": {"trace": {"description": json.dumps({"to": CANARY})}},
        "tags": {"recipient": CANARY},
        "request": {"url": f"http://127.0.0.1/v1/contacts/{encoded}", "data": CANARY},
        "spans": [{"description": f"GET http://crm/contacts?email={encoded}"}],
    }
    blob = json.dumps(before_send(event, {}), ensure_ascii=False)
    assert "j***@bücher.de" in blob and "j***%40b%C3%BCcher.de" in blob
    for shown in encodings("ösé.canary").values():
        assert shown not in blob


def test_log_lines_are_masked_tracebacks_included() -> None:
    """A library's log line (RQ logs a failed job's exception and traceback) is masked too."""
    record = logging.LogRecord(
        "rq.worker", logging.ERROR, __file__, 1, "job %s failed", ("1",), None
    )
    try:
        raise KeyError(CANARY)
    except KeyError:
        record.exc_info = sys.exc_info()
    line = MaskingFormatter(LOG_FORMAT).format(record)
    assert "KeyError: '***@bücher.de'" in line and "canary" not in line


# -- destination answers that echo addresses --------------------------------------------------

# every local part starts with "c" then "nry": a masked one keeps only the "c", so "nry" must not
# be found anywhere, in any encoding
ECHOED = [
    "cnry.plain@example.com",
    "cnry.jösé@bücher.de",
    "cnry.idn@xn--bcher-kva.de",
    "cnry.digits@example.c0m",
    "cnry.dotless@localhost",
    "cnry.v4@[192.0.2.77]",
    "cnry.v6@[IPv6:2001:db8::77]",
    '"cnry quoted"@example.com',
    '"Cnry Name" <cnry.named@example.com>',
    "用cnry@例子.广告",
]
HOST_PARTS = ("192.0.2.77", "2001:db8::77", "2001%3Adb8")


def echo_text(sent: bytes, cut_at: int) -> str:
    """What a careless API answers: an address placed where a body or detail is cut (``cut_at``
    characters in), the canaries raw and URL-encoded, and the request it got."""
    forms = ECHOED + [urllib.parse.quote(a, safe="") for a in ECHOED]
    pad = "x" * (cut_at - 10)
    return f"{pad} cnry.at.the.cut@example.com; {', '.join(forms)}; got {sent.decode()}"


def leaks(text: str) -> list[str]:
    return [s for s in ("nry", *HOST_PARTS) if s in text]


class EchoingHubSpot(HubSpotEmulator):
    """HubSpot echoing addresses in its errors: an injected 5xx as text, an injected 4xx as JSON,
    and (``refuse_inputs``) a 207 refusing each input of a batch opt-out with such a message."""

    refuse_inputs = False

    def error(self, status: int, request: Request) -> Response:
        if status >= 500:  # HttpClient keeps the first 500 characters of a body
            text = echo_text(request.body, 500)
            return Response(status, text.encode(), {"Content-Type": "text/plain"})
        envelope = {"status": "error", "category": "VALIDATION_ERROR", "message": ""}
        opening = len(json.dumps(envelope)) - 2
        return Response(status, {**envelope, "message": echo_text(request.body, 500 - opening)})

    def handle(self, request: Request) -> Response:
        if not (self.refuse_inputs and request.path.endswith("/batch/unsubscribe-all")):
            return super().handle(request)
        ids = [str(i) for i in request.json["inputs"]]
        # mappings/hubspot.py keeps 300 characters of "<category>: <message>"
        message = echo_text(request.body, 300 - len("VALIDATION_ERROR: "))
        error = {"status": "error", "category": "VALIDATION_ERROR", "message": message}
        body = {"status": "COMPLETE", "results": [], "errors": [{**error, "context": {"ids": ids}}]}
        return Response(207, body)


def test_echoed_addresses_are_masked_in_logs_sync_status_dead_letters_and_sentry(
    make_settings: SettingsFactory,
    use_runtime: Any,
    redis_conn: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    sentry: CapturingTransport,
) -> None:
    contacts = ["cnry.one@example.com", "cnry.jösé@bücher.de", "cnry.v4@[192.0.2.77]"]
    with EchoingHubSpot(token="hs") as hubspot:
        hubspot.seed(*contacts)
        rt = use_runtime(
            make_settings(
                destinations={
                    "hubspot": {"TOKEN": "hs", "BASE_URL": hubspot.url, "RATE": "1000/1"}
                },
                max_attempts=5,
                auth_pause_s=0.001,
            )
        )
        rt.ledger.apply(
            HygieneEvent(f"k-{e}", "test", "test", e, Kind.UNSUBSCRIBE, 1000.0) for e in contacts
        )
        caplog.set_level(logging.DEBUG)
        statuses: list[dict[str, Any]] = []
        for status in (503, 207, 400, 401):
            redis_conn.zadd(PENDING + "hubspot", dict.fromkeys(contacts, 0))
            redis_conn.delete(PAUSE + "hubspot")
            hubspot.refuse_inputs = status == 207
            if status != 207:
                # a 400 for the batch is split down to single contacts: 3, 2, 1, 1, 1
                hubspot.fail_next(5 if status == 400 else 1, status)
            Delivery(rt, "hubspot").run()
            statuses += [rt.ledger.view(e).sync["hubspot"] for e in contacts]
        assert hubspot.injected == 7
    assert [s["status"] for s in statuses[:9]] == ["retrying"] * 3 + ["dead"] * 6
    assert all(" c***@exa" in s["detail"] for s in statuses[3:9])  # the address at the cut
    dead = [orjson.loads(raw)["error"] for raw in redis_conn.lrange(DEAD + "hubspot", 0, -1)]
    assert len(dead) == 2 * len(contacts) and all("VALIDATION_ERROR" in d for d in dead)
    assert "HTTP 503" in caplog.text and "HTTP 400" in caplog.text and "status=401" in caplog.text
    sentry_sdk.flush()
    assert sentry.envelopes, "the bad credentials alert reached Sentry"
    blob = b"".join(sentry.envelopes).decode()
    for where, text in {
        "log": caplog.text,
        "sync status": json.dumps(statuses, ensure_ascii=False),
        "dead letters": json.dumps(dead, ensure_ascii=False),
        "sentry": blob,
    }.items():
        assert not leaks(text), (where, leaks(text), text[:2000])
