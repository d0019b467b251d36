"""gunicorn settings for the web process: `gunicorn --config python:syncworker.gunicorn_config`."""

from __future__ import annotations

import multiprocessing
import os

bind = os.environ.get("SYNCWORKER_BIND") or f"0.0.0.0:{os.environ.get('PORT', '8000')}"
# Threaded workers: requests of one process that arrive together share one Redis write (the
# intake's group commit), and ESPs that keep connections alive are served on them.
worker_class = "gthread"
workers = int(os.environ.get("WEB_CONCURRENCY", str(multiprocessing.cpu_count())))
threads = int(os.environ.get("WEB_THREADS", "16"))
timeout = 30
# one control socket per host by default; several instances (tests, benchmarks) must not share it
control_socket_disable = True
graceful_timeout = 20
keepalive = 5
# No max_requests: at thousands of webhooks a second it would restart workers every few seconds.
