"""End to end, webhook to HubSpot: syncworker against a naive bridge, on the same machine, same run.

    python -m bench.e2e [--rounds 3] [--single 2000] [--batch-events 20000] [--batch-size 1000]
                        [--only a,b,c,d,e] [--systems syncworker,naive,naive_simple]
                        [--cap 8] [--cap-syncworker 10] [--cap-limited 25]

Each measurement starts its own redis-server, a HubSpot emulator seeded with every contact, the
system's web under gunicorn (syncworker's production configuration, the same for both: gthread,
one process per core x 16 threads) and its workers, waits until the workers are registered, then
posts the workload and times it from the first POST until every contact is opted out in the
emulator (the arrival of the last HubSpot request). Systems:

- ``syncworker``: gunicorn serving app:app plus ``syncworker worker`` processes (as in Procfile);
  HubSpot's rate is its default (100 / 10 s) where the emulator enforces it, and set far above
  the emulator's pace (SYNCWORKER_HUBSPOT_RATE) where it does not.
- ``naive`` / ``naive_simple``: bench/naive_bridge.py (Flask + marshmallow, one RQ job per event,
  one HubSpot call per contact) with ``rq worker`` processes of RQ's forking ``Worker`` /
  ``SimpleWorker``.

Workloads: a) SendGrid batches of 1,000 signed events, HubSpot unlimited, 1 worker; b) the same
with HubSpot at 100 requests / 10 s; c) single Postmark events, one per POST, unlimited, 1 worker;
d) the same with 2 workers; e) single events with HubSpot at 100 / 10 s, 1 worker. Every event is
an unsubscribe of a distinct address. A measurement not finished some seconds after its first
POST stops there and reports the contacts opted out by then over the time taken
(``complete: false``): ``--cap`` for the naive bridge (under HubSpot's limit it opts out 10
contacts a second, and 20,000 would take over half an hour), ``--cap-syncworker`` for syncworker,
``--cap-limited`` for syncworker in workload b (20,000 contacts need 200 requests, 20 s at 100 /
10 s: a shorter cap would count only the first window's burst). A capped rate is the one reached
so far, start-up included, not the one to the last contact. RQ's forking ``Worker`` imports the
job's module in each work horse (``rq worker`` does not import it in the parent): that import, of
Flask, marshmallow, cryptography and requests (over half a second on a busy 2-core VM), is most
of a naive job's time. Each round also measures each system's intake alone: the single-event
POSTs answered 2xx per second with no worker running.

Prints JSON: per workload and system, contacts/s (median, min, max over rounds), HubSpot requests
and contacts per request; syncworker's ratio to each naive variant (per-round pairs, median and
range); for single events its ratio to its intake's accepted rate; under the limit its fraction
of rate x batch (1,000 contacts/s); 2 workers over 1; and the targets with whether each holds.
Systems run in an order reversed every round.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import redis
from cryptography.hazmat.primitives.asymmetric import ec

from bench.common import ROOT, gunicorn
from syncworker.devkit.emulators.hubspot import HubSpotEmulator
from syncworker.devkit.redis_server import RedisServer, free_port
from syncworker.devkit.supervisor import descendants
from tests.intake.signing import basic_auth_header, sendgrid_keypair, sign_sendgrid

SYSTEMS = ("syncworker", "naive", "naive_simple")
TOKEN = "bench-token"
LIMIT = (100, 10.0)  # HubSpot's real limit: 100 requests per rolling 10 s
BATCH = 100  # contacts per HubSpot batch request
UNLIMITED_RATE = "100000/1"  # syncworker's own limiter, set far above anything reached here
PM_USER, PM_PASSWORD = "pm", "bench-secret"
FRACTION = "syncworker_fraction_of_rate_x_batch"
TO_NAIVE = "ratio_syncworker_to_naive"


@dataclass(frozen=True)
class Workload:
    name: str
    what: str
    single: bool
    limited: bool
    workers: int


WORKLOADS = {
    w.name: w
    for w in (
        Workload("a", "SendGrid 1,000-event batches, HubSpot unlimited, 1 worker", False, False, 1),
        Workload(
            "b", "SendGrid 1,000-event batches, HubSpot 100 req / 10 s, 1 worker", False, True, 1
        ),
        Workload("c", "single Postmark events, HubSpot unlimited, 1 worker", True, False, 1),
        Workload("d", "single Postmark events, HubSpot unlimited, 2 workers", True, False, 2),
        Workload("e", "single Postmark events, HubSpot 100 req / 10 s, 1 worker", True, True, 1),
    )
}


def emails(n: int) -> list[str]:
    return [f"contact{i:07d}@example.com" for i in range(n)]


def sendgrid_requests(
    addresses: list[str], key: ec.EllipticCurvePrivateKey, size: int = 1000
) -> list[tuple[dict[str, str], bytes]]:
    """Signed batches of ``size`` unsubscribes, as SendGrid sends them (CRLF between events)."""
    out = []
    for start in range(0, len(addresses), size):
        events = [
            {
                "email": email,
                "timestamp": 1_790_000_000 + i,
                "event": "unsubscribe",
                "sg_event_id": f"ev{i:08d}",
                "sg_message_id": f"msg{i:08d}.filter0001",
                "category": ["newsletter"],
            }
            for i, email in enumerate(addresses[start : start + size], start)
        ]
        body = b"[" + b",\r\n".join(orjson.dumps(e) for e in events) + b"]\r\n"
        out.append((sign_sendgrid(body, key), body))
    return out


def postmark_requests(addresses: list[str]) -> list[tuple[dict[str, str], bytes]]:
    """One Postmark SubscriptionChange (an unsubscribe) per request."""
    auth = basic_auth_header(PM_USER, PM_PASSWORD)
    return [
        (
            auth,
            orjson.dumps(
                {
                    "RecordType": "SubscriptionChange",
                    "MessageID": f"883953f4-6105-42a2-a16a-{i:012d}",
                    "ServerID": 123456,
                    "MessageStream": "broadcasts",
                    "ChangedAt": "2026-11-05T10:53:34.416071Z",
                    "Recipient": email,
                    "Origin": "Recipient",
                    "SuppressSending": True,
                    "SuppressionReason": "ManualSuppression",
                }
            ),
        )
        for i, email in enumerate(addresses)
    ]


class Poster:
    """bench.poster in a process of its own; ``first_at`` as soon as it has started posting."""

    def __init__(
        self, url: str, items: list[tuple[dict[str, str], bytes]], concurrency: int, tmp: Path
    ) -> None:
        spec = tmp / "poster.json"
        spec.write_bytes(
            orjson.dumps(
                {
                    "url": url,
                    "concurrency": concurrency,
                    "requests": [{"headers": h, "body": b.decode()} for h, b in items],
                }
            )
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.poster", str(spec)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.first_at = float(self.proc.stdout.readline())

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        assert self.proc.stdout is not None
        self.proc.wait(timeout)
        result: dict[str, Any] = json.loads(self.proc.stdout.read())
        return result

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class Stack:
    """One system's processes against one Redis and one HubSpot emulator."""

    def __init__(
        self, system: str, redis_url: str, hubspot_url: str, public_key: str, limited: bool
    ) -> None:
        self.system = system
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
        base = {k: v for k, v in os.environ.items() if not k.startswith(("SYNCWORKER_", "NAIVE_"))}
        if system == "syncworker":
            self.env = {
                **base,
                "REDIS_URL": redis_url,
                "SYNCWORKER_SOURCES": "sendgrid,postmark",
                "SYNCWORKER_SENDGRID_PUBLIC_KEY": public_key,
                "SYNCWORKER_POSTMARK_USERNAME": PM_USER,
                "SYNCWORKER_POSTMARK_PASSWORD": PM_PASSWORD,
                "SYNCWORKER_DESTINATIONS": "hubspot",
                "SYNCWORKER_HUBSPOT_TOKEN": TOKEN,
                "SYNCWORKER_HUBSPOT_BASE_URL": hubspot_url,
                "LOG_LEVEL": "WARNING",
            }
            if not limited:
                self.env["SYNCWORKER_HUBSPOT_RATE"] = UNLIMITED_RATE
            self.app = "app:app"
        else:
            self.env = {
                **base,
                "REDIS_URL": redis_url,
                "NAIVE_SENDGRID_PUBLIC_KEY": public_key,
                "NAIVE_POSTMARK_USERNAME": PM_USER,
                "NAIVE_POSTMARK_PASSWORD": PM_PASSWORD,
                "NAIVE_HUBSPOT_BASE_URL": hubspot_url,
                "NAIVE_HUBSPOT_TOKEN": TOKEN,
            }
            self.app = "bench.naive_bridge:app"
        self.port = free_port()
        self.procs: list[subprocess.Popen[bytes]] = []

    def start_web(self, workers: int, threads: int) -> None:
        self.procs.append(gunicorn(self.app, self.port, workers, threads, self.env))

    def start_workers(self, count: int, conn: redis.Redis) -> None:
        if self.system == "syncworker":
            args = [sys.executable, "-m", "syncworker", "worker"]
            per_process = 2  # an ingest and a deliver RQ worker (one destination)
        else:
            args = [
                sys.executable, "-m", "rq.cli", "worker", "--url", self.env["REDIS_URL"],
                "--logging_level", "WARNING", "naive",
            ]  # fmt: skip
            if self.system == "naive_simple":
                args[-1:-1] = ["--worker-class", "rq.worker.SimpleWorker"]
            per_process = 1
        for i in range(count):
            log = (self.tmp / f"worker{i}.log").open("wb")
            self.procs.append(
                subprocess.Popen(args, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
            )
        wait(lambda: conn.scard("rq:workers") >= count * per_process, 30, "workers registered")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/webhooks/"

    def stop(self) -> None:
        """SIGKILL every process of the stack, RQ's horses included: the measurement is over."""
        pids = [p for proc in self.procs for p in [proc.pid, *descendants(proc.pid)]]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for proc in self.procs:
            proc.wait()


def wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


@dataclass
class Setup:
    key: ec.EllipticCurvePrivateKey
    public_key: str
    web_workers: int
    web_threads: int
    cap: float
    cap_syncworker: float
    cap_limited: float
    single_concurrency: int
    batch_concurrency: int
    batch_size: int


def measure(system: str, wl: Workload, addresses: list[str], setup: Setup) -> dict[str, Any]:
    """One system through one workload: first POST -> every contact opted out (or the cap)."""
    n = len(addresses)
    with RedisServer() as server, HubSpotEmulator(token=TOKEN) as hubspot:
        hubspot.seed(*addresses)
        if wl.limited:
            hubspot.rate_limit(*LIMIT)
        stack = Stack(system, server.url, hubspot.url, setup.public_key, wl.limited)
        conn = redis.Redis.from_url(server.url)
        try:
            stack.start_web(setup.web_workers, setup.web_threads)
            stack.start_workers(wl.workers, conn)
            if wl.single:
                items = postmark_requests(addresses)
                url, concurrency = stack.url + "postmark", setup.single_concurrency
            else:
                items = sendgrid_requests(addresses, setup.key, setup.batch_size)
                url, concurrency = stack.url + "sendgrid", setup.batch_concurrency
            poster = Poster(url, items, concurrency, stack.tmp)
            if system != "syncworker":
                cap = setup.cap
            else:
                cap = setup.cap_limited if wl.limited and not wl.single else setup.cap_syncworker
            deadline = poster.first_at + cap
            while hubspot.opted_out_count < n and time.monotonic() < deadline:
                time.sleep(0.05)
            opted = hubspot.opted_out_count
            complete = opted == n
            calls = hubspot.requests
            end = max(r.at for r in calls) if complete else time.monotonic()
            if poster.proc.poll() is None and not complete:
                poster.kill()
                posted: dict[str, Any] = {"ok": None, "non_2xx": None}
            else:
                posted = poster.result(60)
        finally:
            stack.stop()
            conn.close()
    seconds = end - poster.first_at
    return {
        "contacts": n,
        "opted_out": opted,
        "complete": complete,
        "seconds": round(seconds, 3),
        "contacts_per_s": round(opted / seconds, 1),
        "hubspot_requests": len(calls),
        "hubspot_429s": hubspot.throttled,
        "contacts_per_request": round(opted / len(calls), 2) if calls else 0.0,
        "posts_2xx": posted["ok"],
        "posts_non_2xx": posted["non_2xx"],
    }


def measure_intake(system: str, addresses: list[str], setup: Setup) -> dict[str, Any]:
    """Single-event POSTs answered 2xx per second by the system's web alone (no worker)."""
    with RedisServer() as server:
        stack = Stack(system, server.url, "http://127.0.0.1:9", setup.public_key, False)
        try:
            stack.start_web(setup.web_workers, setup.web_threads)
            poster = Poster(
                stack.url + "postmark",
                postmark_requests(addresses),
                setup.single_concurrency,
                stack.tmp,
            )
            posted = poster.result(300)
        finally:
            stack.stop()
    seconds = posted["last_at"] - posted["first_at"]
    return {
        "posts": len(addresses),
        "posts_2xx": posted["ok"],
        "posts_non_2xx": posted["non_2xx"],
        "posts_per_s": round(posted["ok"] / seconds, 1),
    }


def spread(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median": round(ordered[len(ordered) // 2], 3),
        "min": round(ordered[0], 3),
        "max": round(ordered[-1], 3),
    }


def pairs(a: list[dict[str, Any]], b: list[dict[str, Any]], key: str = "contacts_per_s") -> Any:
    """Per-round ratios a/b (each round's pair ran close together): median and range."""
    return spread([x[key] / y[key] for x, y in zip(a, b, strict=True) if y[key]])


def summarize(
    runs: dict[tuple[str, str], list[dict[str, Any]]],
    intake: dict[str, list[dict[str, Any]]],
    systems: list[str],
    workloads: list[str],
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in workloads:
        wl = WORKLOADS[name]
        entry: dict[str, Any] = {"workload": wl.what}
        for system in systems:
            samples = runs[system, name]
            entry[system] = {
                "contacts_per_s": spread([s["contacts_per_s"] for s in samples]),
                "complete_rounds": sum(s["complete"] for s in samples),
                "rounds": len(samples),
                "opted_out": [s["opted_out"] for s in samples],
                "contacts": samples[0]["contacts"],
                "seconds": [s["seconds"] for s in samples],
                "hubspot_requests": [s["hubspot_requests"] for s in samples],
                "hubspot_429s": [s["hubspot_429s"] for s in samples],
                "contacts_per_request": spread([s["contacts_per_request"] for s in samples]),
                "posts_non_2xx": [s["posts_non_2xx"] for s in samples],
            }
        ours = runs.get(("syncworker", name))
        if ours is not None:
            for naive in ("naive", "naive_simple"):
                if (naive, name) in runs:
                    entry[f"ratio_syncworker_to_{naive}"] = pairs(ours, runs[naive, name])
            if wl.single and "syncworker" in intake:
                entry["syncworker_ratio_to_intake_accepted"] = spread(
                    [
                        s["contacts_per_s"] / i["posts_per_s"]
                        for s, i in zip(ours, intake["syncworker"], strict=True)
                    ]
                )
            if wl.limited:
                ceiling = LIMIT[0] / LIMIT[1] * BATCH
                entry[FRACTION] = spread([s["contacts_per_s"] / ceiling for s in ours])
        out[name] = entry
    if "c" in workloads and "d" in workloads:
        out["scaling_2_workers_over_1"] = {s: pairs(runs[s, "d"], runs[s, "c"]) for s in systems}
    return out


def targets(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The goals this benchmark is judged on, each with the measured median and whether it holds."""
    checks: list[tuple[str, str, list[str], float]] = [
        ("single event -> HubSpot contacts/s", "c", ["syncworker", "contacts_per_s"], 1000),
        (
            "single event end to end / intake accepted rate",
            "c",
            ["syncworker_ratio_to_intake_accepted"],
            0.3,
        ),
        ("single event, syncworker / naive", "c", [TO_NAIVE], 50),
        ("single event, syncworker / naive SimpleWorker", "c", [f"{TO_NAIVE}_simple"], 10),
        ("batches under HubSpot's limit / rate x batch", "b", [FRACTION], 0.95),
        ("single events under HubSpot's limit / rate x batch", "e", [FRACTION], 0.95),
        ("2 workers / 1 worker (syncworker)", "scaling_2_workers_over_1", ["syncworker"], 1.6),
    ]  # fmt: skip
    out = []
    for what, where, path, goal in checks:
        node: Any = summary.get(where)
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and "median" in node:
            median = node["median"]
            met = median >= goal
            out.append({"target": what, "goal": f">= {goal}", "median": median, "met": met})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians kept")
    parser.add_argument("--single", type=int, default=2000, help="N single-event POSTs (c, d, e)")
    parser.add_argument("--batch-events", type=int, default=20_000, help="events in batches (a, b)")
    parser.add_argument("--batch-size", type=int, default=1000, help="events per SendGrid POST")
    parser.add_argument("--cap", type=float, default=8.0, help="seconds a naive run may take")
    parser.add_argument("--cap-syncworker", type=float, default=10.0, help="seconds, syncworker")
    parser.add_argument(
        "--cap-limited", type=float, default=25.0, help="seconds, syncworker in workload b"
    )
    parser.add_argument("--only", default="a,b,c,d,e", help="workloads, comma list")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma list")
    parser.add_argument("--web-workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--web-threads", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=32, help="single-event poster threads")
    parser.add_argument("--batch-concurrency", type=int, default=4, help="batch poster threads")
    args = parser.parse_args()
    workloads = [w for w in args.only.split(",") if w]
    systems = [s for s in args.systems.split(",") if s]
    if not set(workloads) <= set(WORKLOADS) or not set(systems) <= set(SYSTEMS):
        parser.error(f"workloads from {','.join(WORKLOADS)}; systems from {','.join(SYSTEMS)}")
    if args.batch_events % args.batch_size:
        parser.error("--batch-events: a multiple of --batch-size")
    key, public_key = sendgrid_keypair()
    setup = Setup(
        key,
        public_key,
        args.web_workers,
        args.web_threads,
        args.cap,
        args.cap_syncworker,
        args.cap_limited,
        args.concurrency,
        args.batch_concurrency,
        args.batch_size,
    )
    single, batched = emails(args.single), emails(args.batch_events)
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    intake: dict[str, list[dict[str, Any]]] = {}
    started = time.monotonic()
    for round_no in range(args.rounds):
        order = systems if round_no % 2 == 0 else systems[::-1]
        if any(WORKLOADS[w].single for w in workloads):
            for system in order:
                intake.setdefault(system, []).append(measure_intake(system, single, setup))
        for name in workloads:
            wl = WORKLOADS[name]
            for system in order:
                result = measure(system, wl, single if wl.single else batched, setup)
                runs.setdefault((system, name), []).append(result)
    summary = summarize(runs, intake, systems, workloads)
    result = {
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "cpus": os.cpu_count(),
        "rounds": args.rounds,
        "single_events": args.single,
        "batch_events": args.batch_events,
        "batch_size": args.batch_size,
        "cap_s": {
            "naive": args.cap,
            "syncworker": args.cap_syncworker,
            "syncworker_limited": args.cap_limited,
        },
        "gunicorn": f"gthread, {args.web_workers} workers x {args.web_threads} threads, all",
        "poster_threads": {"single": args.concurrency, "batch": args.batch_concurrency},
        "hubspot_limit": f"{LIMIT[0]} requests / {LIMIT[1]:g} s where limited",
        "intake_accepted_single_posts_per_s": {
            system: {
                **spread([r["posts_per_s"] for r in rs]),
                "non_2xx": [r["posts_non_2xx"] for r in rs],
            }
            for system, rs in intake.items()
        },
        "workloads": summary,
        "targets": targets(summary),
        "wall_s": round(time.monotonic() - started, 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
