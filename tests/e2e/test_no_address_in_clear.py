"""No address in clear, end to end: canary addresses in every form, posted as signed webhooks of
three ESPs through gunicorn, ingested and delivered by a real `syncworker worker` to a HubSpot
that fails (5xx, 4xx, 401) by echoing addresses in its error bodies, must not show in any log line
of the web or the worker, in any envelope Sentry receives, or in any RQ job description.

Every canary's local part holds ``qzv9`` right after ``k`` (``kqzv9.…``, ``"kqzv9 …"``,
``用kqzv9``): a mask keeps one character at most, so ``qzv9`` must not be found anywhere, in any
encoding (it is ASCII: JSON and URL encodings keep it as it is).
"""

from __future__ import annotations

import gzip
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import requests
from marshmallow import ValidationError, validate

from syncworker.devkit.emulators.base import Emulator, Request, Response
from syncworker.devkit.emulators.hubspot import HubSpotEmulator
from syncworker.store.keys import DEAD, INFLIGHT, PENDING
from tests import replies
from tests.intake.signing import EspSigner, headers_of, payload, signer_for
from tests.processes import Process, clean_env, start_gunicorn, start_worker, wait_until

pytestmark = pytest.mark.slow  # the whole pipeline in real processes

MARK = "qzv9"
# every form the intake may accept (the ESP schemas' rule today is marshmallow's Email; some of
# these it rejects, and they are then quarantined: they must not leak either)
FORMS = [  # the hardest first: a log line shows the first 200 characters of a detail
    "kqzv9.jösé@bücher.de",
    "kqzv9.v4@[192.0.2.77]",
    '"kqzv9 quoted"@example.com',
    "用kqzv9@例子.广告",
    "kqzv9.v6@[IPv6:2001:db8::77]",
    "kqzv9.num@192.0.2.79",
    '"kqzv9\\ escaped"@example.com',
    "kqzv9.idn@xn--bcher-kva.de",
    "kqzv9.digits@example.c0m",
    "kqzv9.dotless@localhost",
    "kqzv9.o'brien+tag@example.com",
    "kqzv9.plain@example.com",
]
# what an IP-literal or numeric domain must not show either, raw or URL-encoded
HOSTS = ("192.0.2.77", "2001:db8::77", "2001%3Adb8", "192.0.2.79")


def _accepted(address: str) -> bool:
    try:
        validate.Email()(address)
    except ValidationError:
        return False
    return True


def echo_text(lead: str, cut_at: int) -> str:
    """A careless API's error: ``lead``, then an address where a body is cut (``cut_at``
    characters in), then every form raw, URL-encoded and with a display name."""
    text = f"{lead}; "
    text += "x" * max(0, cut_at - 10 - len(text)) + " kqzv9.at.the.cut@example.com; "
    forms = [*FORMS, *(urllib.parse.quote(f, safe="") for f in FORMS)]
    return text + "; ".join(forms + [f'"Kqzv9 Name" <{f}>' for f in FORMS[:2]])


class EchoingHubSpot(HubSpotEmulator):
    """HubSpot (or a gateway before it) answering an injected failure with a text body that
    echoes addresses: every form raw, or (401) the request it got, JSON-escaped, first."""

    def error(self, status: int, request: Request) -> Response:
        if status == 401:
            quoted = " ".join(urllib.parse.quote(f, safe="") for f in FORMS)
            lead = f"{request.body.decode()} {quoted}"
        else:
            lead = "; ".join(FORMS)
        body = echo_text(lead, 500).encode()
        return Response(status, body, {"Content-Type": "text/plain; charset=utf-8"})

    def handle(self, request: Request) -> Response:
        """A batch naming a refused address is refused whole, with the same echoing body."""
        inputs = request.json.get("inputs") if isinstance(request.json, dict) else None
        if isinstance(inputs, list) and any(str(i).lower() in self.refuse for i in inputs):
            return self.error(400, request)
        return super().handle(request)


