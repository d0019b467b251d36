"""Drain throughput: contacts/s that a real ``syncworker worker`` delivers to the HubSpot emulator.

    python -m bench.drain [--rate 100/10] [--contacts 10000] [--rounds 3]
    python -m bench.drain --rate unlimited --processes 1,2      # 2 deliver processes vs 1
    python -m bench.drain --arrival trickle --contacts 2000 --batch-wait 0,default

Every contact is a pure unsubscribe, so each batch of up to 100 is one request. The emulator
enforces ``--rate`` (sliding window, 429 + Retry-After beyond it; none for ``unlimited``) and the
worker is configured with the same rate. Each variant (deliver processes x batch wait) runs
``--rounds`` times, the variants alternating round by round, each round on a fresh Redis and
emulator with the worker started and idle before the clock starts.

``pending`` measures delivery alone: every contact is written to the ledger first, pending, while
the destination is paused (the write is timed apart, ``pending_write_s``); the clock starts when
the pause is lifted and their deliver job queued, as an ingest job does. ``trickle`` measures
ingest and delivery together: the clock starts as one single-event request per contact goes
into the inbox (as a single-event ESP's webhooks do). It stops when the last contact is synced:
the emulator has every contact opted out and nothing is pending or in flight. Worker start-up
is measured apart. Printed: medians with ranges (min-max) per variant, and with two variants the
median of the per-round ratios of the second to the first. Targets: at a rate limit, >= 0.95 x
the limit with zero 429s; unlimited, 2 deliver processes / 1 >= 1.6 (CPU allowing).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import orjson
import redis

from bench.common import ROOT
from syncworker import codec
from syncworker.bootstrap import Runtime
from syncworker.config import DestinationConfig, Settings
from syncworker.delivery import schedule
from syncworker.devkit.emulators.hubspot import HubSpotEmulator
from syncworker.devkit.redis_server import RedisServer
from syncworker.devkit.supervisor import descendants
from syncworker.events import HygieneEvent, Kind
from syncworker.queue.enqueue import Enqueuer
from syncworker.store.keys import INFLIGHT, PAUSE, PENDING

BATCH = 100
UNLIMITED = "1000000/1"  # the worker's rate when the emulator has none: the limiter never waits


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and its descendants, with the children they have reaped (RQ's
    work-horses, one per job, end before the round does)."""
    total = 0
    for proc in [pid, *descendants(pid)]:
        try:
            with open(f"/proc/{proc}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return total / os.sysconf("SC_CLK_TCK")


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of every core since boot, from /proc/stat."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    return sum(values) - idle, sum(values)


def parse_rate(text: str) -> tuple[int, float] | None:
    if text == "unlimited":
        return None
    count, _, per = text.partition("/")
    return int(count), float(per or 1)


def one_round(
    server: RedisServer, args: argparse.Namespace, processes: int, batch_wait: str
) -> dict[str, Any]:
    emails = [f"user{i:06d}@example.com" for i in range(args.contacts)]
    conn = redis.Redis.from_url(server.url)
    conn.flushall()
    limit = parse_rate(args.rate)
    rate = UNLIMITED if limit is None else f"{limit[0]}/{limit[1]:g}"
    with HubSpotEmulator(token="bench-token") as hubspot:
        hubspot.seed(*emails)
        if limit is not None:
            hubspot.rate_limit(*limit)
        env = {
            **os.environ,
            "REDIS_URL": server.url,
            "SYNCWORKER_DESTINATIONS": "hubspot",
            "SYNCWORKER_HUBSPOT_TOKEN": "bench-token",
            "SYNCWORKER_HUBSPOT_BASE_URL": hubspot.url,
            "SYNCWORKER_HUBSPOT_RATE": rate,
            "SYNCWORKER_DELIVER_WORKERS": str(processes),
            "LOG_LEVEL": "WARNING",
        }
        if batch_wait != "default":
            env["SYNCWORKER_HUBSPOT_BATCH_WAIT"] = batch_wait
        launched = time.monotonic()
        worker = subprocess.Popen(
            [sys.executable, "-m", "syncworker", "worker"], cwd=ROOT, env=env, stdout=sys.stderr
        )
        try:
            deadline = launched + 60
            while conn.scard("rq:workers") < 1 + processes:  # ingest + deliver, all listening
                if time.monotonic() > deadline or worker.poll() is not None:
                    raise SystemExit("the worker did not start")
                time.sleep(0.02)
            startup = time.monotonic() - launched
            time.sleep(1.0)  # past the scheduler's first ticks and RQ's start-up sweeps
            written = time.monotonic()
            if args.arrival == "pending":  # written while the destination is paused
                write_pending(conn, server, emails)
            write_s = time.monotonic() - written
            cpu_before = tree_cpu_seconds(worker.pid)
            redis_pid = server.process.pid if server.process is not None else 0
            redis_before = tree_cpu_seconds(redis_pid)
            own_before = sum(os.times()[:2])
            busy_before = machine_busy()
            started = time.monotonic()
            if args.arrival == "pending":
                conn.delete(PAUSE + "hubspot")
                schedule.ensure_taker(runtime(server, conn), "hubspot")
            else:
                trickle(conn, emails)
            deadline = started + args.timeout
            while (
                hubspot.opted_out_count < len(emails)
                or conn.zcard(PENDING + "hubspot")
                or conn.zcard(INFLIGHT + "hubspot")
            ):
                if time.monotonic() > deadline:
                    raise SystemExit(f"not drained in {args.timeout}s")
                time.sleep(0.01)
            elapsed = time.monotonic() - started
            worker_cpu = tree_cpu_seconds(worker.pid) - cpu_before
            redis_cpu = tree_cpu_seconds(redis_pid) - redis_before
            own_cpu = sum(os.times()[:2]) - own_before
            busy_after = machine_busy()
        finally:
            worker.terminate()
            worker.wait(30)
        calls = [r for r in hubspot.requests if isinstance(r.json, dict)]
        result = {
            "contacts_per_s": len(emails) / elapsed,
            "seconds": elapsed,
            "requests": len(calls),
            "contacts_per_request": len(emails) / max(1, len(calls)),
            "emulator_429s": hubspot.throttled,
            "peak_requests_in_flight": hubspot.peak_in_flight,
            # shares of one core over the round: the worker (its processes and work-horses),
            # Redis, and this process (the emulator, in threads, and the bench's polling);
            # the machine's share of all its cores, whatever ran on them
            "worker_cpu_share": worker_cpu / elapsed,
            "redis_cpu_share": redis_cpu / elapsed,
            "bench_process_cpu_share": own_cpu / elapsed,
            "machine_busy_share": (busy_after[0] - busy_before[0])
            / max(1, busy_after[1] - busy_before[1]),
            "worker_start_s": startup,
            "pending_write_s": write_s,
        }
    conn.close()
    return result


def events_for(emails: list[str]) -> list[HygieneEvent]:
    return [
        HygieneEvent(f"k{i}", "bench", "bench", email, Kind.UNSUBSCRIBE, 1.7e9 + i)
        for i, email in enumerate(emails)
    ]


def trickle(conn: redis.Redis, emails: list[str]) -> None:
    """One single-event request per contact into the inbox, as a single-event ESP's webhooks."""
    enqueuer = Enqueuer(conn)
    for event in events_for(emails):
        enqueuer.ingest({"source": "bench", "events": [codec.dump(event)]}, "bench", {})


def runtime(server: RedisServer, conn: redis.Redis) -> Runtime:
    settings = Settings(
        redis_url=server.url,
        destinations={"hubspot": DestinationConfig("hubspot", {"TOKEN": "bench-token"})},
    )
    return Runtime.build(settings, conn)


def write_pending(conn: redis.Redis, server: RedisServer, emails: list[str]) -> None:
    """Every contact suppressed in the ledger and pending for HubSpot, with the destination
    paused meanwhile so that no delivery starts before the clock does."""
    hold = {"reason": "bench: contacts being written", "until": time.time() + 600}
    conn.set(PAUSE + "hubspot", orjson.dumps(hold), px=600_000)
    rt = runtime(server, conn)
    events = events_for(emails)
    for start in range(0, len(events), 1000):
        rt.ledger.apply(events[start : start + 1000])


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rate", default="100/10", help="N/SECONDS (HubSpot's), or unlimited")
    parser.add_argument("--contacts", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3, help="rounds per variant")
    parser.add_argument("--processes", default="1", help="deliver processes, e.g. 1,2")
    parser.add_argument(
        "--batch-wait", default="default", help="HUBSPOT_BATCH_WAIT values, e.g. 0,default"
    )
    parser.add_argument("--arrival", choices=("pending", "trickle"), default="pending")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    variants = list(
        itertools.product([int(p) for p in args.processes.split(",")], args.batch_wait.split(","))
    )
    rounds: dict[tuple[int, str], list[dict[str, Any]]] = {v: [] for v in variants}
    with RedisServer() as server:
        for _ in range(args.rounds):
            for variant in variants:  # alternating: the machine's drift hits every variant
                rounds[variant].append(one_round(server, args, *variant))
    limit = parse_rate(args.rate)
    out: dict[str, Any] = {
        "rate_limit": args.rate,
        "limit_contacts_per_s": None if limit is None else limit[0] / limit[1] * BATCH,
        "contacts": args.contacts,
        "arrival": args.arrival,
        "rounds_per_variant": args.rounds,
        "clock": (
            "from the pending contacts' release (pending) or their first request (trickle), "
            "worker started and idle, to the last one synced"
        ),
        "cpu_cores": os.cpu_count(),
        "variants": [],
    }
    for (processes, wait), runs in rounds.items():
        entry: dict[str, Any] = {"deliver_processes": processes, "batch_wait": wait}
        for key in runs[0]:
            entry[key] = summary([r[key] for r in runs])
        if limit is not None:
            entry["ratio_to_limit"] = summary(
                [r["contacts_per_s"] / (limit[0] / limit[1] * BATCH) for r in runs]
            )
        out["variants"].append(entry)
    if len(variants) == 2:
        first, second = (rounds[v] for v in variants)
        out["paired_ratio_contacts_per_s_second_to_first"] = summary(
            [b["contacts_per_s"] / a["contacts_per_s"] for a, b in zip(first, second, strict=True)]
        )
        # what the second variant would reach with every core busy at its own CPU cost per
        # contact, over the first: the ratio the machine's CPU allows
        out["ratio_cpu_allows"] = summary(
            [
                b["contacts_per_s"] / max(b["machine_busy_share"], 1e-9) / a["contacts_per_s"]
                for a, b in zip(first, second, strict=True)
            ]
        )
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
