"""gunicorn settings for the web process: `gunicorn --config python:syncworker.gunicorn_config`."""

from __future__ import annotations

import logging
import multiprocessing
import os
from typing import Any

from gunicorn.glogging import Logger  # type: ignore[import-untyped]

from syncworker.observability import MaskingFormatter

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


class MaskingLogger(Logger):  # type: ignore[misc]
    """gunicorn's own log lines, masked like ours: at DEBUG it logs each request's path, and an
    access log would too (``/v1/contacts/<address>``)."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                inner = handler.formatter or logging.Formatter()
                if not isinstance(inner, MaskingFormatter):
                    handler.setFormatter(MaskingFormatter(inner=inner))


logger_class = MaskingLogger
