"""Intake throughput through gunicorn, beside a bare Flask app measured in the same run.

    python -m bench.intake [--seconds 5] [--rounds 9] [--connections 256] [--batch-connections 8]
                           [--only single|batch]

Prints JSON: events/s for signed 1,000-event SendGrid batches and requests/s for single Postmark
events, each with the bare Flask figure (parse the body with orjson, answer 200) and their ratio,
each as the median and range over rounds. Targets: batched >= 0.10 of the bare parse floor;
single >= 0.5 of bare Flask.

The load generator, Redis and both apps share the machine, and throughput on a small VM drifts
between runs: the apps alternate round by round (which one goes first alternates too) and the
ratio reported is the median of each round's pair. Beside it, the CPU time each request cost
(gunicorn's processes, and Redis for syncworker) is printed: it drifts less than throughput and
says where the time goes. Each round waits until both apps and Redis are idle: when wrk stops,
requests it already sent are still being served (a second or more of 1,000-event batches), and
that work would land in the next round.

wrk opens its connections in one burst, and a gunicorn worker accepts whatever is waiting when it
wakes: with a few dozen connections one worker often ends up with nearly all of them, which halves
throughput for that round, for either app at random. 256 connections spread evenly enough that
rounds agree (measured: single-event pair ratios 0.56-0.80 at 256, against 0.24-1.60 at 64).
"""

from __future__ import annotations

import argparse
import json
import os
import random
from typing import Any

import orjson
import redis

from bench.common import gunicorn, process_cpu_seconds, stop, wait_idle, wrk_post
from syncworker.devkit.redis_server import RedisServer, free_port
from syncworker.store.keys import INGEST
from tests.intake.signing import basic_auth_header, sendgrid_keypair, sign_sendgrid

HYGIENE: list[dict[str, Any]] = [
    {"event": "bounce", "type": "bounce", "reason": "550 5.1.1 user unknown", "status": "5.1.1"},
    {"event": "bounce", "type": "blocked", "reason": "550 blocked", "status": "5.7.1"},
    {"event": "dropped", "reason": "Bounced Address"},
    {"event": "spamreport"},
    {"event": "unsubscribe"},
    {"event": "group_unsubscribe", "asm_group_id": 42},
]
OTHER: list[dict[str, Any]] = [
    {"event": e} for e in ("delivered", "open", "click", "processed", "deferred")
]


def sendgrid_batch(n: int, hygiene_share: float, rng: random.Random) -> bytes:
    events = []
    for i in range(n):
        base = rng.choice(HYGIENE) if rng.random() < hygiene_share else rng.choice(OTHER)
        events.append(
            {
                "email": f"user{rng.randrange(50_000)}@example.com",
                "timestamp": 1_790_000_000 + i,
                "sg_event_id": f"ev{i:08d}",
                "sg_message_id": f"msg{i // 3:07d}.filter0001",
                "smtp-id": f"<msg{i // 3}@example.com>",
                "category": ["newsletter"],
                **base,
            }
        )
    # SendGrid separates elements with CRLF, and the signature covers those bytes
    return b"[" + b",\r\n".join(orjson.dumps(e) for e in events) + b"]\r\n"


POSTMARK_BOUNCE = {
    "RecordType": "Bounce",
    "ID": 4323372036854775807,
    "Type": "HardBounce",
    "TypeCode": 1,
    "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
    "Email": "jane.doe@example.com",
    "BouncedAt": "2026-11-05T16:33:54.9070259-05:00",
    "Details": "smtp;550 5.1.1 The email account that you tried to reach does not exist",
    "MessageStream": "outbound",
}


