"""Logging set-up and Sentry (addresses scrubbed); the Prometheus exposition of the Redis
counters is syncworker/web/metrics.py."""

from __future__ import annotations

import logging
import sys
from typing import Any

import sentry_sdk
from sentry_sdk._types import AnnotatedValue

from syncworker import __version__
from syncworker.privacy import mask_text, scrub

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class MaskingFormatter(logging.Formatter):
    """Masks every address in the finished line, tracebacks included: our own lines mask what
    they log, but a library's (RQ logs a failed job's exception message and traceback) do not.
    ``inner``: mask what another formatter (e.g. gunicorn's) makes of the record."""

    def __init__(
        self, fmt: str | None = None, datefmt: str | None = None, *, inner: Any = None
    ) -> None:
        super().__init__(fmt, datefmt)
        self.inner: logging.Formatter | None = inner

    def format(self, record: logging.LogRecord) -> str:
        text = self.inner.format(record) if self.inner is not None else super().format(record)
        return mask_text(text)


def setup_logging(level: str = "INFO") -> None:
    """Add a stderr handler to the root logger, only if it has none."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(MaskingFormatter(LOG_FORMAT))
        root.addHandler(handler)
    root.setLevel(level)


def before_send(event: Any, hint: Any) -> Any:
    """Drop request bodies, cookies and local variables; mask every address left anywhere.

    ``scrub`` walks the whole event, keys included: exception values, the message and log entry
    (its params too), breadcrumbs, ``extra`` (RQ's job arguments), ``contexts``, tags, the
    transaction name, request URLs and span descriptions (Redis keys hold addresses). The
    release (``syncworker@0.1.0`` reads as an address at a numeric domain) is kept."""
    request = event.get("request")
    if isinstance(request, dict):
        for key in ("data", "cookies", "query_string"):
            request.pop(key, None)
        headers = request.get("headers")
        if isinstance(headers, dict):
            for name in list(headers):
                if name.lower() in ("authorization", "cookie", "x-api-key"):
                    headers[name] = "[Filtered]"
    for exc in (event.get("exception") or {}).get("values") or []:
        for frame in (exc.get("stacktrace") or {}).get("frames") or []:
            frame.pop("vars", None)
    scrubbed = scrub(event, _scrub_other)
    if isinstance(event.get("release"), str):  # ours (package@version), never an address
        scrubbed["release"] = event["release"]
    return scrubbed


def _scrub_other(value: Any) -> Any:
    """Sentry's own placeholders (``AnnotatedValue``: "removed", "[Filtered]") stay what they are;
    any other object is sent as its masked ``repr``."""
    if isinstance(value, AnnotatedValue):
        return AnnotatedValue(scrub(value.value, _scrub_other), value.metadata)
    return mask_text(repr(value))


def setup_sentry(dsn: str, *, transport: Any = None, release: str | None = None) -> bool:
    """Start sentry-sdk with Flask and RQ integrations and no PII, if a DSN is configured.
    ``release`` defaults to ``syncworker@<version>``, Sentry's package@version convention."""
    if not dsn:
        return False
    from sentry_sdk.integrations.flask import FlaskIntegration
    from sentry_sdk.integrations.rq import RqIntegration

    options: dict[str, Any] = {}
    if transport is not None:
        options["transport"] = transport
    sentry_sdk.init(
        dsn=dsn,
        integrations=[FlaskIntegration(), RqIntegration()],
        # the structured successor of send_default_pii=False: no user info, bodies, cookies,
        # query strings or frame variables (they would carry addresses)
        data_collection={
            "user_info": False,
            "http_bodies": [],
            "cookies": {"mode": "off"},
            "url_query_params": {"mode": "off"},
            "stack_frame_variables": False,
            "queues": False,
        },
        include_local_variables=False,
        max_request_body_size="never",
        before_send=before_send,
        before_send_transaction=before_send,
        release=release if release is not None else f"syncworker@{__version__}",
        **options,
    )
    return True
