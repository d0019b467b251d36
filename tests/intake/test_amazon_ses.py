"""Amazon SES via SNS: signed SNS messages, verified against a certificate served on loopback,
fan out to one hygiene event per recipient; the subscription handshake goes through the route."""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from typing import Any

import orjson
import pytest
import redis

from syncworker.bootstrap import load_settings
from syncworker.config import SourceConfig
from syncworker.devkit.redis_server import free_port
from syncworker.errors import ConfigError, PayloadInvalid, SignatureInvalid, Unavailable
from syncworker.events import Kind
from syncworker.intake.auth import sns
from syncworker.intake.contract import iso_seconds
from syncworker.intake.esps.amazon_ses import AmazonSesParser
from syncworker.queue import inbox
from syncworker.store.keys import INBOX, QUARANTINE
from syncworker.web.app import create_app
from tests.conftest import SettingsFactory
from tests.intake.signers.amazon_ses import (
    SnsSigner,
    certificate,
    notification,
    pem,
    sns_server,
    sns_signer,
    sns_time,
)
from tests.intake.signing import headers_of, payload, request
from tests.replies import stream_entries

TOPIC = "arn:aws:sns:us-east-1:123456789012:ses-events"
DEFAULTS = AmazonSesParser.optional_settings


@pytest.fixture()
def signer() -> SnsSigner:
    return sns_signer(TOPIC)


def make_parser(**values: str) -> AmazonSesParser:
    settings = {"TOPIC_ARNS": TOPIC, **sns_server().settings(), **values}
    return AmazonSesParser(SourceConfig(name="amazon_ses", esp="amazon_ses", values=settings))


def stored(case: str, **changes: Any) -> dict[str, Any]:
    """A stored SNS message for this topic, timestamped now, with ``changes`` applied."""
    doc: dict[str, Any] = orjson.loads(payload("amazon_ses", case))
    for name in ("Signature", "SignatureVersion", "SigningCertURL"):
        doc.pop(name)
    return {**doc, "TopicArn": TOPIC, "Timestamp": sns_time(), **changes}


def with_message(case: str, **changes: Any) -> dict[str, Any]:
    """A stored notification whose Message object has top-level ``changes`` applied."""
    doc = stored(case)
    message = orjson.loads(doc["Message"])
    return {**doc, "Message": orjson.dumps({**message, **changes}).decode()}


def verified(parser: AmazonSesParser, signer: SnsSigner, doc: dict[str, Any]) -> bytes:
    req = signer.request(doc)
    parser.verify(req)
    return req.body


def refused(parser: AmazonSesParser, body: bytes) -> str:
    with pytest.raises(SignatureInvalid) as exc:
        parser.verify(request(body))
    assert exc.value.status == 401
    return str(exc.value.detail)


# -- events ------------------------------------------------------------------------------------


def test_a_bounce_fans_out_to_one_event_per_recipient(signer: SnsSigner) -> None:
    parser = make_parser()
    doc = stored("bounce_permanent")
    result = parser.parse(verified(parser, signer, doc))
    assert [(e.email, e.kind) for e in result.events] == [
        ("jane.doe@example.com", Kind.HARD_BOUNCE),
        ("john@example.com", Kind.HARD_BOUNCE),
    ]
    first = result.events[0]
    assert first.key == f"amazon_ses:{doc['MessageId']}:jane.doe@example.com"
    assert first.message_id == "0100018f6d9e4a2b-3f1c6a55-7e9d-4b1e-9a2c-5d8f0e1b2c3d-000000"
    assert first.occurred_at == iso_seconds("2026-03-02T09:15:03.412Z")
    assert (first.smtp_code, first.reason) == ("5.1.1", "smtp; 550 5.1.1 user unknown")
    # the SNS MessageId keys the events, and each keeps the message with its own recipient
    message = orjson.loads(doc["Message"])
    jane = message["bounce"]["bouncedRecipients"][0]
    narrowed = {**message, "bounce": {**message["bounce"], "bouncedRecipients": [jane]}}
    assert first.raw == {"MessageId": doc["MessageId"], "Message": narrowed}
    assert result.ignored == Counter() and result.quarantined == []