def paired_ratios(ours: list[dict[str, float]], bare: list[dict[str, float]]) -> dict[str, Any]:
    """Median, min and max of ours/bare over rounds: each round's pair ran back to back, so the
    machine's drift between rounds cancels out."""
    ratios = sorted(
        o["requests_per_s"] / b["requests_per_s"] for o, b in zip(ours, bare, strict=True)
    )
    return {
        "ratio": round(ratios[len(ratios) // 2], 3),
        "ratio_min": round(ratios[0], 3),
        "ratio_max": round(ratios[-1], 3),
        "ratios": [round(r, 3) for r in ratios],
    }


def spread(values: list[float], scale: float = 1.0) -> dict[str, float]:
    """Median, min and max of ``values`` (times ``scale``), rounded."""
    ordered = sorted(v * scale for v in values)
    return {
        "median": round(ordered[len(ordered) // 2]),
        "min": round(ordered[0]),
        "max": round(ordered[-1]),
    }


def median_run(values: list[dict[str, float]]) -> dict[str, float]:
    ordered = sorted(values, key=lambda v: v["requests_per_s"])
    middle = dict(ordered[len(ordered) // 2])
    middle["requests"] = sum(v["requests"] for v in values)
    middle["non_2xx"] = sum(v["non_2xx"] for v in values)
    middle["socket_errors"] = sum(v["socket_errors"] for v in values)
    for name in ("app_cpu_us", "redis_cpu_us"):
        middle[name] = sorted(v[name] for v in values)[len(values) // 2]
    return middle


def cpu_figures(ours: dict[str, float], bare: dict[str, float], per: int = 1) -> dict[str, float]:
    """Median CPU µs per request (or per event, with ``per``): syncworker's gunicorn processes,
    its Redis, and bare Flask's gunicorn processes."""
    return {
        "cpu_us_web": round(ours["app_cpu_us"] / per, 2),
        "cpu_us_redis": round(ours["redis_cpu_us"] / per, 2),
        "bare_cpu_us_web": round(bare["app_cpu_us"] / per, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="both apps")
    parser.add_argument("--threads", type=int, default=16, help="threads per worker, both apps")
    parser.add_argument(
        "--worker-class", choices=["gthread", "sync"], default="gthread", help="production: gthread"
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=256,
        help="concurrent connections for single events",
    )
    parser.add_argument(
        "--batch-connections",
        type=int,
        default=8,
        help="concurrent connections for batches (each takes tens of ms: more only queue)",
    )
    parser.add_argument("--hygiene-share", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=9, help="alternating rounds; medians kept")
    parser.add_argument("--only", choices=["batch", "single"], default=None)
    args = parser.parse_args()

    rng = random.Random(7)
    private_key, public_key = sendgrid_keypair()
    batch = sendgrid_batch(1000, args.hygiene_share, rng)
    single = orjson.dumps(POSTMARK_BOUNCE)
    auth = basic_auth_header("pm", "bench-secret")
    results: dict[str, object] = {
        "gunicorn": f"{args.worker_class}, {args.workers} workers x {args.threads} threads, both",
        "connections": {"single": args.connections, "batch": args.batch_connections},
        "seconds": args.seconds,
        "rounds": args.rounds,
        "batch_bytes": len(batch),
        "batch_hygiene_share": args.hygiene_share,
    }
    with RedisServer() as server:
        env = {
            "REDIS_URL": server.url,
            "SYNCWORKER_SOURCES": "sendgrid,postmark",
            "SYNCWORKER_SENDGRID_PUBLIC_KEY": public_key,
            "SYNCWORKER_POSTMARK_USERNAME": "pm",
            "SYNCWORKER_POSTMARK_PASSWORD": "bench-secret",
            "LOG_LEVEL": "WARNING",
        }
        ours_port, bare_port = free_port(), free_port()
        wc = args.worker_class
        ours = gunicorn("app:app", ours_port, args.workers, args.threads, env, wc)
        bare = gunicorn("bench.bare_app:app", bare_port, args.workers, args.threads, {}, wc)
        conn = redis.Redis.from_url(server.url)
        redis_pid = [server.process.pid] if server.process else []
        try:
            # unmeasured warm-up of both apps: connection pools, scripts, first imports
            for port in (ours_port, bare_port):
                for path, body, headers in (
                    ("sendgrid", batch, sign_sendgrid(batch, private_key)),
                    ("postmark", single, auth),
                ):
                    url = f"http://127.0.0.1:{port}/webhooks/{path}"
                    wrk_post(url, body, headers, 5, args.connections)
            samples: dict[tuple[str, str], list[dict[str, float]]] = {}
            cases = [c for c in ("batch", "single") if args.only in (None, c)]
            apps = [("syncworker", ours_port), ("bare_flask", bare_port)]
            for round_no in range(args.rounds):
                # the apps alternate so that drift in machine load hits both alike, and which one
                # goes first alternates, so that neither always follows the other's leftovers
                for name, port in apps if round_no % 2 == 0 else apps[::-1]:
                    for case in cases:
                        if case == "batch":
                            # signed each round: the timestamp stays inside the tolerance
                            path, body, headers = (
                                "sendgrid",
                                batch,
                                sign_sendgrid(batch, private_key),
                            )
                            connections = args.batch_connections
                        else:
                            path, body, headers = "postmark", single, auth
                            connections = args.connections
                        url = f"http://127.0.0.1:{port}/webhooks/{path}"
                        app_pids = [(ours if name == "syncworker" else bare).pid]
                        # a round starts once the previous one's leftover requests are done
                        wait_idle([ours.pid, bare.pid, *redis_pid])
                        before = process_cpu_seconds(app_pids), process_cpu_seconds(redis_pid)
                        run = wrk_post(url, body, headers, args.seconds, connections)
                        app_cpu = process_cpu_seconds(app_pids) - before[0]
                        redis_cpu = process_cpu_seconds(redis_pid) - before[1]
                        run["app_cpu_us"] = app_cpu / run["requests"] * 1e6
                        run["redis_cpu_us"] = redis_cpu / run["requests"] * 1e6
                        samples.setdefault((name, case), []).append(run)
            runs = {key: median_run(values) for key, values in samples.items()}
            jobs = conn.llen(f"rq:queue:{INGEST}")
        finally:
            stop(ours)
            stop(bare)
            conn.close()
    answered = 0
    if ("syncworker", "batch") in runs:
        ours_b, bare_b = runs["syncworker", "batch"], runs["bare_flask", "batch"]
        per_s = {
            n: [v["requests_per_s"] for v in samples[n, "batch"]]
            for n in ("syncworker", "bare_flask")
        }
        results["sendgrid_batch_1000"] = {
            "events_per_s": spread(per_s["syncworker"], 1000),
            "bare_parse_events_per_s": spread(per_s["bare_flask"], 1000),
            **paired_ratios(samples["syncworker", "batch"], samples["bare_flask", "batch"]),
            "target_ratio": 0.10,
            "non_2xx": ours_b["non_2xx"],
            "socket_errors": ours_b["socket_errors"] + bare_b["socket_errors"],
            **cpu_figures(ours_b, bare_b, per=1000),
        }
        answered += int(ours_b["requests"] - ours_b["non_2xx"])
    if ("syncworker", "single") in runs:
        ours_s, bare_s = runs["syncworker", "single"], runs["bare_flask", "single"]
        per_s = {
            n: [v["requests_per_s"] for v in samples[n, "single"]]
            for n in ("syncworker", "bare_flask")
        }
        results["postmark_single"] = {
            "requests_per_s": spread(per_s["syncworker"]),
            "bare_flask_requests_per_s": spread(per_s["bare_flask"]),
            **paired_ratios(samples["syncworker", "single"], samples["bare_flask", "single"]),
            "target_ratio": 0.5,
            "non_2xx": ours_s["non_2xx"],
            "socket_errors": ours_s["socket_errors"] + bare_s["socket_errors"],
            **cpu_figures(ours_s, bare_s),
        }
        answered += int(ours_s["requests"] - ours_s["non_2xx"])
    # every 2xx was a job queued (a few more: requests in flight when wrk stopped)
    results["ingest_jobs_queued"] = jobs
    results["requests_answered_2xx"] = answered
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
