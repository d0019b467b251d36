"""create_app(): the Flask app — webhook intake, the JSON API, probes, JSON error handlers."""

from __future__ import annotations

import logging
import os

import redis
import sentry_sdk
from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from syncworker.bootstrap import APP_STATE, AppState, Runtime, load_settings
from syncworker.config import Settings
from syncworker.errors import IntakeError
from syncworker.intake.registry import ESP_PARSERS
from syncworker.observability import setup_logging, setup_sentry
from syncworker.queue.enqueue import Enqueuer
from syncworker.store.connections import connect

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> Flask:
    if settings is None:
        settings = load_settings()
        setup_logging(os.environ.get("LOG_LEVEL", "INFO"))
        setup_sentry(settings.sentry_dsn)
    if not settings.redis_url:
        from syncworker.errors import ConfigError

        raise ConfigError(["REDIS_URL is required (or use `syncworker run`, which embeds Redis)"])
    conn = connect(settings.redis_url, settings.redis_timeout_s)
    runtime = Runtime.build(settings, conn)
    state = AppState(settings=settings, runtime=runtime, enqueuer=Enqueuer(conn))
    for name, source in settings.sources.items():
        state.parsers[name] = ESP_PARSERS[source.esp](source)

    here = os.path.dirname(os.path.abspath(__file__))
    # explicit paths: Flask's own discovery fails for some editable installs
    app = Flask("syncworker", root_path=here, instance_path=os.path.join(here, "instance"))
    app.extensions[APP_STATE] = state
    app.json.sort_keys = False  # type: ignore[attr-defined]

    from syncworker.intake.routes import bp as intake_bp
    from syncworker.web.api import bp as api_bp

    app.register_blueprint(intake_bp)
    app.register_blueprint(api_bp)

    @app.errorhandler(IntakeError)
    def intake_error(exc: IntakeError) -> tuple[Response, int, dict[str, str]]:
        log.info("rejected status=%d error=%s", exc.status, exc.error)
        headers = {"Retry-After": str(settings.intake_retry_after_s)} if exc.status == 503 else {}
        return jsonify(error=exc.error, detail=exc.detail), exc.status, headers

    # any Redis trouble (down, hung, out of memory, read-only replica) is ours and passing: 503,
    # so the ESP retries; never a 500 that some ESPs take as final
    @app.errorhandler(redis.RedisError)
    def redis_down(exc: redis.RedisError) -> tuple[Response, int, dict[str, str]]:
        log.error("redis unavailable error=%s", type(exc).__name__)
        retry = str(settings.intake_retry_after_s)
        body = jsonify(error="unavailable", detail="the queue is unreachable; retry later")
        return body, 503, {"Retry-After": retry}

    # the last net: an unexpected error anywhere in a request is ours, so 503 (the ESP retries),
    # never a 500; Sentry sees it (a handled error is not reported by its Flask integration)
    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> tuple[Response, int, dict[str, str]]:
        if isinstance(exc, HTTPException):
            return http_error(exc) + ({},)
        log.error("unexpected error=%s", type(exc).__name__)
        sentry_sdk.capture_exception(exc)
        retry = str(settings.intake_retry_after_s)
        body = jsonify(error="unavailable", detail="an unexpected error; retry later")
        return body, 503, {"Retry-After": retry}

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Response, int]:
        code = exc.code or 500
        name = (exc.name or "error").lower().replace(" ", "_")
        return jsonify(error=name, detail=exc.description), code

    return app