@pytest.mark.parametrize(
    ("case", "kind"),
    [
        ("bounce_transient_event", Kind.SOFT_BOUNCE),  # event publishing: eventType, Subject
        ("bounce_on_account_suppression_list", Kind.HARD_BOUNCE),
        ("complaint", Kind.SPAM_COMPLAINT),
        ("subscription_unsubscribe_all", Kind.UNSUBSCRIBE),
    ],
)
def test_hygiene_events_by_case(signer: SnsSigner, case: str, kind: Kind) -> None:
    parser = make_parser()
    [event] = parser.parse(verified(parser, signer, stored(case))).events
    assert event.kind == kind
    assert (event.source, event.esp) == ("amazon_ses", "amazon_ses")


def test_subscription_event_is_scoped_to_its_contact_list(signer: SnsSigner) -> None:
    parser = make_parser()
    [event] = parser.parse(verified(parser, signer, stored("subscription_unsubscribe_all"))).events
    assert (event.email, event.list_id, event.reason) == (
        "reader@example.com",
        "Newsletter",
        "UnsubscribeHeader",
    )


def test_subscribing_again_to_everything_is_a_resubscribe(signer: SnsSigner) -> None:
    parser = make_parser()
    base = orjson.loads(stored("subscription_unsubscribe_all")["Message"])["subscription"]
    again = {
        **base,
        "newTopicPreferences": {"unsubscribeAll": False},
        "oldTopicPreferences": {"unsubscribeAll": True},
    }
    doc = with_message("subscription_unsubscribe_all", subscription=again)
    [event] = parser.parse(verified(parser, signer, doc)).events
    assert event.kind == Kind.RESUBSCRIBE
    topics_only = {**base, "newTopicPreferences": {"unsubscribeAll": False}}
    doc = with_message("subscription_unsubscribe_all", subscription=topics_only)
    result = parser.parse(verified(parser, signer, doc))
    assert result.events == [] and result.ignored == Counter({"Subscription:topics": 1})


@pytest.mark.parametrize(
    ("case", "ignored"),
    [
        ("delivery", "Delivery"),
        ("bounce_content_rejected", "Bounce:ContentRejected"),  # about the message, not the address
        ("topic_validation", "TopicValidation"),
    ],
)
def test_non_hygiene_notifications_are_counted(signer: SnsSigner, case: str, ignored: str) -> None:
    parser = make_parser()
    result = parser.parse(verified(parser, signer, stored(case)))
    assert result.events == [] and result.quarantined == []
    assert result.ignored == Counter({ignored: 1})


def test_undetermined_bounce_counts_as_soft(signer: SnsSigner) -> None:
    parser = make_parser()
    bounce = orjson.loads(stored("bounce_permanent")["Message"])["bounce"]
    bounce.update(bounceType="Undetermined", bounceSubType="Undetermined")
    doc = with_message("bounce_permanent", bounce=bounce)
    kinds = {e.kind for e in parser.parse(verified(parser, signer, doc)).events}
    assert kinds == {Kind.SOFT_BOUNCE}


def test_not_spam_feedback_is_not_a_complaint(signer: SnsSigner) -> None:
    parser = make_parser()
    complaint = orjson.loads(stored("complaint")["Message"])["complaint"]
    doc = with_message("complaint", complaint={**complaint, "complaintFeedbackType": "not-spam"})
    result = parser.parse(verified(parser, signer, doc))
    assert result.events == [] and result.ignored == Counter({"Complaint:not-spam": 1})


def test_bad_recipients_are_quarantined_and_the_rest_kept(signer: SnsSigner) -> None:
    parser = make_parser()
    doc = stored("invalid_recipients")
    result = parser.parse(verified(parser, signer, doc))
    assert [e.email for e in result.events] == ["gone@example.com"]
    # each bad recipient is kept with its message (narrowed to it), so it can be replayed alone
    message = orjson.loads(doc["Message"])
    assert [q.raw["Message"]["bounce"]["bouncedRecipients"] for q in result.quarantined] == [
        [{"emailAddress": "not an address"}],
        ["gone-too@example.com"],
    ]
    assert {q.raw["MessageId"] for q in result.quarantined} == {doc["MessageId"]}
    assert result.quarantined[0].raw["Message"]["mail"] == message["mail"]


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"notificationType": None}, "eventType/notificationType missing"),
        ({"bounce": {"bounceType": "Permanent", "timestamp": "2026-03-02T09:15:03Z"}}, "invalid"),
        (
            {"bounce": {"bounceType": "Permanent", "bouncedRecipients": [], "timestamp": "x"}},
            "invalid",
        ),
        (
            {
                "bounce": {
                    "bounceType": "Permanent",
                    "bouncedRecipients": [],
                    "timestamp": "2026-03-02",
                }
            },
            "no recipients",
        ),
    ],
)
def test_unusable_notifications_of_a_verified_message_are_quarantined(
    signer: SnsSigner, changes: dict[str, Any], reason: str
) -> None:
    parser = make_parser()
    result = parser.parse(verified(parser, signer, with_message("bounce_permanent", **changes)))
    [item] = result.quarantined
    assert item.reason.startswith(reason) and result.events == []


