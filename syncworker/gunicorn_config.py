"""gunicorn settings for the web process: `gunicorn --config python:syncworker.gunicorn_config`."""

from __future__ import annotations

import multiprocessing
import os

bind = os.environ.get("SYNCWORKER_BIND") or f"0.0.0.0:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", str(min(8, multiprocessing.cpu_count() * 2 + 1))))
timeout = 30
# one control socket per host by default; several instances (tests, benchmarks) must not share it
control_socket_disable = True
graceful_timeout = 20
keepalive = 5
# ESPs retry on failure; a worker that died mid-request is covered by that retry.
max_requests = 20000
max_requests_jitter = 2000
