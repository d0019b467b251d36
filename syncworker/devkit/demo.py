"""``syncworker demo``: the whole pipeline on loopback, in one command.

An embedded Redis server (temporary data), the HubSpot, Segment and webhook-receiver emulators,
then the real web (gunicorn) and worker processes, configured through the environment as in
production: a Postmark source (HTTP Basic) and a Standard Webhooks source (syncworker's own JSON
shape), and the hubspot, segment and webhook destinations pointed at the emulators. It posts a
few sample events, waits until every emulator has what they imply, and prints the ledger's view
of each address, what each emulator received, and how to try it by hand.

The demo's children get a clean environment: no ``SYNCWORKER_*``, ``REDIS_URL`` or ``SENTRY_DSN``
from the shell, so a production configuration can never receive the demo's traffic.
"""

from __future__ import annotations

import base64
import os
import secrets
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

import click
import orjson
import requests

from syncworker.bootstrap import load_settings
from syncworker.devkit.emulators.hubspot import HubSpotEmulator
from syncworker.devkit.emulators.segment import SegmentEmulator
from syncworker.devkit.emulators.webhook_receiver import WebhookReceiver, new_secret
from syncworker.devkit.redis_server import RedisServer
from syncworker.devkit.supervisor import ChildExited, Supervisor
from syncworker.errors import ConfigError
from syncworker.intake.auth.standard_webhooks import decode_secret, signature

HARD = "hard-bounce@example.com"
COMPLAINT = "complaint@example.com"
UNSUBSCRIBE = "unsubscribe@example.com"
SOFT = "soft-bounce@example.com"
DELIVERED = "delivered@example.com"
TRY = "you@example.com"  # the address of the curl examples
ADDRESSES = (HARD, COMPLAINT, UNSUBSCRIBE, SOFT, DELIVERED)
SUPPRESSED = (HARD, COMPLAINT, UNSUBSCRIBE)
HYGIENE_EVENTS = 4  # the delivered event is only counted
# environment the demo never passes on: it could point the demo at production
NOT_INHERITED = ("REDIS_URL", "SENTRY_DSN")
STOP_TIMEOUT = 20.0
# the children have process groups of their own: the demo stops them on any of these
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class DemoError(click.ClickException):
    pass


def run_demo(port: int, *, exit_after: bool, timeout: float = 60.0) -> None:
    """Start everything, post the samples, print the summary; then wait for Ctrl-C (or SIGTERM)
    unless ``exit_after``. Every process and the Redis server are stopped on the way out."""
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    for sig, handler in previous.items():
        if handler is not signal.SIG_IGN:  # e.g. SIGINT of a job started with & in a script
            signal.signal(sig, _interrupt)
    try:
        with tempfile.TemporaryDirectory(prefix="syncworker-demo-") as tmp, ExitStack() as stack:
            _run(stack, Path(tmp), port, exit_after, timeout)
    except KeyboardInterrupt:
        click.echo("\nstopped")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """The first Ctrl-C, SIGTERM or SIGHUP stops the demo; later ones cannot cut the cleanup
    short (it is bounded: STOP_TIMEOUT per process, then SIGKILL)."""
    for sig in STOP_SIGNALS:
        if signal.getsignal(sig) is _interrupt:
            signal.signal(sig, signal.SIG_IGN)
    raise KeyboardInterrupt


