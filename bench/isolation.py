"""Isolation: latency of healthy destinations while another is rate-limited or hangs.

    python -m bench.isolation [--seconds 20] [--per-second 10] [--backlog 25000]

A real ``syncworker worker`` delivers to three loopback emulators: HubSpot at its default rate
(100 requests / 10 s, enforced by the emulator too) with a backlog of ``--backlog`` contacts, so
its job sleeps at the limiter throughout, and two event streams, Segment and the webhook receiver.
For ``--seconds`` the bench writes ``--per-second`` unsubscribes to the ledger, one new address
each. Latency: from the ledger write to the sync status the worker records once the destination
answered. Run twice per deliver process count: no fault (baseline), and Segment holding every
request until the HTTP timeout (faults). Target: each healthy destination's p99 with faults
within 2x of its baseline, and the event streams' baseline p99 well under HubSpot's job budget
(they do not wait behind HubSpot's limit).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

import redis

from bench.common import ROOT
from syncworker.bootstrap import Runtime
from syncworker.config import DestinationConfig, Settings
from syncworker.devkit.emulators.hubspot import HubSpotEmulator
from syncworker.devkit.emulators.segment import SegmentEmulator
from syncworker.devkit.emulators.webhook_receiver import WebhookReceiver, new_secret
from syncworker.devkit.redis_server import RedisServer
from syncworker.events import HygieneEvent, Kind
from syncworker.ledger import Ledger, Route
from syncworker.store.keys import PENDING

DESTINATIONS = ("hubspot", "segment", "webhook")
STREAMS = ("segment", "webhook")
DELIVERED = ("applied", "already", "not_found")
HTTP_TIMEOUT_S = 15.0


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def run(deliver_workers: int, hang: bool, args: argparse.Namespace) -> dict[str, Any]:
    """One run; per destination the latencies of the addresses it got, in seconds."""
    secret = new_secret()
    backlog = [f"backlog{i:06d}@example.com" for i in range(args.backlog)]
    stream = [f"stream{i:05d}@example.com" for i in range(int(args.seconds * args.per_second))]
    with (
        RedisServer() as server,
        HubSpotEmulator(token="hs") as hubspot,
        SegmentEmulator(write_key="wk") as segment,
        WebhookReceiver(secret) as receiver,
    ):
        hubspot.seed(*backlog, *stream)
        hubspot.rate_limit(100, 10.0)
        if hang:
            segment.slow_next(1_000_000, 3600.0)  # every request, until the client gives up
        values = {
            "hubspot": {"TOKEN": "hs", "BASE_URL": hubspot.url},
            "segment": {"WRITE_KEY": "wk", "BASE_URL": segment.url},
            "webhook": {"URL": receiver.endpoint, "SECRET": secret},
        }
        settings = Settings(
            redis_url=server.url,
            destinations={n: DestinationConfig(n, v) for n, v in values.items()},
        )
        conn = redis.Redis.from_url(server.url)
        rt = Runtime.build(settings, conn)
        for start in range(0, len(backlog), 1000):
            rt.ledger.apply(
                [
                    HygieneEvent(f"b{i}", "bench", "bench", email, Kind.UNSUBSCRIBE, 1.7e9 + i)
                    for i, email in enumerate(backlog[start : start + 1000], start)
                ]
            )
        for name in STREAMS:  # the backlog is HubSpot's alone
            conn.delete(PENDING + name)
        env = {
            **os.environ,
            "REDIS_URL": server.url,
            "SYNCWORKER_DESTINATIONS": ",".join(DESTINATIONS),
            "SYNCWORKER_HUBSPOT_TOKEN": "hs",
            "SYNCWORKER_HUBSPOT_BASE_URL": hubspot.url,
            "SYNCWORKER_SEGMENT_WRITE_KEY": "wk",
            "SYNCWORKER_SEGMENT_BASE_URL": segment.url,
            "SYNCWORKER_WEBHOOK_URL": receiver.endpoint,
            "SYNCWORKER_WEBHOOK_SECRET": secret,
            "SYNCWORKER_HTTP_TIMEOUT": str(HTTP_TIMEOUT_S),
            "SYNCWORKER_DELIVER_WORKERS": str(deliver_workers),
            "SYNCWORKER_STOP_GRACE": "1",
            "LOG_LEVEL": "WARNING",
        }
        worker = subprocess.Popen(
            [sys.executable, "-m", "syncworker", "worker"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            written: dict[str, float] = {}
            began = time.time()
            for i, email in enumerate(stream):
                at = began + i / args.per_second
                time.sleep(max(0.0, at - time.time()))
                written[email] = time.time()
                rt.ledger.apply(
                    [HygieneEvent(f"s{i}", "bench", "bench", email, Kind.UNSUBSCRIBE, at)]
                )
            healthy = [n for n in DESTINATIONS if not (hang and n == "segment")]
            deadline = time.monotonic() + args.timeout
            while True:
                latencies = collect(conn, written, DESTINATIONS)
                if all(len(latencies[n]) == len(stream) for n in healthy):
                    break
                if time.monotonic() > deadline:
                    break  # reported as undelivered
                time.sleep(0.5)
        finally:
            worker.terminate()
            worker.wait(60)
        conn.close()
        rate_429s = hubspot.throttled
    out: dict[str, Any] = {}
    for name in DESTINATIONS:
        lat = latencies[name]
        if hang and name == "segment":
            out[name] = {"hanging": True, "delivered": len(lat)}
            continue
        out[name] = {
            "delivered": len(lat),
            "undelivered": len(stream) - len(lat),
            "p50_s": round(percentile(lat, 50), 2) if lat else None,
            "p99_s": round(percentile(lat, 99), 2) if lat else None,
        }
    out["hubspot"]["emulator_429s"] = rate_429s
    return out


def collect(
    conn: redis.Redis, written: dict[str, float], names: tuple[str, ...]
) -> dict[str, list[float]]:
    emails = list(written)
    rows = Ledger(conn, Settings(), Route()).sync_status(emails)
    latencies: dict[str, list[float]] = {n: [] for n in names}
    for email, row in zip(emails, rows, strict=True):
        for name in names:
            status = row.get(name)
            if status and status.get("status") in DELIVERED:
                latencies[name].append(float(status["at"]) - written[email])
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="how long events are written")
    parser.add_argument("--per-second", type=float, default=10.0, help="events written per second")
    parser.add_argument("--backlog", type=int, default=25000, help="HubSpot contacts pending first")
    parser.add_argument("--workers", default="1,2,3", help="deliver process counts to run")
    parser.add_argument("--timeout", type=float, default=120.0, help="drain wait after writing")
    args = parser.parse_args()
    results: dict[str, Any] = {
        "hubspot_rate": "100 / 10 s",
        "hubspot_backlog": args.backlog,
        "events": int(args.seconds * args.per_second),
        "events_per_s": args.per_second,
        "hanging": "segment (every request held until the HTTP timeout)",
        "http_timeout_s": HTTP_TIMEOUT_S,
        "runs": {},
    }
    for n in (int(w) for w in args.workers.split(",")):
        baseline = run(n, False, args)
        faults = run(n, True, args)
        ratios = {}
        for name in ("hubspot", "webhook"):
            base, hung = baseline[name]["p99_s"], faults[name]["p99_s"]
            ok = base is not None and hung is not None and not faults[name]["undelivered"]
            ratios[name] = round(hung / max(base, 0.1), 2) if ok else None
        results["runs"][f"deliver_workers={n}"] = {
            "baseline": baseline,
            "faults": faults,
            "p99_faults_over_baseline": ratios,
            "within_2x": all(r is not None and r <= 2 for r in ratios.values()),
        }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
