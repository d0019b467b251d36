"""POST /webhooks/<source>: size limit -> verify on raw bytes -> parse -> one RQ job -> 200."""

from __future__ import annotations

import logging

import orjson
import redis
import sentry_sdk
from flask import Blueprint, Response, jsonify, request

from syncworker.bootstrap import app_state
from syncworker.errors import (
    IntakeError,
    PayloadInvalid,
    PayloadTooLarge,
    SignatureInvalid,
    Unavailable,
    UnknownSource,
)
from syncworker.intake.auth import nonces
from syncworker.intake.contract import OTHER_CODE, InboundRequest, ParseResult, admit

log = logging.getLogger(__name__)

#: how a body that made a parser raise unexpectedly is answered and kept (a bug to fix, then replay)
PARSER_ERROR = "unexpected error"
#: how a request whose signature check raised unexpectedly is answered (503: the ESP retries)
VERIFIER_ERROR = "unexpected error"

bp = Blueprint("intake", __name__, url_prefix="/webhooks")


@bp.route("/<source>", methods=["GET", "HEAD"])
def probe(source: str) -> tuple[str, int]:
    """ESPs check that a webhook URL answers before they save it (Mandrill with HEAD, before it
    issues the key that the source's configuration needs; Unisender Go with GET). Any name
    answers, so a probe neither depends on the configuration nor reveals it."""
    return "", 200


@bp.post("/<source>")
def receive(source: str) -> tuple[Response, int]:
    state = app_state()
    parser = state.parsers.get(source)
    if parser is None:
        raise UnknownSource(f"no source named {source!r} is configured")
    limit = state.settings.max_body_bytes
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge(f"body is larger than {limit} bytes")
    body = request.stream.read(limit + 1)
    if len(body) > limit:
        raise PayloadTooLarge(f"body is larger than {limit} bytes")
    url = ""
    if parser.signs_url:
        public = state.settings.public_url
        url = public.rstrip("/") + request.full_path.rstrip("?") if public else request.url
    inbound = InboundRequest(body, request.headers, url, request.remote_addr)
    try:
        parser.verify(inbound)
        nonce = parser.replay_nonce(inbound)
    except (IntakeError, redis.RedisError):
        raise
    except Exception as exc:
        # A verifier bug is ours: 503, so the ESP sends the request again once it is mended. An
        # unverified body is not kept. Only the exception's type is named (see below).
        error = type(exc).__name__
        log.error("verifier failed source=%s error=%s", source, error)
        sentry_sdk.capture_exception(exc)
        raise Unavailable(f"{VERIFIER_ERROR} in the {parser.esp} verifier ({error})") from None
    # claimed before anything is written (a replayed signature cannot even fill the quarantine),
    # once per ESP: two sources may share a signing key; a Redis error here is a 503 like any other
    if nonce is not None and not nonces.claim(
        state.runtime.conn, parser.esp, nonce, parser.nonce_ttl_s
    ):
        raise SignatureInvalid("this signature was already used: a request is accepted once")
    try:
        result: ParseResult = admit(parser.parse_request(inbound))
    except PayloadInvalid as exc:
        # verified but unreadable: keep it for inspection, then tell the ESP
        state.quarantine_body(source, parser.esp, str(exc.detail), body)
        raise
    except IntakeError:
        raise
    except Exception as exc:
        # A parser bug must not answer 500: the ESP would send the body again and again, and
        # what it holds is kept here for a fixed parser to replay. Only the exception's type
        # is named: its message may quote an address (Sentry masks them in what it is sent).
        error = type(exc).__name__
        log.error("parser failed source=%s error=%s", source, error)
        sentry_sdk.capture_exception(exc)
        state.quarantine_body(source, parser.esp, f"{PARSER_ERROR}: {error}", body)
        detail = f"{PARSER_ERROR} in the {parser.esp} parser ({error}); the body is kept"
        raise PayloadInvalid(detail) from None
    if result.followup is not None:
        log.info("handshake source=%s %s", source, result.followup())
    if result.response is not None:
        return jsonify(result.response), 200
    events, quarantined = result.events, result.quarantined
    ignored = sum(result.ignored.values())
    counters: dict[str, int] = {}
    known = parser.known_codes
    for code, n in result.ignored.items():
        # an unknown code is the ESP's free text (it could be an address): one label for all
        name = f"in:{source}:{code if code in known else OTHER_CODE}"
        counters[name] = counters.get(name, 0) + n
    for event in events:
        name = f"in:{source}:{event.kind.value}"
        counters[name] = counters.get(name, 0) + 1
    if quarantined:
        counters[f"in:{source}:quarantined"] = len(quarantined)
    try:
        job_id = state.enqueuer.ingest_events(source, parser.esp, events, quarantined, counters)
    except BaseException:
        if nonce is not None:  # not accepted (503): the sender's retry must not be refused
            nonces.release(state.runtime.conn, parser.esp, nonce)
        raise
    if log.isEnabledFor(logging.INFO):
        log.info(
            "accepted source=%s events=%d ignored=%d quarantined=%d job=%s",
            source, len(events), ignored, len(quarantined), job_id,
        )  # fmt: skip
    answer = {"accepted": len(events), "ignored": ignored, "quarantined": len(quarantined)}
    return Response(orjson.dumps(answer), content_type="application/json"), 200