def _run(stack: ExitStack, tmp: Path, port: int, exit_after: bool, timeout: float) -> None:
    redis_server = RedisServer(data_dir=str(tmp / "redis")).start()
    stack.callback(redis_server.stop)
    hubspot = stack.enter_context(HubSpotEmulator(token="demo-hubspot-token"))
    segment = stack.enter_context(SegmentEmulator(write_key="demo-segment-write-key"))
    receiver_secret = new_secret()
    receiver = stack.enter_context(WebhookReceiver(receiver_secret))
    hubspot.seed(*ADDRESSES, TRY)  # HubSpot never gets a contact it does not have

    postmark_password = secrets.token_urlsafe(12)
    source_secret = new_secret()
    api_token = secrets.token_urlsafe(16)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCWORKER_")}
    for name in NOT_INHERITED:
        env.pop(name, None)
    env.setdefault("WEB_CONCURRENCY", "1")
    env.update(
        {
            "REDIS_URL": redis_server.url,
            "SYNCWORKER_BIND": f"127.0.0.1:{port}",
            "SYNCWORKER_API_TOKEN": api_token,
            "SYNCWORKER_SOURCES": "postmark,standard_webhooks",
            "SYNCWORKER_POSTMARK_USERNAME": "postmark",
            "SYNCWORKER_POSTMARK_PASSWORD": postmark_password,
            "SYNCWORKER_STANDARD_WEBHOOKS_SECRET": source_secret,
            "SYNCWORKER_DESTINATIONS": "hubspot,segment,webhook",
            "SYNCWORKER_HUBSPOT_TOKEN": hubspot.token,
            "SYNCWORKER_HUBSPOT_BASE_URL": hubspot.url,
            "SYNCWORKER_SEGMENT_WRITE_KEY": segment.write_key,
            "SYNCWORKER_SEGMENT_BASE_URL": segment.url,
            "SYNCWORKER_WEBHOOK_URL": receiver.endpoint,
            "SYNCWORKER_WEBHOOK_SECRET": receiver_secret,
        }
    )
    try:
        load_settings(env)
    except ConfigError as exc:  # a bug in the demo, not the user's configuration
        raise DemoError(f"demo configuration rejected: {exc}") from None

    click.echo(f"embedded Redis on {redis_server.url} (temporary data)")
    click.echo(f"emulators: HubSpot {hubspot.url}, Segment {segment.url}, webhook {receiver.url}")
    me = [sys.executable, "-m", "syncworker"]
    children = stack.enter_context(Supervisor(grace=STOP_TIMEOUT))
    children.start("web", [*me, "web"], env=env, log=tmp / "web.log")
    children.start("worker", [*me, "worker"], env=env, log=tmp / "worker.log")
    url = f"http://127.0.0.1:{port}"
    session = stack.enter_context(requests.Session())
    session.headers["Authorization"] = f"Bearer {api_token}"
    _wait_ready(session, url, children)
    click.echo(f"web on {url}; logs in {tmp}")

    started = time.monotonic()
    _post_samples(session, url, postmark_password, source_secret)
    _wait_delivered(session, url, children, hubspot, segment, receiver, timeout)
    took = time.monotonic() - started
    _summary(session, url, hubspot, segment, receiver, took)
    _try_it(url, postmark_password, api_token)
    if exit_after:
        return
    click.echo("\nrunning; Ctrl-C stops everything")
    while True:
        _check_alive(children)
        time.sleep(0.5)


def _check_alive(children: Supervisor) -> None:
    try:
        children.check()
    except ChildExited as exc:
        raise DemoError(str(exc)) from None


def _wait_ready(session: requests.Session, url: str, children: Supervisor) -> None:
    deadline = time.monotonic() + 30
    while True:
        _check_alive(children)
        try:
            if session.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise DemoError(
                f"web did not answer {url}/readyz in 30 s:\n{children.children['web'].tail()}"
            )
        time.sleep(0.1)


