"""Real processes for integration tests: gunicorn serving app:app and `syncworker worker`."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import redis
import requests

from syncworker.devkit.redis_server import free_port
from syncworker.devkit.supervisor import Child
from syncworker.store.keys import INBOX_QUEUED

ROOT = Path(__file__).resolve().parent.parent


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """The test process's environment without any SYNCWORKER_ setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCWORKER_")}
    env.update(extra)
    return env


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Process(Child):
    """A child process run from the repository, its output in ``log``, leading its own group
    (the devkit's :class:`~syncworker.devkit.supervisor.Child`)."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        super().__init__(Path(args[0]).name, args, env=env, log=log, cwd=ROOT)
        self.log_file: Path = log


def start_gunicorn(env: dict[str, str], log: Path, workers: int = 2) -> tuple[Process, str]:
    """gunicorn serving app:app as the Procfile does; returns the process and its base URL."""
    port = free_port()
    env = {**env, "SYNCWORKER_BIND": f"127.0.0.1:{port}", "WEB_CONCURRENCY": str(workers)}
    args = [sys.executable, "-m", "gunicorn", "--config", "python:syncworker.web.gunicorn_config"]
    proc = Process([*args, "app:app"], env, log)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if not proc.alive():
            raise AssertionError(f"gunicorn exited:\n{proc.output()}")
        try:
            return requests.get(url + "/healthz", timeout=0.5).status_code == 200
        except requests.RequestException:
            return False

    wait_until(ready, 30, "gunicorn to answer /healthz")
    return proc, url


def start_worker(env: dict[str, str], log: Path) -> Process:
    """A real `syncworker worker` (its RQ worker processes and the delivery scheduler)."""
    return Process([sys.executable, "-m", "syncworker", "worker"], env, log)


def queued_ingest_job(conn: redis.Redis) -> str:
    """The id of the ingest job queued to read the inbox (one is queued with the first request
    that finds none waiting)."""
    job_id = conn.get(INBOX_QUEUED)
    assert job_id is not None, "no ingest job is queued"
    return job_id.decode() if isinstance(job_id, bytes) else str(job_id)
