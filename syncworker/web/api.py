"""Token-protected JSON API (/v1: contact lookup, manual suppress/unsuppress, stats) and probes."""

from __future__ import annotations

import hmac
from typing import Any

from flask import Blueprint, Response, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from werkzeug.exceptions import BadRequest, NotFound, Unauthorized

from syncworker.bootstrap import app_state
from syncworker.delivery import schedule
from syncworker.events import address_problem, normalize_email
from syncworker.store.stats import overview
from syncworker.web.metrics import RedisStatsCollector

bp = Blueprint("api", __name__)


@bp.before_request
def require_token() -> None:
    if not request.path.startswith("/v1/"):
        return
    settings = app_state().settings
    if not settings.api_token:
        raise Unauthorized("the API is off: set SYNCWORKER_API_TOKEN")
    # while the token rotates, SYNCWORKER_API_TOKEN_PREVIOUS is accepted too
    tokens = [t for t in (settings.api_token, settings.api_token_previous) if t]
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    ok = False
    for token in tokens:  # no early exit: every configured token is compared
        ok |= hmac.compare_digest(given.encode(), token.encode())
    if scheme.lower() != "bearer" or not ok:
        raise Unauthorized("a valid bearer token is required")


@bp.get("/v1/contacts/<path:email>")
def get_contact(email: str) -> Response:
    view = app_state().runtime.ledger.view(email)
    if view is None:
        raise NotFound("the ledger has no record of this address")
    return jsonify(view.as_json())


def _manual(email: str, suppress: bool) -> Response:
    state = app_state()
    body: Any = request.get_json(silent=True) or {}
    if not isinstance(body, dict) or not isinstance(body.get("reason", ""), str):
        raise BadRequest("body must be a JSON object with a string `reason`")
    if address_problem(normalize_email(email)) is not None:
        raise BadRequest("not an email address")
    ledger = state.runtime.ledger
    reason = body.get("reason", "") or ("api suppress" if suppress else "api unsuppress")
    change = ledger.suppress if suppress else ledger.unsuppress
    result = change(normalize_email(email), reason, source="api")
    schedule.wake(state.runtime, result.marked)
    view = ledger.view(email)
    if view is None:  # erased meanwhile
        raise NotFound("the ledger has no record of this address")
    return jsonify(view.as_json())


@bp.post("/v1/contacts/<path:email>/suppress")
def suppress(email: str) -> Response:
    return _manual(email, True)


@bp.post("/v1/contacts/<path:email>/unsuppress")
def unsuppress(email: str) -> Response:
    return _manual(email, False)


@bp.get("/v1/stats")
def stats() -> Response:
    return jsonify(overview(app_state().runtime))


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    state = app_state()
    state.runtime.conn.ping()  # a Redis error becomes a 503 in web.py
    return jsonify(status="ready"), 200


@bp.get("/metrics")
def metrics() -> Response:
    state = app_state()
    registry = CollectorRegistry()
    registry.register(RedisStatsCollector(state.runtime.conn, list(state.runtime.destinations)))
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
