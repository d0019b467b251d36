"""Ingest throughput by ingest process count: single-event requests waiting in the inbox, applied
by `syncworker worker` with 1 and with 2 ingest processes (SYNCWORKER_INGEST_WORKERS), in
alternating rounds.

Each round starts the worker with no destination and waits until it is idle; then N accepted
single-event requests are written to the inbox exactly as the web writes them (held back from the
worker meanwhile), released at once, and timed until the last is applied and acknowledged. Prints
JSON: events/s per process count (median, range), the paired ratio 2 ÷ 1, and CPU shares.

    python -m bench.ingest [--events 50000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import redis
from rq import Queue
from rq.serializers import JSONSerializer

from bench.common import ROOT
from bench.drain import machine_busy, tree_cpu_seconds
from syncworker import codec
from syncworker.devkit.redis_server import RedisServer
from syncworker.events import HygieneEvent, Kind
from syncworker.queue.enqueue import DRAIN_FUNC, encode_payload, ensure_drain
from syncworker.queue.workers import FAILED
from syncworker.store.keys import INBOX, INBOX_QUEUED, STATS


def write_requests(conn: redis.Redis, n: int) -> None:
    """N single-event requests in the inbox, as the web writes them, with no ingest job queued
    for them yet: the queued flag names a job parked on a queue no worker reads."""
    parked = Queue("bench-parked", connection=conn, serializer=JSONSerializer).enqueue(DRAIN_FUNC)
    conn.set(INBOX_QUEUED, parked.id)
    conn.xgroup_create(INBOX, "ingest", id="0", mkstream=True)
    with conn.pipeline(transaction=False) as pipe:
        for i in range(n):
            event = HygieneEvent(
                f"k{i}", "bench", "bench", f"user{i:07d}@example.com", Kind.UNSUBSCRIBE, 1.7e9 + i
            )
            payload = {"source": "bench", "esp": "bench", "events": [codec.dump(event)]}
            pipe.xadd(INBOX, {"r": f"r{i}", "d": "bench", "p": encode_payload(payload)})
            if len(pipe) >= 1000:
                pipe.execute()
        pipe.execute()


def one_round(server: RedisServer, events: int, processes: int, timeout: float) -> dict[str, Any]:
    conn = redis.Redis.from_url(server.url)
    conn.flushall()
    env = {
        **os.environ,
        "REDIS_URL": server.url,
        "SYNCWORKER_DESTINATIONS": "",
        "SYNCWORKER_INGEST_WORKERS": str(processes),
        "SYNCWORKER_DELIVER_WORKERS": "1",
        "LOG_LEVEL": "WARNING",
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "syncworker", "worker"], cwd=ROOT, env=env, stdout=sys.stderr
    )
    try:
        deadline = time.monotonic() + 60
        while conn.scard("rq:workers") < processes + 1:
            if time.monotonic() > deadline or worker.poll() is not None:
                raise SystemExit("the worker did not start")
            time.sleep(0.02)
        time.sleep(1.0)  # past the scheduler's first ticks and RQ's start-up sweeps
        write_requests(conn, events)
        cpu_before = tree_cpu_seconds(worker.pid)
        redis_pid = server.process.pid if server.process is not None else 0
        redis_before = tree_cpu_seconds(redis_pid)
        busy_before = machine_busy()
        started = time.monotonic()
        conn.delete(INBOX_QUEUED)
        ensure_drain(conn)
        while conn.xlen(INBOX):
            if time.monotonic() - started > timeout:
                raise SystemExit(f"not applied in {timeout}s")
            time.sleep(0.005)
        elapsed = time.monotonic() - started
        worker_cpu = tree_cpu_seconds(worker.pid) - cpu_before
        redis_cpu = tree_cpu_seconds(redis_pid) - redis_before
        busy_after = machine_busy()
        applied = int(conn.hget(STATS, "ledger:suppressed") or 0)
        if applied != events:
            raise SystemExit(f"{applied} of {events} events applied")
        jobs = int(conn.hget(STATS, FAILED + "ingest") or 0)
    finally:
        worker.terminate()
        worker.wait(30)
    conn.close()
    return {
        "events_per_s": events / elapsed,
        "seconds": elapsed,
        "worker_cpu_share": worker_cpu / elapsed,
        "redis_cpu_share": redis_cpu / elapsed,
        "machine_busy_share": (busy_after[0] - busy_before[0])
        / max(1, busy_after[1] - busy_before[1]),
        "failed_jobs": jobs,
    }


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    with RedisServer() as server:
        for r in range(args.rounds):
            for processes in (1, 2) if r % 2 == 0 else (2, 1):
                runs[processes].append(one_round(server, args.events, processes, args.timeout))
    ratios = [
        two["events_per_s"] / one["events_per_s"] for one, two in zip(runs[1], runs[2], strict=True)
    ]
    out = {
        "benchmark": "ingest: single-event requests applied by 1 and 2 ingest processes",
        "events": args.events,
        "rounds": args.rounds,
        "cores": os.cpu_count(),
        "by_processes": {
            str(p): {
                "events_per_s": summary([x["events_per_s"] for x in rs]),
                "worker_cpu_share": summary([x["worker_cpu_share"] for x in rs]),
                "redis_cpu_share": summary([x["redis_cpu_share"] for x in rs]),
                "machine_busy_share": summary([x["machine_busy_share"] for x in rs]),
            }
            for p, rs in runs.items()
        },
        "ratio_2_to_1": summary(ratios),
        # 2 processes with every core busy at their own CPU cost per event, over 1 process:
        # the ratio the machine's CPU allows
        "ratio_cpu_allows": summary(
            [
                two["events_per_s"] / max(two["machine_busy_share"], 1e-9) / one["events_per_s"]
                for one, two in zip(runs[1], runs[2], strict=True)
            ]
        ),
        "target": {"ratio_2_to_1": ">= 1.6 when CPU allows"},
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