def _iso(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def postmark_samples(now: datetime) -> list[dict[str, Any]]:
    """A hard bounce, a spam complaint and a delivery, as Postmark posts them."""
    return [
        {
            "RecordType": "Bounce",
            "ID": 4323372036854775801,
            "Type": "HardBounce",
            "TypeCode": 1,
            "MessageID": str(uuid.uuid4()),
            "Email": HARD,
            "BouncedAt": _iso(now - timedelta(seconds=40)),
            "Description": "The server was unable to deliver your message (ex: unknown user).",
            "Details": "smtp;550 5.1.1 The email account that you tried to reach does not exist",
        },
        {
            "RecordType": "SpamComplaint",
            "ID": 4323372036854775802,
            "Type": "SpamComplaint",
            "TypeCode": 512,
            "MessageID": str(uuid.uuid4()),
            "Email": COMPLAINT,
            "BouncedAt": _iso(now - timedelta(seconds=30)),
            "Description": "The subscriber explicitly marked this message as spam.",
        },
        {
            "RecordType": "Delivery",
            "MessageID": str(uuid.uuid4()),
            "Recipient": DELIVERED,
            "DeliveredAt": _iso(now - timedelta(seconds=20)),
            "Details": "smtp;250 2.0.0 OK",
        },
    ]


def standard_webhooks_samples(now: datetime) -> dict[str, Any]:
    """An unsubscribe and a soft bounce, in syncworker's own Standard Webhooks shape."""
    return {
        "events": [
            {
                "id": "demo-unsubscribe-1",
                "email": UNSUBSCRIBE,
                "kind": "unsubscribe",
                "occurred_at": _iso(now - timedelta(seconds=15)),
                "reason": "one-click List-Unsubscribe",
            },
            {
                "id": "demo-soft-bounce-1",
                "email": SOFT,
                "kind": "soft_bounce",
                "occurred_at": _iso(now - timedelta(seconds=10)),
                "reason": "452 4.2.2 mailbox full",
                "smtp_code": "452",
            },
        ]
    }


def signed_headers(secret: str, body: bytes, msg_id: str | None = None) -> dict[str, str]:
    """Standard Webhooks headers for ``body``, signed with the package's own signature code."""
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    timestamp = str(int(time.time()))
    sig = signature(decode_secret(secret), msg_id, timestamp, body)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": timestamp,
        "webhook-signature": "v1," + base64.b64encode(sig).decode(),
        "content-type": "application/json",
    }


def _post_samples(session: requests.Session, url: str, password: str, secret: str) -> None:
    now = datetime.now(UTC)
    answers: list[requests.Response] = []
    for event in postmark_samples(now):
        answers.append(
            session.post(
                f"{url}/webhooks/postmark",
                json=event,
                auth=("postmark", password),
                timeout=10,
            )
        )
    body = orjson.dumps(standard_webhooks_samples(now))
    answers.append(
        session.post(
            f"{url}/webhooks/standard_webhooks",
            data=body,
            headers=signed_headers(secret, body),
            timeout=10,
        )
    )
    for answer in answers:
        if answer.status_code != 200:
            raise DemoError(f"{answer.request.url}: {answer.status_code} {answer.text}")
    accepted = sum(a.json().get("accepted", 0) for a in answers)
    counted = sum(_count(a.json().get("ignored")) for a in answers)
    click.echo(
        f"posted 3 Postmark events and 1 Standard Webhooks batch: {accepted} hygiene events "
        f"accepted, {counted} only counted"
    )


def _count(value: Any) -> int:
    if isinstance(value, dict):
        return sum(int(v) for v in value.values())
    return int(value or 0)


def _wait_delivered(
    session: requests.Session,
    url: str,
    children: Supervisor,
    hubspot: HubSpotEmulator,
    segment: SegmentEmulator,
    receiver: WebhookReceiver,
    timeout: float,
) -> None:
    """Until HubSpot has every opt-out, Segment and the receiver every event, and no destination
    has anything pending or in flight; a progress line meanwhile."""
    deadline = time.monotonic() + timeout
    tty = sys.stdout.isatty()
    last = ""
    while True:
        _check_alive(children)
        opted = len(hubspot.opted_out & set(SUPPRESSED))
        tracks = len(segment.tracks)
        events = len({e.get("key") for e in receiver.events})
        busy = _busy(session, url)
        line = (
            f"waiting: HubSpot {opted}/{len(SUPPRESSED)} opted out, "
            f"Segment {tracks}/{HYGIENE_EVENTS} events, webhook {events}/{HYGIENE_EVENTS} events"
            + (f", {busy} contact(s) pending" if busy else "")
        )
        done = (
            opted == len(SUPPRESSED)
            and tracks >= HYGIENE_EVENTS
            and events >= HYGIENE_EVENTS
            and busy == 0
        )
        if line != last or done:
            click.echo(("\r" + line.ljust(len(last))) if tty else line, nl=not tty)
            last = line
        if done:
            if tty:
                click.echo()
            return
        if time.monotonic() > deadline:
            if tty:
                click.echo()
            raise DemoError(
                f"destinations did not catch up in {timeout:.0f} s; worker log:\n"
                + children.children["worker"].tail()
            )
        time.sleep(0.2)