@pytest.mark.parametrize("message", ["not JSON at all", "[1, 2]", '"a string"'])
def test_a_message_that_is_not_a_json_object_is_payload_invalid(
    signer: SnsSigner, message: str
) -> None:
    parser = make_parser()
    body = verified(parser, signer, notification(message, TOPIC))
    with pytest.raises(PayloadInvalid):
        parser.parse(body)


def test_keys_are_stable_across_redeliveries_and_distinct_per_message(signer: SnsSigner) -> None:
    parser = make_parser()
    doc = stored("complaint")
    first = parser.parse(verified(parser, signer, doc)).events[0].key
    # a redelivery: another Timestamp and signature, the same MessageId
    redelivered = {**doc, "Timestamp": sns_time(time.time() - 20)}
    again = parser.parse(verified(parser, signer, redelivered)).events[0].key
    other = parser.parse(verified(parser, signer, {**doc, "MessageId": "other"})).events[0].key
    assert first == again != other


# -- verification ------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1", "2"])
def test_both_signature_versions_are_accepted(signer: SnsSigner, version: str) -> None:
    """SignatureVersion 1 is SHA1withRSA, 2 is SHA256withRSA."""
    make_parser().verify(signer.request(stored("complaint"), version))


def test_a_signature_version_that_does_not_match_the_hash_is_refused(signer: SnsSigner) -> None:
    signed = signer.sign(stored("complaint"), "1")
    assert "not match" in refused(make_parser(), orjson.dumps({**signed, "SignatureVersion": "2"}))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("Message", '{"notificationType":"Complaint"}'),
        ("MessageId", "another"),
        ("Subject", "changed"),
        ("Subject", None),
        ("Type", "SubscriptionConfirmation"),
    ],
)
def test_any_change_to_a_signed_field_is_refused(
    signer: SnsSigner, field: str, value: str | None
) -> None:
    signed = signer.sign(stored("bounce_transient_event"))  # carries a Subject
    forged = {**signed, field: value}
    if value is None:
        del forged[field]
    refused(make_parser(), orjson.dumps(forged))


def test_unsigned_fields_may_change(signer: SnsSigner) -> None:
    signed = signer.sign(stored("complaint"))
    make_parser().verify(request(orjson.dumps({**signed, "UnsubscribeURL": "https://x.example"})))


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        ({"SignatureVersion": "3"}, "SignatureVersion"),
        ({"Signature": "not base64!"}, "base64"),
        ({"Signature": None}, "Signature missing"),
        ({"Timestamp": "yesterday"}, "ISO 8601"),
        ({"Type": "Banana"}, "Type"),
        ({"Message": {"not": "a string"}}, "Message"),
    ],
)
def test_malformed_messages_are_401(signer: SnsSigner, change: dict[str, Any], detail: str) -> None:
    assert detail in refused(
        make_parser(), orjson.dumps({**signer.sign(stored("complaint")), **change})
    )


@pytest.mark.parametrize("age_s", [7300.0, -400.0])
def test_timestamps_outside_the_window_are_refused(signer: SnsSigner, age_s: float) -> None:
    """SNS signs its Timestamp; it retries for at most an hour, so older is a replay."""
    doc = stored("complaint", Timestamp=sns_time(time.time() - age_s))
    assert "window" in refused(make_parser(), signer.request(doc).body)


def test_max_age_is_configurable(signer: SnsSigner) -> None:
    doc = stored("complaint", Timestamp=sns_time(time.time() - 7300))
    make_parser(MAX_AGE_S="8000").verify(signer.request(doc))


