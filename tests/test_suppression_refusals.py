"""An ESP's refusal to send because of its own suppression list, parsed from the ESP's payload
and applied to the ledger on a real Redis: one such event suppresses the address."""

from __future__ import annotations

from collections.abc import Callable

import orjson
import pytest
import redis

from syncworker.config import Settings, SourceConfig
from syncworker.events import HygieneEvent, Kind
from syncworker.intake.contract import EspParser
from syncworker.intake.esps.brevo import BrevoParser
from syncworker.intake.esps.mailjet import MailjetParser
from syncworker.intake.esps.mailtrap import MailtrapParser
from syncworker.intake.esps.resend import ResendParser
from syncworker.intake.esps.sparkpost import SparkPostParser
from syncworker.ledger import Ledger, Route
from tests.intake.signing import payload

ALL = frozenset(k.value for k in Kind)


def ledger(conn: redis.Redis) -> Ledger:
    route = Route.build({"crm": (False, ALL)})
    return Ledger(conn, Settings().replace(soft_bounce_threshold=3), route)


def parser(cls: type[EspParser], esp: str, **values: str) -> EspParser:
    return cls(SourceConfig(name=esp, esp=esp, values=values))


def only(esp: str, case: str, email: str) -> Callable[[EspParser], HygieneEvent]:
    """The event for ``email`` of a stored payload, as the ESP's parser reads it."""

    def pick(esp_parser: EspParser) -> HygieneEvent:
        [event] = [e for e in esp_parser.parse(payload(esp, case)).events if e.email == email]
        return event

    return pick


BASIC = {"USERNAME": "u", "PASSWORD": "p"}
CASES = {
    "brevo blocked": (
        parser(BrevoParser, "brevo", TOKEN="t"),
        only("brevo", "single_blocked", "blocklisted@example.com"),
    ),
    "mailjet preblocked": (
        parser(MailjetParser, "mailjet", **BASIC),
        only("mailjet", "grouped", "preblocked@example.com"),
    ),
    "mailtrap reject": (
        parser(MailtrapParser, "mailtrap", SIGNING_SECRET="s"),
        only("mailtrap", "batch", "suppressed@example.com"),
    ),
    "resend suppressed": (
        parser(ResendParser, "resend", SIGNING_SECRET="whsec_" + "A" * 32),
        only("resend", "suppressed", "frank@example.com"),
    ),
    "sparkpost customer policy": (
        parser(SparkPostParser, "sparkpost", **BASIC),
        only("sparkpost", "suppressed", "complained.before@example.com"),
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_one_refusal_by_the_esp_suppression_list_suppresses_the_address(
    redis_conn: redis.Redis, case: str
) -> None:
    esp_parser, pick = CASES[case]
    event = pick(esp_parser)
    led = ledger(redis_conn)
    assert led.apply([event]).effects == {"suppressed": 1}
    state = led.state(event.email)
    assert state.suppressed
    detail, reason = state.reasons[event.kind].detail, event.reason
    assert detail is not None and reason is not None and reason in detail


def test_a_receiving_server_block_is_only_counted(redis_conn: redis.Redis) -> None:
    """The contrast: a block by the receiver's policy waits for the soft-bounce threshold."""
    wrapper = orjson.loads(payload("sparkpost", "suppressed"))[-1]
    [event] = parser(SparkPostParser, "sparkpost", **BASIC).parse(orjson.dumps([wrapper])).events
    assert event.kind == Kind.BLOCKED
    led = ledger(redis_conn)
    assert led.apply([event]).effects == {"counted": 1}
    assert not led.state(event.email).suppressed
