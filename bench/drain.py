"""Drain throughput: contacts/s that a real ``syncworker worker`` delivers to the HubSpot emulator.

    python -m bench.drain [--rate 10] [--contacts 20000]

The emulator admits ``--rate`` requests per second (sliding window, 429 + Retry-After beyond it)
and syncworker is configured with the same rate. Every contact is a pure unsubscribe, so each
batch of 100 is one request. Target: >= 0.95 x rate x 100 contacts/s with zero 429s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import redis

from bench.common import ROOT
from syncworker.config import DestinationConfig, Settings
from syncworker.delivery import INFLIGHT
from syncworker.emulators.hubspot import HubSpotEmulator
from syncworker.events import HygieneEvent, Kind
from syncworker.ledger import PENDING
from syncworker.redis_server import RedisServer
from syncworker.runtime import Runtime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=10, help="requests/s, emulator and worker")
    parser.add_argument("--contacts", type=int, default=20_000)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    emails = [f"user{i:06d}@example.com" for i in range(args.contacts)]

    with RedisServer() as server, HubSpotEmulator(token="bench-token") as hubspot:
        hubspot.seed(*emails)
        hubspot.rate_limit(args.rate, 1.0)
        values = {"TOKEN": "bench-token", "BASE_URL": hubspot.url, "RATE": f"{args.rate}/1"}
        settings = Settings(
            redis_url=server.url,
            destinations={"hubspot": DestinationConfig("hubspot", values)},
        )
        conn = redis.Redis.from_url(server.url)
        rt = Runtime.build(settings, conn)
        for start in range(0, len(emails), 1000):
            rt.ledger.apply(
                HygieneEvent(f"k{i}", "bench", "bench", email, Kind.UNSUBSCRIBE, 1.7e9 + i)
                for i, email in enumerate(emails[start : start + 1000], start)
            )
        assert conn.zcard(PENDING + "hubspot") == args.contacts
        env = {
            **os.environ,
            "REDIS_URL": server.url,
            "SYNCWORKER_DESTINATIONS": "hubspot",
            "SYNCWORKER_HUBSPOT_TOKEN": "bench-token",
            "SYNCWORKER_HUBSPOT_BASE_URL": hubspot.url,
            "SYNCWORKER_HUBSPOT_RATE": f"{args.rate}/1",
            "LOG_LEVEL": "WARNING",
        }
        started = time.monotonic()
        worker = subprocess.Popen([sys.executable, "-m", "syncworker", "worker"], cwd=ROOT, env=env)
        try:
            deadline = started + args.timeout
            while len(hubspot.opted_out) < args.contacts or conn.zcard(INFLIGHT + "hubspot"):
                if time.monotonic() > deadline:
                    raise SystemExit(f"not drained in {args.timeout}s")
                time.sleep(0.1)
            wall = time.monotonic() - started
        finally:
            worker.terminate()
            worker.wait(30)
        calls = hubspot.requests
        first, last = calls[0].at, calls[-1].at
        span = last - first
        per_s = (args.contacts - 100) / span
        result = {
            "contacts": args.contacts,
            "rate_limit_requests_per_s": args.rate,
            "batch_size": 100,
            "requests": len(calls),
            "emulator_429s": hubspot.throttled,
            # n requests span n-1 intervals: count the contacts those intervals carried
            "contacts_per_s": round(per_s, 1),
            "target_contacts_per_s": round(0.95 * args.rate * 100, 1),
            "ratio_to_limit": round(per_s / (args.rate * 100), 3),
            "first_to_last_request_s": round(span, 2),
            "wall_s_with_worker_start": round(wall, 2),
            "opted_out": len(hubspot.opted_out),
        }
        conn.close()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