def _busy(session: requests.Session, url: str) -> int:
    """Contacts pending or in flight over every destination (-1: stats unavailable)."""
    try:
        stats = session.get(f"{url}/v1/stats", timeout=5).json()
        return sum(d["pending"] + d["in_flight"] for d in stats["destinations"].values())
    except (requests.RequestException, ValueError, KeyError, TypeError):
        return -1


def _summary(
    session: requests.Session,
    url: str,
    hubspot: HubSpotEmulator,
    segment: SegmentEmulator,
    receiver: WebhookReceiver,
    took: float,
) -> None:
    echo: Callable[[str], None] = click.echo
    echo(f"\nevery destination caught up in {took:.1f} s\n")
    width = max(len(a) for a in ADDRESSES)
    echo("Ledger (GET /v1/contacts/<email>):")
    for email in ADDRESSES:
        answer = session.get(f"{url}/v1/contacts/{email}", timeout=5)
        if answer.status_code == 404:
            echo(f"  {email.ljust(width)}  not in the ledger (delivered events are only counted)")
            continue
        view = answer.json()
        state = "suppressed" if view["suppressed"] else "active"
        reasons = ", ".join(f"{name} (from {r['source']})" for name, r in view["reasons"].items())
        if not reasons:
            kinds = ", ".join(str(h.get("kind")) for h in view["history"]) or "-"
            reasons = f"history: {kinds} (3 soft bounces in 30 days suppress)"
        sync = ", ".join(
            f"{dest} {status.get('status', '?')}"
            for dest, status in sorted(view["destinations"].items())
        )
        echo(f"  {email.ljust(width)}  {state:<10}  {reasons}")
        if sync:
            echo(f"  {''.ljust(width)}  synced: {sync}")

    counters = session.get(f"{url}/v1/stats", timeout=5).json().get("counters", {})
    shown = ", ".join(f"{k}={v}" for k, v in sorted(counters.items()))
    echo(f"  counters (GET /v1/stats): {shown or '-'}")

    echo(f"\nHubSpot emulator ({hubspot.url}):")
    echo(f"  opted out of all email: {', '.join(sorted(hubspot.opted_out)) or '-'}")
    for email, props in sorted(hubspot.properties.items()):
        ours = {k: v for k, v in props.items() if k.startswith("syncworker_") and v}
        if ours:
            shown = " ".join(f"{k}={v}" for k, v in sorted(ours.items()))
            echo(f"  properties {email}: {shown}")
    echo(f"  requests: {len(hubspot.requests)}")

    echo(f"\nSegment emulator ({segment.url}):")
    for track in segment.tracks:
        echo(f'  track "{track.get("event")}" userId={track.get("userId")}')
    echo(f"  identify calls: {len(segment.identifies)} (the addresses' hygiene traits)")

    echo(f"\nWebhook receiver ({receiver.endpoint}):")
    echo(f"  signed deliveries: {len(receiver.deliveries)}, rejected: {receiver.rejected}")
    for event in receiver.events:
        echo(f"  event kind={event.get('kind')} email={event.get('email')}")


def _try_it(url: str, password: str, token: str) -> None:
    bounce = orjson.dumps(
        {
            "RecordType": "Bounce",
            "ID": 1001,
            "Type": "HardBounce",
            "Email": TRY,
            "BouncedAt": _iso(datetime.now(UTC)),
        }
    ).decode()
    click.echo(
        "\nTry it by hand (the HubSpot emulator knows " + TRY + "):\n"
        f"  curl -u postmark:{password} -H 'Content-Type: application/json' \\\n"
        f"       -d '{bounce}' \\\n"
        f"       {url}/webhooks/postmark\n"
        f"  curl -H 'Authorization: Bearer {token}' {url}/v1/contacts/{TRY}\n"
        f"  curl -H 'Authorization: Bearer {token}' {url}/v1/stats\n"
        f"  curl {url}/metrics"
    )
