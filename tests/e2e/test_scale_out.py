"""Several hosts on one Redis: `syncworker worker` on three "machines", one of them killed mid-load.

Each host is a real ``syncworker worker`` in namespaces of its own: its own hostname (UTS) and its
own pid space (PID, with a fresh /proc), so to syncworker it is another machine: it cannot see the
other hosts' processes, and their workers' pids mean nothing to it. Signed SendGrid webhooks go in
through gunicorn; HubSpot's emulator (rate-limited) is the destination.

What must hold: every event is applied once and every contact delivered once; each host ran jobs;
HubSpot's limit holds across the hosts (no 429, no window over the limit); and when one host's
whole process tree is SIGKILLed while its deliver job has a batch in flight, the other hosts take
its job, flush lock and batch over through its heartbeat's age (its pids being invisible to them)
within seconds, long before any TTL or lease would have freed them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import redis
import requests

from syncworker.delivery.schedule import BATCH_API_CALLS
from syncworker.devkit.emulators.hubspot import HubSpotEmulator
from syncworker.devkit.supervisor import descendants
from syncworker.queue.workers import WORKER_DEAD_AFTER_S
from syncworker.store.keys import INFLIGHT, TAKERS
from tests import replies
from tests.intake.signing import sendgrid_keypair, sign_sendgrid
from tests.processes import Process, clean_env, start_gunicorn, wait_until

pytestmark = pytest.mark.slow

HOSTS = ("host-a", "host-b", "host-c")
RATE = 10  # HubSpot emulator's limit, requests per second
CONFIGURED_RATE = 8  # syncworker's: below the emulator's, as in test_end_to_end
BATCH = 10  # contacts per HubSpot request: many requests, so the limiter paces them
PER_REQUEST = 50  # events per webhook request
BEFORE_KILL = [f"scale{i:04d}@example.com" for i in range(500)]
AFTER_KILL = [f"scale{i:04d}@example.com" for i in range(500, 1000)]
EVERYONE = BEFORE_KILL + AFTER_KILL
LEASE = "600"  # s: a batch in flight is retaken after this; the test must not wait for it
# the dead host's work must be back well before anything but its heartbeat's age could free it:
# its busy workers' keys live 65 s after their last beat, the slot several minutes, the lease ten.
# The supervisors on the other hosts find the heartbeat stale after WORKER_DEAD_AFTER_S, and keep
# a silent taker's slot until its batch's requests must have ended (delivery.batch_bound_s)
HTTP_TIMEOUT_S = 6
RATE_WAIT_CAP_S = 1
BATCH_BOUND_S = BATCH_API_CALLS * (2 * RATE_WAIT_CAP_S + HTTP_TIMEOUT_S)
TAKEOVER_S = max(WORKER_DEAD_AFTER_S, BATCH_BOUND_S) + 25

# Sets the namespace's hostname, then becomes `syncworker worker` (the namespace's init: killing
# it kills every process in the namespace, as a machine's power cut would)
HOST_INIT = (
    "import os, socket, sys; socket.sethostname(sys.argv[1]); "
    "os.execv(sys.executable, [sys.executable, '-m', 'syncworker', 'worker'])"
)


def unshare() -> list[str]:
    """New UTS, PID and mount namespaces (/proc mounted afresh for the PID namespace); as another
    user than root, in a user namespace of its own, mapped to root inside (then unprivileged)."""
    user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    return ["unshare", *user, "--uts", "--pid", "--mount-proc", "--fork", "--kill-child"]


class Host:
    """A `syncworker worker` on a machine of its own (see the module's docstring)."""

    def __init__(self, name: str, env: dict[str, str], log: Path) -> None:
        self.name = name
        self.process = Process([*unshare(), sys.executable, "-c", HOST_INIT, name], env, log)
        found: list[int] = []

        def started() -> bool:
            if not self.process.alive():
                raise AssertionError(f"{name} exited:\n{self.process.output()}")
            found[:] = descendants(self.process.proc.pid)[:1]
            return bool(found)

        wait_until(started, 10, f"{name}'s namespace")
        self.init = found[0]  # the namespace's pid 1, as this machine sees it

    def output(self) -> str:
        return self.process.output()

    def power_off(self) -> None:
        """SIGKILL the namespace's init: the kernel kills every process in it; nothing cleans up."""
        os.kill(self.init, signal.SIGKILL)
        self.process.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM to the supervisor (a platform's stop), then wait for the host to wind down."""
        if self.process.alive():
            try:
                os.kill(self.init, signal.SIGTERM)
                self.process.proc.wait(30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        self.process.kill_tree()


@pytest.fixture()
def hubspot() -> Iterator[HubSpotEmulator]:
    with HubSpotEmulator(token="hs") as emulator:
        emulator.seed(*EVERYONE)
        emulator.rate_limit(RATE, 1.0)
        yield emulator


def rq_workers(conn: redis.Redis) -> dict[str, dict[str, str]]:
    """Every registered RQ worker's hash (hostname, pid, queues, job counts), by worker name."""
    found = {}
    for raw in replies.items(conn.smembers("rq:workers")):
        key = raw.decode()
        fields = {k.decode(): v.decode() for k, v in replies.fields(conn.hgetall(key)).items()}
        if fields:
            found[key.removeprefix("rq:worker:")] = fields
    return found


def jobs_by_host(workers: dict[str, dict[str, str]]) -> Counter[tuple[str, str]]:
    """Successful job runs per (hostname, queue)."""
    jobs: Counter[tuple[str, str]] = Counter()
    for w in workers.values():
        queue = w.get("queues", "").removeprefix("syncworker-")
        jobs[(w["hostname"], queue)] += int(w.get("successful_job_count") or 0)
    return jobs


def max_in_window(times: list[float], window: float) -> int:
    """The most requests that arrived within any ``window`` seconds."""
    times = sorted(times)
    most, first = 0, 0
    for last, at in enumerate(times):
        while at - times[first] >= window:
            first += 1
        most = max(most, last - first + 1)
    return most


def test_hosts_share_the_work_hold_the_rate_and_take_over_a_dead_host(
    redis_url: str, redis_conn: redis.Redis, hubspot: HubSpotEmulator, tmp_path: Path
) -> None:
    private_key, public_key = sendgrid_keypair()
    env = clean_env(
        {
            "REDIS_URL": redis_url,
            "LOG_LEVEL": "INFO",
            "SYNCWORKER_API_TOKEN": "api-token",
            "SYNCWORKER_SOURCES": "sendgrid",
            "SYNCWORKER_SENDGRID_PUBLIC_KEY": public_key,
            "SYNCWORKER_DESTINATIONS": "hubspot",
            "SYNCWORKER_HUBSPOT_TOKEN": "hs",
            "SYNCWORKER_HUBSPOT_BASE_URL": hubspot.url,
            "SYNCWORKER_HUBSPOT_RATE": f"{CONFIGURED_RATE}/1",
            "SYNCWORKER_HUBSPOT_BATCH_SIZE": str(BATCH),
            # a deliver job yields after a second: HubSpot's job moves from host to host all along
            "SYNCWORKER_JOB_BUDGET": "1",
            "SYNCWORKER_LEASE": LEASE,
            "SYNCWORKER_HTTP_TIMEOUT": str(HTTP_TIMEOUT_S),
            "SYNCWORKER_RATE_WAIT_CAP": str(RATE_WAIT_CAP_S),
        }
    )
    web, url = start_gunicorn(env, tmp_path / "web.log")
    hosts: dict[str, Host] = {}
    post = requests.Session()
    try:
        for name in HOSTS:
            hosts[name] = Host(name, env, tmp_path / f"{name}.log")

        def every_host_up() -> bool:
            for host in hosts.values():
                if not host.process.alive():
                    raise AssertionError(f"{host.name} exited:\n{host.output()}")
            seen = Counter(w["hostname"] for w in rq_workers(redis_conn).values())
            return all(seen[name] == 2 for name in HOSTS)  # an ingest and a deliver worker each

        wait_until(every_host_up, 60, "every host's RQ workers", interval=0.2)
        # from syncworker's side these are three machines: none of their pids is this one's
        workers = rq_workers(redis_conn)
        assert {w["hostname"] for w in workers.values()} == set(HOSTS)

        def send(emails: list[str], start: int) -> None:
            """SendGrid's webhook, PER_REQUEST unsubscribes a request, each request twice (as
            SendGrid redelivers): every event must be applied once all the same."""
            for i in range(0, len(emails), PER_REQUEST):
                events = [
                    {"email": e, "timestamp": 1_790_000_000 + start + i + n,
                     "event": "unsubscribe", "sg_event_id": f"ev-{e}",
                     "sg_message_id": f"msg-{e}"}
                    for n, e in enumerate(emails[i : i + PER_REQUEST])
                ]  # fmt: skip
                body = orjson.dumps(events)
                for _ in range(2):
                    answer = post.post(
                        f"{url}/webhooks/sendgrid",
                        data=body,
                        headers=sign_sendgrid(body, private_key),
                    )
                    assert answer.status_code == 200, answer.text

        send(BEFORE_KILL, 0)
        wait_until(lambda: len(hubspot.opted_out) >= 200, 60, "deliveries under way", 0.1)

        # hold the next HubSpot request: the host whose deliver job sent it dies with it in flight
        hubspot.slow_next(1, 3600)
        wait_until(lambda: hubspot.slow_pending == 0, 30, "a batch held in flight", 0.02)
        # the deliver job holding HubSpot's one slot (a slot each; one here: no spare processes)
        (holder,) = replies.items(redis_conn.hkeys(TAKERS + "hubspot"))
        dead_worker = replies.optional(redis_conn.hget(f"rq:job:{holder.decode()}", "worker_name"))
        assert dead_worker is not None
        dead_key = f"rq:worker:{dead_worker.decode()}"
        victim = replies.text(redis_conn.hget(dead_key, "hostname") or b"")
        held = {m.decode() for m in replies.items(redis_conn.zrange(INFLIGHT + "hubspot", 0, -1))}
        assert victim in HOSTS and len(held) == BATCH
        ran_before = jobs_by_host(rq_workers(redis_conn))

        hosts[victim].power_off()
        killed = time.monotonic()
        survivors = [h for h in HOSTS if h != victim]
        send(AFTER_KILL, len(BEFORE_KILL))  # the load goes on: the other hosts take it

        # its flush lock and batch in flight are back in the other hosts' hands within seconds
        wait_until(
            lambda: holder not in redis_conn.hkeys(TAKERS + "hubspot"),
            TAKEOVER_S,
            "the takeover",
            0.1,
        )
        took_over = time.monotonic() - killed
        # ... while the dead workers' keys still stood (their TTL had not lapsed): only the age
        # of their heartbeats, on another hostname, told the other hosts they were dead
        assert redis_conn.exists(dead_key), "found dead only once its key expired"
        assert redis_conn.hget(dead_key, "hostname") == victim.encode()
        print(f"{victim} killed; its slot and batch taken over {took_over:.1f}s on")

        def all_delivered() -> bool:
            for name in survivors:
                if not hosts[name].process.alive():
                    raise AssertionError(f"{name} exited:\n{hosts[name].output()}")
            return (
                hubspot.opted_out == set(EVERYONE)  # the held batch too, sent again
                and redis_conn.zcard("sw:pending:hubspot") == 0
                and redis_conn.zcard(INFLIGHT + "hubspot") == 0
            )

        wait_until(all_delivered, 120, "every contact delivered", 0.2)
        ran_after = jobs_by_host(rq_workers(redis_conn))
        logs = {name: hosts[name].output() for name in survivors}
        # the ledger as the web API shows it, address by address
        api = {"Authorization": "Bearer api-token"}
        answers = {e: post.get(f"{url}/v1/contacts/{e}", headers=api) for e in EVERYONE}
    finally:
        post.close()
        for host in hosts.values():
            host.stop()
        web.stop()

    # every host ran jobs: deliver jobs on each of them, ingest jobs on more than one (the dead
    # host's count is as it stood when it died, plus the deliver job it died in)
    jobs = ran_before + Counter({k: v for k, v in ran_after.items() if k[0] != victim})
    jobs[(victim, "deliver")] += 1
    print("successful jobs by host and queue:", dict(sorted(jobs.items())))
    for name in HOSTS:
        assert jobs[(name, "deliver")] > 0, f"{name} ran no deliver job"
    assert sum(1 for name in HOSTS if jobs[(name, "ingest")] > 0) >= 2
    # a live host rescued the dead one's deliver job, freed its flush lock and took its batch
    job = holder.decode()
    rescued = f"abandoned jobs of dead workers rescued queue=syncworker-deliver jobs=['{job}:"
    released = f"slot of a dead deliver job released dest=hubspot job={job} "
    assert any(rescued in log for log in logs.values()), logs
    assert any(released + f"in_flight_reclaimed={BATCH}" in log for log in logs.values()), logs

    # HubSpot's limit held across the hosts: no 429, no 1 s window over the limit
    calls = hubspot.calls("/communication-preferences/v4/statuses/batch/unsubscribe-all")
    assert hubspot.throttled == 0 and all(c.status == 200 for c in calls)
    busiest = max_in_window([c.at for c in calls], 1.0)
    print(f"HubSpot requests: {len(calls)}; most in any 1 s window: {busiest} (limit {RATE})")
    assert busiest <= RATE

    # every contact delivered once: the held request never got an answer, so its batch was sent
    # again by another host; no other contact was sent twice
    sent = Counter(e for c in calls for e in c.json["inputs"])
    assert set(sent) == set(EVERYONE)
    assert [e for e, n in sent.items() if n > 1] == []

    # every event applied once (each was sent twice), and HubSpot's answer recorded
    for email, answer in answers.items():
        assert answer.status_code == 200, (email, answer.status_code, answer.text)
        view = answer.json()
        assert view["email"] == email
        assert [h["kind"] for h in view["history"]] == ["unsubscribe"], view
        assert view["destinations"]["hubspot"]["status"] in ("applied", "already"), view
