"""The RQ worker classes ``syncworker worker`` runs: RQ's own, made to stop within seconds and
to count failed job runs per queue (``syncworker status``, ``/metrics``).

RQ (2.12) listens for its commands on a pub/sub thread that waits up to 60 s per read, and on
stop joins it with no timeout. After the UNSUBSCRIBE that stop sends, the thread can read the
reply and loop back before the stop flag is set; with no subscription left, redis-py's
``get_message`` then waits its whole timeout (``subscribed_event.wait(60)``), so one stop in
twenty took 60 s. Here the thread waits at most ``PUBSUB_POLL_S`` per read, which bounds that.

A forking worker asked to stop while a job runs lets the job finish for up to its stop grace,
then kills the work-horse: RQ records the job failed and, the ingest job having retries, puts
it back in the scheduled registry, so the next worker runs it again (the ledger dedupes events
by key, so a partly applied job is safe to repeat).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import redis
from rq import Queue, SimpleWorker, Worker
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from rq.scheduler import RQScheduler
from rq.scripts import release_lock
from rq.serializers import JSONSerializer
from rq.utils import utcparse

from syncworker.store.keys import STATS, rq_execution, rq_job, rq_scheduler, rq_worker

if TYPE_CHECKING:
    from syncworker.config import Settings

log = logging.getLogger(__name__)

PUBSUB_POLL_S = 1.0  # longest wait of RQ's command listener per read: bounds a stop
HEARTBEAT_S = 5  # a forking worker's heartbeat while its horse runs a job (RQ's default: 30 s)
WORKER_DEAD_AFTER_S = 20.0  # a busy worker silent this long is dead (4 heartbeats, clock skew)
SCHEDULER_DEAD_AFTER_S = 10.0  # RQ's scheduler beats every second
FAILED = "jobs_failed:"  # + queue short name: a counter in the STATS hash


def short_name(queue: str) -> str:
    """``syncworker-ingest`` -> ``ingest``: how status and metrics name a queue."""
    return queue.removeprefix("syncworker-")


class _QuickStop:
    """Mixin for RQ workers: a command listener that notices a stop within ``PUBSUB_POLL_S``,
    and a count of failed job runs (retried or not) per queue, for status and metrics."""

    if TYPE_CHECKING:  # RQ's BaseWorker provides these
        connection: Any
        pubsub: Any
        pubsub_thread: Any
        pubsub_channel_name: str

        def handle_payload(self, message: Any) -> None: ...

        def _pubsub_exception_handler(self, exc: Exception, pubsub: Any, thread: Any) -> None: ...

    stopping = False  # a stop was asked for (a signal, RQ's shutdown command)

    def handle_warm_shutdown_request(self) -> None:
        self.stopping = True
        super().handle_warm_shutdown_request()  # type: ignore[misc]

    def handle_job_failure(
        self, job: Job, queue: Queue, started_job_registry: Any = None, exc_string: str = ""
    ) -> None:
        """RQ's failure handling (failed registry, or the retry's schedule), then the counter.
        Called for an exception in the job, a timeout and a killed work-horse alike."""
        super().handle_job_failure(  # type: ignore[misc]
            job, queue, started_job_registry=started_job_registry, exc_string=exc_string
        )
        self.connection.hincrby(STATS, FAILED + short_name(queue.name), 1)

    def subscribe(self) -> None:
        """RQ's ``subscribe`` with a short read timeout (RQ hardcodes ``sleep_time=60``)."""
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub_thread = self.pubsub.run_in_thread(
            sleep_time=PUBSUB_POLL_S,
            daemon=True,
            exception_handler=self._pubsub_exception_handler,
        )


class QuickStopSimpleWorker(_QuickStop, SimpleWorker):
    """RQ's ``SimpleWorker`` (jobs run in the worker process) that stops within seconds."""