def test_another_topic_is_refused_without_fetching_its_certificate() -> None:
    """Any AWS account can have SNS sign messages for its own topic: the topic is what binds."""
    other = sns_signer("arn:aws:sns:us-east-1:999999999999:someone-else")
    body = other.request(stored("complaint", TopicArn=other.topic)).body
    assert "TopicArn" in refused(make_parser(), body)
    assert sns_server().hits[other.cert_url.removeprefix(sns_server().base)] == 0
    make_parser(TOPIC_ARNS="*").verify(request(body))
    make_parser(TOPIC_ARNS=f"{TOPIC}, {other.topic}").verify(request(body))


def test_previous_topic_is_accepted_during_a_move(signer: SnsSigner) -> None:
    parser = make_parser(
        TOPIC_ARNS="arn:aws:sns:eu-west-1:123456789012:new", TOPIC_ARNS_PREVIOUS=TOPIC
    )
    parser.verify(signer.request(stored("complaint")))


def test_rotated_certificates_are_both_accepted_and_each_fetched_once() -> None:
    old, new = sns_signer(TOPIC), sns_signer(TOPIC)
    parser = make_parser()
    for _ in range(3):
        for signer in (old, new):
            parser.verify(signer.request(stored("complaint")))
    server = sns_server()
    assert [server.hits[s.cert_url.removeprefix(server.base)] for s in (old, new)] == [1, 1]


def test_a_signature_by_another_key_is_refused(signer: SnsSigner) -> None:
    impostor = sns_signer(TOPIC)
    forged = SnsSigner(impostor.key, signer.cert_url, TOPIC)  # claims the genuine certificate
    assert "not match" in refused(make_parser(), forged.request(stored("complaint")).body)


def test_an_expired_certificate_is_refused(signer: SnsSigner) -> None:
    expired = SnsSigner(
        signer.key, sns_server().serve(pem(certificate(signer.key, "old", days=-0.5))), TOPIC
    )
    assert "expired" in refused(make_parser(), expired.request(stored("complaint")).body)


@pytest.mark.parametrize(("status", "body"), [(404, b""), (200, b"not a certificate")])
def test_a_certificate_url_that_serves_no_certificate_is_401(
    signer: SnsSigner, status: int, body: bytes
) -> None:
    server = sns_server()
    url = server.serve(body)
    server.statuses[url.removeprefix(server.base)] = status
    doc = SnsSigner(signer.key, url, TOPIC).request(stored("complaint")).body
    refused(make_parser(), doc)


def test_a_certificate_host_that_fails_is_unavailable_so_sns_retries(signer: SnsSigner) -> None:
    server = sns_server()
    url = server.serve(b"")
    server.statuses[url.removeprefix(server.base)] = 502
    body = SnsSigner(signer.key, url, TOPIC).request(stored("complaint")).body
    with pytest.raises(Unavailable) as exc:
        make_parser().verify(request(body))
    assert exc.value.status == 503
    port = free_port()  # nothing listens there
    down = SnsSigner(signer.key, f"http://127.0.0.1:{port}/certs/x.pem", TOPIC)
    parser = make_parser(CERT_URL_PATTERN=rf"http://127\.0\.0\.1:{port}/certs/x\.pem")
    with pytest.raises(Unavailable):
        parser.verify(down.request(stored("complaint")))


