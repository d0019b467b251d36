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
import threading
from typing import TYPE_CHECKING, Any

from rq import Queue, SimpleWorker, Worker
from rq.job import Job

from syncworker.queueing import STATS

log = logging.getLogger(__name__)

PUBSUB_POLL_S = 1.0  # longest wait of RQ's command listener per read: bounds a stop
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
        super().handle_warm_shutdown_request()  # type: ignore[no-untyped-call]
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