class SentryRecorder(Emulator):
    """A Sentry ingest endpoint on loopback: keeps every envelope it is sent, decompressed."""

    def handle(self, request: Request) -> Response:
        return Response(200, {"id": "0" * 32})

    def envelopes(self) -> list[str]:
        out = []
        for r in self.requests:
            body = r.body
            if r.headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            out.append(body.decode("utf-8", "replace"))
        return out


def leaks(text: str) -> list[str]:
    return [s for s in (MARK, *HOSTS) if s in text]


def sendgrid_body(addresses: list[str], kind: str, first_id: int) -> bytes:
    events = [
        {
            "email": a,
            "timestamp": 1_790_000_000 + i,
            "event": kind,
            **({"type": "bounce", "status": "5.1.1"} if kind == "bounce" else {}),
            "reason": f"550 5.1.1 <{a}>: Recipient address rejected",
            "sg_event_id": f"canary-{first_id + i}",
            "sg_message_id": f"canary.{first_id + i}",
        }
        for i, a in enumerate(addresses)
    ]
    return orjson.dumps(events)


def mailgun_body(address: str, n: int) -> bytes:
    doc = orjson.loads(payload("mailgun", "failed_permanent"))
    data = doc["event-data"]
    data.update(id=f"canary-{n}", recipient=address, timestamp=1_790_000_000.5 + n)
    data["delivery-status"]["message"] = f"550 5.1.1 {address}: does not exist"
    data["envelope"]["targets"] = address
    data["message"]["headers"]["to"] = f'"Kqzv9 Name" <{address}>'
    return orjson.dumps(doc)


def postmark_body(address: str, n: int) -> bytes:
    doc = orjson.loads(payload("postmark", "bounce_hard"))
    doc.update(ID=1000 + n, Email=address, MessageID=f"canary-{n}")
    doc["Details"] = f"smtp;550 5.1.1 <{address}>: does not exist"
    return orjson.dumps(doc)


def post(http: requests.Session, url: str, signer: EspSigner, body: bytes) -> dict[str, Any]:
    signed = signer.sign(body)
    headers = headers_of(signed)
    answer = http.post(f"{url}/webhooks/{signer.esp}", data=signed.body, headers=headers)
    assert answer.status_code == 200, (signer.esp, answer.status_code, answer.text)
    result: dict[str, Any] = answer.json()
    return result


def job_descriptions(conn: redis.Redis) -> list[str]:
    keys = [k for k in conn.scan_iter("rq:job:*") if conn.type(k) == b"hash"]
    return [replies.text(conn.hget(k, "description") or b"") for k in keys]


def inbox_notes(conn: redis.Redis) -> list[str]:
    """The note each accepted request's inbox entry carries (logged like a job description)."""
    return [fields[b"d"].decode() for _, fields in replies.stream_entries(conn, "sw:inbox")]


@pytest.fixture()
def hubspot() -> Iterator[EchoingHubSpot]:
    with EchoingHubSpot(token="hs-token") as emulator:
        yield emulator


@pytest.fixture()
def sentry() -> Iterator[SentryRecorder]:
    with SentryRecorder() as recorder:
        yield recorder