class Clock:
    """A clock the test moves: the parser's view of now, for the failure cache."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def clocked_parser(clock: Clock) -> AmazonSesParser:
    values = {"TOPIC_ARNS": TOPIC, **sns_server().settings()}
    return AmazonSesParser(SourceConfig("amazon_ses", "amazon_ses", values), clock=clock)


@pytest.mark.parametrize(("status", "body"), [(404, b""), (403, b""), (200, b"not a certificate")])
def test_a_certificate_that_can_never_verify_is_401_and_not_fetched_again_for_a_while(
    signer: SnsSigner, status: int, body: bytes
) -> None:
    """A forged message naming an allowed topic and a certificate URL that serves nothing: 401,
    and the same URL again within FAILURE_TTL_S costs no fetch."""
    server = sns_server()
    url = server.serve(body)
    path = url.removeprefix(server.base)
    server.statuses[path] = status
    clock = Clock()
    parser = clocked_parser(clock)
    forged = SnsSigner(signer.key, url, TOPIC)
    for _ in range(3):
        with pytest.raises(SignatureInvalid):
            parser.verify(forged.request(stored("complaint")))
    assert server.hits[path] == 1
    clock.now += sns.FAILURE_TTL_S
    with pytest.raises(SignatureInvalid):
        parser.verify(forged.request(stored("complaint")))
    assert server.hits[path] == 2


@pytest.mark.parametrize("status", [500, 502, 503, 408, 429])
def test_a_failing_certificate_host_is_503_briefly_then_asked_again(
    signer: SnsSigner, status: int
) -> None:
    """The host may serve the certificate on SNS's retry (20 s later by default): 503, cached for
    less than that, then fetched again; once it serves, the message verifies."""
    server = sns_server()
    url = server.serve(pem(certificate(signer.key, "sns.us-east-1.amazonaws.com")))
    path = url.removeprefix(server.base)
    server.statuses[path] = status
    clock = Clock()
    parser = clocked_parser(clock)
    genuine = SnsSigner(signer.key, url, TOPIC)
    for _ in range(3):
        with pytest.raises(Unavailable):
            parser.verify(genuine.request(stored("complaint")))
    assert server.hits[path] == 1
    assert sns.TRANSIENT_FAILURE_TTL_S < 20
    clock.now += sns.TRANSIENT_FAILURE_TTL_S
    del server.statuses[path]
    parser.verify(genuine.request(stored("complaint")))
    parser.verify(genuine.request(stored("complaint")))
    assert server.hits[path] == 2


def test_an_unreachable_certificate_host_is_503_and_not_dialled_again_at_once(
    signer: SnsSigner,
) -> None:
    port = free_port()  # nothing listens there
    url = f"http://127.0.0.1:{port}/certs/x.pem"
    calls: list[str] = []

    def http(target: str) -> tuple[int, bytes]:
        calls.append(target)
        return sns.http_get(target)  # the real GET, counted

    clock = Clock()
    values = {"TOPIC_ARNS": TOPIC, "CERT_URL_PATTERN": rf"http://127\.0\.0\.1:{port}/certs/x\.pem"}
    source = SourceConfig("amazon_ses", "amazon_ses", values)
    parser = AmazonSesParser(source, clock=clock, http=http)
    down = SnsSigner(signer.key, url, TOPIC)
    for _ in range(3):
        with pytest.raises(Unavailable):
            parser.verify(down.request(stored("complaint")))
    assert calls == [url]
    clock.now += sns.TRANSIENT_FAILURE_TTL_S
    with pytest.raises(Unavailable):
        parser.verify(down.request(stored("complaint")))
    assert calls == [url, url]


def test_forged_signatures_over_a_genuine_certificate_fetch_it_once(signer: SnsSigner) -> None:
    """Messages signed by another key but naming the genuine certificate: 401 each time, and
    the (good) certificate is fetched once."""
    server = sns_server()
    fresh = sns_signer(TOPIC)  # a certificate URL no test has fetched yet
    impostor = SnsSigner(signer.key, fresh.cert_url, TOPIC)
    parser = make_parser()
    for _ in range(3):
        assert "not match" in refused(parser, impostor.request(stored("complaint")).body)
    assert server.hits[fresh.cert_url.removeprefix(server.base)] == 1


def test_a_failure_cache_flood_never_evicts_a_good_certificate(signer: SnsSigner) -> None:
    cache = sns.CertificateCache(size=2)
    good = [certificate(signer.key, "good")]
    cache.put("https://good", good, 0.0)
    for n in range(5):
        cache.fail(f"https://bad/{n}", SignatureInvalid("x"), 100.0)
    assert cache.get("https://good", 1.0) == good
    assert cache.failure("https://bad/0", 1.0) is None  # evicted: bounded
    assert cache.failure("https://bad/4", 1.0) is not None
    assert cache.failure("https://bad/4", 100.0) is None  # expired


@pytest.mark.parametrize("said", ["SubscriptionConfirmation", "UnsubscribeConfirmation", "x"])
def test_a_message_type_header_that_disagrees_with_the_signed_type_is_400(
    signer: SnsSigner, said: str
) -> None:
    req = signer.request(stored("complaint"))
    headers = {**headers_of(req), "x-amz-sns-message-type": said}
    with pytest.raises(PayloadInvalid) as exc:
        make_parser().verify(request(req.body, headers))
    assert exc.value.status == 400 and "x-amz-sns-message-type" in str(exc.value.detail)


def test_a_message_type_header_that_agrees_or_is_absent_is_accepted(signer: SnsSigner) -> None:
    req = signer.request(stored("complaint"))
    make_parser().verify(req)
    make_parser().verify(request(req.body))


def test_a_certificate_url_off_the_allow_list_is_never_fetched(signer: SnsSigner) -> None:
    server = sns_server()
    stray = server.base + "/elsewhere/cert.pem"
    server.files["/elsewhere/cert.pem"] = pem(certificate(signer.key, "stray"))
    body = SnsSigner(signer.key, stray, TOPIC).request(stored("complaint")).body
    assert "SigningCertURL" in refused(make_parser(), body)
    assert "SigningCertURL" in refused(
        make_parser(CERT_URL_PATTERN=DEFAULTS["CERT_URL_PATTERN"]), body
    )
    assert server.hits["/elsewhere/cert.pem"] == 0


@pytest.mark.parametrize(
    "url",
    [
        "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-9c6465fa7f48f5cacd23014631ec1136.pem",
        "https://sns.eu-central-1.amazonaws.com/SimpleNotificationService-01d088a6f77103d0fe307c0069e40ed6.pem",
        "https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-3242f4a3a4e1d0f7.pem",
        "https://sns.us-gov-west-1.amazonaws.com/SimpleNotificationService-abc.pem",
    ],
)
def test_default_certificate_pattern_admits_sns_hosts(url: str) -> None:
    assert sns.allowed(re.compile(DEFAULTS["CERT_URL_PATTERN"]), url)


@pytest.mark.parametrize(
    "url",
    [
        "http://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem",
        "https://sns.us-east-1.amazonaws.com.evil.example/SimpleNotificationService-abc.pem",
        "https://sns.us-east-1.amazonaws.com@evil.example/SimpleNotificationService-abc.pem",
        "https://sns.us-east-1.amazonaws.com:8443/SimpleNotificationService-abc.pem",
        "https://sns.us-east-1.amazonaws.com\\@evil.example/x.pem",
        "https://sqs.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem",
        "https://evil.example/sns.us-east-1.amazonaws.com/x.pem",
        "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem?x=1",
        "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.crt",
        "https://sns.us-east-1.amazonaws.com",
        " https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem",
        "https://169.254.169.254/latest/meta-data/x.pem",
        "http://127.0.0.1:8080/certs/x.pem",
    ],
)
def test_default_certificate_pattern_refuses_everything_else(url: str) -> None:
    assert not sns.allowed(re.compile(DEFAULTS["CERT_URL_PATTERN"]), url)


def test_default_subscribe_pattern_admits_the_region_sns_sends_and_nothing_else() -> None:
    pattern = re.compile(DEFAULTS["SUBSCRIBE_URL_PATTERN"])
    genuine = orjson.loads(payload("amazon_ses", "subscription_confirmation"))["SubscribeURL"]
    assert sns.allowed(pattern, genuine)
    for url in (
        genuine.replace("https://", "http://"),
        genuine.replace("amazonaws.com/", "amazonaws.com.evil.example/"),
        genuine + "#x",
        "https://evil.example/?Action=ConfirmSubscription",
    ):
        assert not sns.allowed(pattern, url), url


def test_certificate_cache_is_bounded_and_expires() -> None:
    cache = sns.CertificateCache(size=2, ttl_s=10)
    for i in range(3):
        cache.put(f"u{i}", [], now=100.0 + i)
    assert cache.get("u0", 103.0) is None and cache.get("u2", 103.0) == []
    assert cache.get("u1", 115.0) is None


# -- configuration -----------------------------------------------------------------------------


def test_topic_arns_are_required() -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings({"SYNCWORKER_SOURCES": "amazon_ses"})
    assert any("SYNCWORKER_AMAZON_SES_TOPIC_ARNS" in p for p in exc.value.problems)


@pytest.mark.parametrize(
    ("values", "setting"),
    [
        ({"CERT_URL_PATTERN": "(unclosed"}, "CERT_URL_PATTERN"),
        ({"SUBSCRIBE_URL_PATTERN": "["}, "SUBSCRIBE_URL_PATTERN"),
        ({"MAX_AGE_S": "an hour"}, "MAX_AGE_S"),
        ({"MAX_AGE_S": "0"}, "MAX_AGE_S"),
        ({"TOPIC_ARNS": " , "}, "TOPIC_ARNS"),
    ],
)
def test_bad_settings_stop_startup_by_name(values: dict[str, str], setting: str) -> None:
    with pytest.raises(ConfigError) as exc:
        make_parser(**values)
    [problem] = exc.value.problems
    assert problem.startswith(f"SYNCWORKER_AMAZON_SES_{setting}: ")


def test_production_defaults_come_from_the_environment_reader() -> None:
    settings = load_settings(
        {"SYNCWORKER_SOURCES": "amazon_ses", "SYNCWORKER_AMAZON_SES_TOPIC_ARNS": TOPIC}
    )
    values = settings.sources["amazon_ses"].values
    assert values["CERT_URL_PATTERN"] == DEFAULTS["CERT_URL_PATTERN"]
    assert values["CERT_URL_PATTERN"].startswith(r"https://sns\.")


# -- the handshake, through the route ------------------------------------------------------------


@pytest.fixture()
def client(make_settings: SettingsFactory) -> Any:
    values = {"TOPIC_ARNS": TOPIC, **sns_server().settings()}
    app = create_app(make_settings(sources={"amazon_ses": ("amazon_ses", values)}))
    return app.test_client()


def post(client: Any, body: bytes) -> Any:
    headers = {"Content-Type": "text/plain; charset=UTF-8"}
    return client.post("/webhooks/amazon_ses", data=body, headers=headers)


def ingest_payloads(conn: redis.Redis) -> list[Any]:
    """What accepted requests left in the inbox for ingest, oldest first."""
    return [inbox.decode(fields[b"p"]) for _, fields in stream_entries(conn, INBOX)]


def confirmation(
    signer: SnsSigner, kind: str = "subscription_confirmation", **changes: str
) -> bytes:
    return signer.request(stored(kind, **changes)).body


def test_text_plain_notification_is_accepted_and_queued(
    client: Any, signer: SnsSigner, redis_conn: redis.Redis
) -> None:
    answer = post(client, signer.request(stored("bounce_permanent")).body)
    assert answer.status_code == 200 and answer.json["accepted"] == 2
    [payload] = ingest_payloads(redis_conn)
    assert [e["kind"] for e in payload["events"]] == ["hard_bounce", "hard_bounce"]


def test_subscription_is_confirmed_by_a_get_of_the_subscribe_url(
    client: Any, signer: SnsSigner, redis_conn: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    url = sns_server().subscribe_url(TOPIC)
    with caplog.at_level(logging.INFO, "syncworker.intake.routes"):
        answer = post(client, confirmation(signer, SubscribeURL=url))
    assert answer.status_code == 200 and answer.json == {"subscription": "confirmed"}
    assert url.removeprefix(sns_server().base) in sns_server().requests
    assert ingest_payloads(redis_conn) == []
    assert f"sns subscription confirmed topic={TOPIC}" in caplog.text


def test_a_forged_confirmation_is_401_and_confirms_nothing(client: Any, signer: SnsSigner) -> None:
    url = sns_server().subscribe_url(TOPIC)
    signed = orjson.loads(confirmation(signer, SubscribeURL=url))
    forged = {**signed, "Token": "guessed"}
    assert post(client, orjson.dumps(forged)).status_code == 401
    assert url.removeprefix(sns_server().base) not in sns_server().requests


def test_a_subscribe_url_off_the_allow_list_is_400_kept_and_not_visited(
    client: Any, signer: SnsSigner, redis_conn: redis.Redis
) -> None:
    url = sns_server().base + "/elsewhere?Action=ConfirmSubscription"
    answer = post(client, confirmation(signer, SubscribeURL=url))
    assert answer.status_code == 400 and "SubscribeURL" in answer.json["detail"]
    assert "/elsewhere?Action=ConfirmSubscription" not in sns_server().requests
    assert redis_conn.llen(QUARANTINE) == 1


def test_a_failed_confirmation_is_503_so_sns_sends_it_again(client: Any, signer: SnsSigner) -> None:
    server = sns_server()
    url = server.subscribe_url(TOPIC)
    server.statuses[url.removeprefix(server.base).partition("?")[0]] = 500
    answer = post(client, confirmation(signer, SubscribeURL=url))
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "60"
    assert answer.json["error"] == "unavailable"


def test_a_certificate_host_that_fails_gives_503_with_retry_after(
    client: Any, signer: SnsSigner
) -> None:
    server = sns_server()
    url = server.serve(b"")
    server.statuses[url.removeprefix(server.base)] = 503
    body = SnsSigner(signer.key, url, TOPIC).request(stored("complaint")).body
    answer = post(client, body)
    assert answer.status_code == 503 and "Retry-After" in answer.headers


def test_a_type_header_at_odds_with_the_body_is_400_and_changes_nothing(
    client: Any, signer: SnsSigner, redis_conn: redis.Redis
) -> None:
    """A notification posted as a subscription confirmation: refused before anything is read
    from it, so nothing is confirmed, queued or kept."""
    body = signer.request(stored("bounce_permanent")).body
    headers = {
        "Content-Type": "text/plain; charset=UTF-8",
        "x-amz-sns-message-type": "SubscriptionConfirmation",
    }
    answer = client.post("/webhooks/amazon_ses", data=body, headers=headers)
    assert answer.status_code == 400 and answer.json["error"] == "payload_invalid"
    assert "x-amz-sns-message-type" in answer.json["detail"]
    assert ingest_payloads(redis_conn) == [] and redis_conn.llen(QUARANTINE) == 0


def test_unsubscribe_confirmation_is_logged_and_never_re_subscribes(
    client: Any, signer: SnsSigner, caplog: pytest.LogCaptureFixture
) -> None:
    url = sns_server().subscribe_url(TOPIC)
    with caplog.at_level(logging.INFO, "syncworker.intake.routes"):
        answer = post(client, confirmation(signer, "unsubscribe_confirmation", SubscribeURL=url))
    assert answer.status_code == 200 and answer.json == {"subscription": "unsubscribed"}
    assert url.removeprefix(sns_server().base) not in sns_server().requests
    assert "not re-subscribing" in caplog.text


def test_the_http_function_is_injectable(signer: SnsSigner) -> None:
    calls: list[str] = []

    def http(url: str) -> tuple[int, bytes]:
        calls.append(url)
        return 200, b""

    source = SourceConfig(
        name="amazon_ses", esp="amazon_ses", values={"TOPIC_ARNS": TOPIC, **sns_server().settings()}
    )
    parser = AmazonSesParser(source, http=http)
    url = sns_server().subscribe_url(TOPIC)
    body = confirmation(signer, SubscribeURL=url)
    make_parser().verify(request(body))  # fetches the certificate into the process's cache
    parser.verify(request(body))
    result = parser.parse(body)
    assert result.followup is not None and "confirmed" in result.followup()
    assert calls[-1] == url


@pytest.mark.parametrize(
    ("case", "email", "reason"),
    [
        (
            "bounce_on_account_suppression_list",
            "listed@example.com",
            "Amazon SES has suppressed sending to this address because it is on the account-level"
            " suppression list.",
        ),
        (
            "bounce_suppressed",
            "globally.suppressed@example.com",
            "Amazon SES has suppressed sending to this address because it has a recent history of"
            " bouncing as an invalid address.",
        ),
    ],
)
def test_a_refusal_by_a_suppression_list_is_a_hard_bounce_with_ses_reason(
    signer: SnsSigner, case: str, email: str, reason: str
) -> None:
    """SES refused to send because of its own suppression list: an earlier hard bounce or
    complaint, so the address is suppressed at once rather than counted."""
    parser = make_parser()
    [event] = parser.parse(verified(parser, signer, stored(case))).events
    assert (event.email, event.kind) == (email, Kind.HARD_BOUNCE)
    assert event.reason is not None and event.reason.startswith(reason)


def test_a_complaint_refused_by_the_account_list_is_a_complaint_naming_it(
    signer: SnsSigner,
) -> None:
    """complaintSubType OnAccountSuppressionList: SES did not send because an earlier complaint
    put the address on the account's list; a spam complaint at once, with that as the reason."""
    parser = make_parser()
    doc = stored("complaint_on_account_suppression_list")
    [event] = parser.parse(verified(parser, signer, doc)).events
    assert (event.email, event.kind) == ("listed.complainer@example.com", Kind.SPAM_COMPLAINT)
    assert event.reason == "OnAccountSuppressionList"
