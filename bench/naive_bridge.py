"""The bridge bench.e2e compares syncworker with: webhooks to HubSpot the way most teams write it.

Flask verifies the request (SendGrid's ECDSA signature, Postmark's basic auth), validates each
event with a marshmallow schema, and enqueues one RQ job per opt-out event (``Queue.enqueue``).
The job makes one HubSpot call for its contact: comms-prefs v4 ``{email}/unsubscribe-all``, the
endpoint syncworker's mappings/hubspot.py calls per contact (SUBSCRIPTION_BATCH=false). On 429 it
sleeps for Retry-After and tries again; other errors fail the job (RQ's failed registry).

    gunicorn --config python:syncworker.gunicorn_config bench.naive_bridge:app
    rq worker --url $REDIS_URL [--worker-class rq.worker.SimpleWorker] naive

Settings (environment): REDIS_URL, NAIVE_HUBSPOT_BASE_URL, NAIVE_HUBSPOT_TOKEN,
NAIVE_SENDGRID_PUBLIC_KEY (base64 DER, as SendGrid shows it), NAIVE_POSTMARK_USERNAME,
NAIVE_POSTMARK_PASSWORD. Job descriptions are fixed text: RQ logs them, and they would otherwise
name the address.
"""

from __future__ import annotations

import base64
import hmac
import os
import time
from typing import Any
from urllib.parse import quote

import requests
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key
from flask import Flask, abort, request
from marshmallow import INCLUDE, Schema, ValidationError, fields
from redis import Redis
from rq import Queue

QUEUE = "naive"
PREFS = "/communication-preferences/v4/statuses"
SENDGRID_OPT_OUT = {"unsubscribe", "group_unsubscribe", "spamreport", "bounce", "dropped"}
POSTMARK_OPT_OUT = {"HardBounce", "SpamComplaint", "Unsubscribe", "ManuallyDeactivated"}

app = Flask(__name__)
_queue: Queue | None = None


def queue() -> Queue:
    global _queue
    if _queue is None:
        _queue = Queue(QUEUE, connection=Redis.from_url(os.environ["REDIS_URL"]))
    return _queue


class SendGridEventSchema(Schema):
    class Meta:
        unknown = INCLUDE

    email = fields.Email(required=True)
    event = fields.String(required=True)
    timestamp = fields.Integer(required=True)
    sg_event_id = fields.String()


class PostmarkEventSchema(Schema):
    class Meta:
        unknown = INCLUDE

    RecordType = fields.String(required=True)
    Email = fields.Email()
    Recipient = fields.Email()
    Type = fields.String()
    SuppressSending = fields.Boolean()


def opt_out(email: str) -> None:
    """The job: one HubSpot call opting ``email`` out of all email."""
    base = os.environ["NAIVE_HUBSPOT_BASE_URL"]
    token = os.environ["NAIVE_HUBSPOT_TOKEN"]
    url = f"{base}{PREFS}/{quote(email, safe='@')}/unsubscribe-all"
    while True:
        response = requests.post(
            url,
            params={"channel": "EMAIL"},
            headers={"Authorization": f"Bearer {token}"},
            timeout=15,
        )
        if response.status_code == 429:
            time.sleep(float(response.headers.get("Retry-After", "1")))
            continue
        response.raise_for_status()
        return


def _enqueue(email: str) -> None:
    queue().enqueue(opt_out, email, description="hubspot opt-out")


@app.get("/")
def health() -> dict[str, bool]:
    return {"ok": True}


@app.post("/webhooks/sendgrid")
def sendgrid() -> tuple[str, int]:
    body = request.get_data()
    key = load_der_public_key(base64.b64decode(os.environ["NAIVE_SENDGRID_PUBLIC_KEY"]))
    signature = request.headers.get("X-Twilio-Email-Event-Webhook-Signature", "")
    timestamp = request.headers.get("X-Twilio-Email-Event-Webhook-Timestamp", "")
    if not isinstance(key, ec.EllipticCurvePublicKey):
        abort(500)
    try:
        key.verify(
            base64.b64decode(signature), timestamp.encode() + body, ec.ECDSA(hashes.SHA256())
        )
    except (InvalidSignature, ValueError):
        abort(403)
    schema = SendGridEventSchema()
    for raw in request.get_json(force=True):
        try:
            event: dict[str, Any] = schema.load(raw)
        except ValidationError:
            continue
        if event["event"] in SENDGRID_OPT_OUT:
            _enqueue(event["email"])
    return "", 200


@app.post("/webhooks/postmark")
def postmark() -> tuple[str, int]:
    auth = request.authorization
    user = os.environ["NAIVE_POSTMARK_USERNAME"]
    password = os.environ["NAIVE_POSTMARK_PASSWORD"]
    if (
        auth is None
        or not hmac.compare_digest(auth.username or "", user)
        or not hmac.compare_digest(auth.password or "", password)
    ):
        abort(401)
    try:
        event: dict[str, Any] = PostmarkEventSchema().load(request.get_json(force=True))
    except ValidationError:
        abort(400)
    record = event["RecordType"]
    if record == "SubscriptionChange" and event.get("SuppressSending"):
        _enqueue(event["Recipient"])
    elif record in ("Bounce", "SpamComplaint") and event.get("Type") in POSTMARK_OPT_OUT:
        _enqueue(event["Email"])
    return "", 200