@pytest.mark.parametrize("level", ["DEBUG", "INFO"])
def test_no_address_in_clear_in_logs_sentry_or_job_descriptions(
    level: str,
    redis_url: str,
    redis_conn: redis.Redis,
    tmp_path: Path,
    hubspot: EchoingHubSpot,
    sentry: SentryRecorder,
) -> None:
    accepted = [f for f in FORMS if _accepted(f)]
    assert "kqzv9.jösé@bücher.de" in accepted and "kqzv9.v4@[192.0.2.77]" in accepted
    signers = {esp: signer_for(esp) for esp in ("sendgrid", "mailgun", "postmark")}
    env = clean_env(
        {
            "REDIS_URL": redis_url,
            "LOG_LEVEL": level,
            "GUNICORN_CMD_ARGS": f"--log-level {level.lower()}",
            "SENTRY_DSN": f"http://public@{sentry.url.removeprefix('http://')}/1",
            "SYNCWORKER_SOURCES": ",".join(signers),
            "SYNCWORKER_DESTINATIONS": "hubspot",
            "SYNCWORKER_HUBSPOT_TOKEN": "hs-token",
            "SYNCWORKER_HUBSPOT_BASE_URL": hubspot.url,
            "SYNCWORKER_BACKOFF_BASE": "0.2",
            "SYNCWORKER_AUTH_PAUSE": "1",
            "SYNCWORKER_API_TOKEN": "api-token",
        }
    )
    for esp, signer in signers.items():
        env.update({f"SYNCWORKER_{esp.upper()}_{k}": v for k, v in signer.values.items()})
    hubspot.seed(*(f.lower() for f in accepted))
    web, url = start_gunicorn(env, tmp_path / "web.log")
    worker: Process | None = None
    try:
        # phase 1: the first delivery gets a 5xx, its retry a 400 (the batch is split until the
        # refused contact is alone: a dead letter), both echoing
        hubspot.fail_next(1, 503)
        hubspot.refuse = {next(f.lower() for f in accepted if f.isascii())}
        with requests.Session() as http:
            answers = [post(http, url, signers["sendgrid"], sendgrid_body(FORMS, "bounce", 0))]
            for n, address in enumerate(FORMS):
                answers.append(post(http, url, signers["mailgun"], mailgun_body(address, n)))
                answers.append(post(http, url, signers["postmark"], postmark_body(address, n)))
            # an operator looking an address up: it travels URL-encoded in the path
            for address in FORMS[:3]:
                path = urllib.parse.quote(address, safe="")
                auth = {"Authorization": "Bearer api-token"}
                assert http.get(f"{url}/v1/contacts/{path}", headers=auth).status_code in (200, 404)
        assert sum(a["accepted"] for a in answers) >= 3 * len(accepted)
        # the queued ingest job and the requests' inbox entries, before a worker takes them
        descriptions = job_descriptions(redis_conn) + inbox_notes(redis_conn)
        assert len(inbox_notes(redis_conn)) >= len(answers)
        worker = start_worker(env, tmp_path / "worker.log")
        wait_until(lambda: redis_conn.llen(DEAD + "hubspot") > 0, 60, "dead letters", 0.1)
        assert hubspot.injected == 1
        hubspot.refuse = set()
        # phase 2: new events meet a 401 (pause, alert to Sentry), then are delivered
        hubspot.fail_next(1, 401)
        with requests.Session() as http:
            post(http, url, signers["sendgrid"], sendgrid_body(accepted, "unsubscribe", 100))

        def settled() -> bool:
            return (
                hubspot.injected == 2
                and redis_conn.zcard(PENDING + "hubspot") == 0
                and redis_conn.zcard(INFLIGHT + "hubspot") == 0
                and any("rejected its credentials" in e for e in sentry.envelopes())
            )

        wait_until(settled, 60, "the 401, the Sentry alert and every delivery", 0.1)
        assert hubspot.opted_out >= {f.lower() for f in accepted if f.isascii()}
    finally:
        if worker is not None:
            worker.stop()
        web.stop()
    web_log = web.log_file.read_text(errors="replace")
    worker_log = worker.log_file.read_text(errors="replace") if worker is not None else ""
    # the paths that carry echoed bodies did run, and said so (masked)
    assert "outcome=failed" in worker_log and "reason=bad_credentials" in worker_log
    assert "k***@example.com" in worker_log
    if level == "DEBUG":
        assert " DEBUG " in web_log + worker_log
    descriptions += job_descriptions(redis_conn)
    envelopes = sentry.envelopes()
    assert envelopes
    for where, text in {
        "web log": web_log,
        "worker log": worker_log,
        "sentry": "\n".join(envelopes),
        "job descriptions": "\n".join(descriptions),
    }.items():
        found = leaks(text)
        assert not found, (where, found, [line for line in text.splitlines() if leaks(line)][:5])