class QuickStopWorker(_QuickStop, Worker):
    """RQ's forking ``Worker`` that stops within seconds: a job still running ``stop_grace``
    seconds after the stop request is killed and goes back to the queue through its retry."""

    def __init__(self, *args: Any, stop_grace: float = 10.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stop_grace = stop_grace

    def handle_warm_shutdown_request(self) -> None:
        super().handle_warm_shutdown_request()
        horse = self.horse_pid
        if horse:
            timer = threading.Timer(self.stop_grace, self._past_grace, args=(horse,))
            timer.daemon = True
            timer.start()

    def _past_grace(self, horse: int) -> None:
        if self.horse_pid == horse:  # still the same job's horse: not yet reaped
            log.warning(
                "job still running %.0fs after the stop request; killing it, its retry "
                "requeues it job=%s",
                self.stop_grace,
                self.get_current_job_id(),
            )
            self.kill_horse()


# -- noticing dead workers ---------------------------------------------------------------------
#
# RQ finds a job abandoned only when its heartbeat's TTL (job_monitoring_interval + 60 s) has
# lapsed, and only in a maintenance sweep; a dead worker's scheduler lock holds for 61 s. The
# supervisor (``syncworker worker``) checks once a second instead: a worker or scheduler is dead
# when its key has expired, when it ran on this host and its process is gone, or (a forking
# worker, another host) when its heartbeat is older than WORKER_DEAD_AFTER_S.


def heartbeat_stale_s(settings: Settings) -> float | None:
    """How old a busy worker's heartbeat may be; None when it beats only between jobs (RQ's
    ``SimpleWorker`` runs a job in its own process, with no monitor to send heartbeats)."""
    return None if settings.worker_class == "simple" else WORKER_DEAD_AFTER_S


def process_gone(hostname: str, pid: int) -> bool:
    """Whether ``pid`` on ``hostname`` is known to have ended (only this host can be asked)."""
    if hostname != socket.gethostname() or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"  # killed, not yet reaped
    except (OSError, IndexError):
        return False


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _beat_is_old(raw: Any, limit: float | None) -> bool:
    if limit is None or not raw:
        return False
    try:
        return time.time() - utcparse(_text(raw)).timestamp() > limit
    except ValueError:
        return False


def worker_alive(conn: redis.Redis, name: str, stale_s: float | None) -> bool:
    """Whether the RQ worker ``name`` may still be running a job."""
    hostname, pid, beat = conn.hmget(rq_worker(name), ["hostname", "pid", "last_heartbeat"])
    if hostname is None:
        return False  # its key expired: no heartbeat for longer than its TTL
    if process_gone(_text(hostname), int(_text(pid or b"0"))):
        return False
    return not _beat_is_old(beat, stale_s)


def worker_gone(conn: redis.Redis, name: str) -> bool:
    """Whether the RQ worker ``name`` is known to have ended: its process, on this host, is gone.
    A late heartbeat or an expired key says only that it is silent (stopped, starved, or on a
    host that cannot be asked)."""
    hostname, pid = conn.hmget(rq_worker(name), ["hostname", "pid"])
    return hostname is not None and process_gone(_text(hostname), int(_text(pid or b"0")))


def job_gone(conn: redis.Redis, job_id: str) -> bool:
    """Whether a job is known not to be running: ended (or never written), or started on a
    worker known to have ended."""
    status, worker = conn.hmget(rq_job(job_id), ["status", "worker_name"])
    if status is None:
        return True
    if _text(status) == JobStatus.QUEUED.value:
        return False
    if _text(status) != JobStatus.STARTED.value:
        return True
    return not worker or worker_gone(conn, _text(worker))


def job_alive(conn: redis.Redis, job_id: str, stale_s: float | None) -> bool:
    """Whether a job is queued, or started on a worker that is alive."""
    status, worker = conn.hmget(rq_job(job_id), ["status", "worker_name"])
    if status is None:
        return False  # finished (results are not kept) or never written
    if _text(status) == JobStatus.QUEUED.value:
        return True
    if _text(status) != JobStatus.STARTED.value:
        return False
    return bool(worker) and worker_alive(conn, _text(worker), stale_s)


def started_by(conn: redis.Redis, member: str) -> str:
    """The worker running the started-registry entry ``member`` (``job_id:execution_id``).

    From the execution, which the worker writes with the registry entry, before it forks the
    work-horse. The job's own ``worker_name`` is written only once the horse starts: until then
    it is empty (RQ's enqueue writes it so), which once made a job that was just starting look
    abandoned by a dead worker, on a loaded machine where the fork takes a while. RQ then failed
    the job while its horse went on to run it, and a deliver job's slot was freed under it, so
    a second job sent to the same destination at the same time."""
    worker = conn.hget(rq_execution(member), "worker_name")
    if not worker:
        worker = conn.hget(rq_job(member.split(":", 1)[0]), "worker_name")
    return _text(worker) if worker else ""


def rescue_abandoned(
    conn: redis.Redis,
    queues: Iterable[str],
    stale_s: float | None,
    busy: Callable[[str], bool] | None = None,
) -> list[str]:
    """Hand the started jobs of dead workers to RQ's own abandoned-job handling (retry or the
    failed registry) now, rather than once their heartbeat TTL lapses; return their ids.

    A worker that only looks dead (its heartbeat late, its process not known to be gone) keeps
    a job for which ``busy(job_id)`` holds: a deliver job whose request may still be out."""
    rescued: list[str] = []
    for name in queues:
        registry = StartedJobRegistry(queue=Queue(name, connection=conn, serializer=JSONSerializer))
        dead = []
        for entry in conn.zrange(registry.key, 0, -1):
            member = _text(entry)
            job_id = member.split(":", 1)[0]
            worker = started_by(conn, member)
            if not worker or worker_alive(conn, worker, stale_s):
                continue
            if busy is not None and not worker_gone(conn, _text(worker)) and busy(job_id):
                continue  # silent, not known to be gone, and its request may still be out
            dead.append(member)
            rescued.append(job_id)
        if dead:
            # marked as expired long ago, so that RQ's sweep takes these entries and no other
            conn.zadd(registry.key, dict.fromkeys(dead, 1), xx=True)
            registry.cleanup(timestamp=1)
            log.warning("abandoned jobs of dead workers rescued queue=%s jobs=%s", name, dead)
    return rescued


class Scheduling:
    """RQ's scheduler step (due retries back to their queue), run by the supervisor each second
    whenever no live scheduler holds a queue's lock; a lock held by a dead one is freed first."""

    def __init__(self, conn: redis.Redis, queues: Iterable[str]) -> None:
        self.conn = conn
        self.queues = list(queues)
        self.scheduler = RQScheduler(self.queues, connection=conn, serializer=JSONSerializer)

    def step(self) -> None:
        for name in self.queues:
            self._free_if_dead(RQScheduler.get_locking_key(name))
        if self.scheduler.acquire_locks():  # type: ignore[no-untyped-call]  # RQ's, untyped
            self.scheduler.register_birth()  # its hash and heartbeat, so others see it alive
            self.scheduler.enqueue_scheduled_jobs()  # type: ignore[no-untyped-call]

    def _free_if_dead(self, key: str) -> None:
        holder = self.conn.get(key)
        if holder is None or _text(holder) == self.scheduler.name:
            return
        hostname, pid, beat = self.conn.hmget(
            rq_scheduler(_text(holder)), ["hostname", "pid", "last_heartbeat"]
        )
        if hostname is None and self.conn.pttl(key) > (self.scheduler.interval + 55) * 1000:
            return  # acquired in the last seconds: its hash is written once its process starts
        dead = (
            hostname is None
            or process_gone(_text(hostname), int(_text(pid or b"0")))
            or _beat_is_old(beat, SCHEDULER_DEAD_AFTER_S)
        )
        if dead and release_lock(self.conn, key, _text(holder)):
            log.warning("scheduler lock of a dead scheduler freed key=%s", key)

    def close(self) -> None:
        self.scheduler.release_locks()  # type: ignore[no-untyped-call]
        self.scheduler.register_death()
