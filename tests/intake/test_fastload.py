"""The intake's fast path for well-formed items loads exactly what marshmallow loads, and leaves
everything else to marshmallow: random items through both give the same data, and batches give
the same events, ignored counts and quarantine reasons as the schemas alone."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from marshmallow import Schema, ValidationError, fields

import syncworker.intake.esps
from syncworker.config import SourceConfig
from syncworker.events import MAX_TS, HygieneEvent, content_key, normalize_email
from syncworker.intake.contract import (
    IsoTime,
    ParseResult,
    Quarantined,
    admit,
    invalid_reason,
    text,
    validate_items,
)
from syncworker.intake.esps import sendgrid
from syncworker.intake.esps.sendgrid import SendGridParser
from syncworker.intake.fastload import loader
from syncworker.intake.fields import Address

pytestmark = pytest.mark.slow  # property searches over every ESP schema


def esp_schemas() -> dict[str, Schema]:
    """Every schema instance an ESP module defines, by module and name."""
    found: dict[str, Schema] = {}
    for module_info in pkgutil.iter_modules(syncworker.intake.esps.__path__):
        module = importlib.import_module(f"syncworker.intake.esps.{module_info.name}")
        for name, value in vars(module).items():
            candidates = value.items() if isinstance(value, dict) else [("", value)]
            for key, schema in candidates:
                if isinstance(schema, Schema):
                    found[f"{module_info.name}.{name}{f'[{key}]' if key else ''}"] = schema
    return found


SCHEMAS = esp_schemas()

ADDRESSES = (
    st.sampled_from(
        [
            "jane@example.com",
            "Jane.Doe@Example.COM",
            " jane@example.com ",
            '"Jane" <Jane@Example.com>',
            "İnci@example.com",
            "用户@例子.广告",
            "user@[192.0.2.1]",
            "user@localhost",
            "plain",
            "jane@",
            "@example.com",
            "jane doe@example.com",
            "a" * 330 + "@example.com",
            "",
            "<>",
        ]
    )
    | st.emails()
)
TIMES = st.sampled_from(
    [
        "2026-11-05T16:33:54.9070259-05:00",
        "2026-11-05T16:33:54Z",
        "2026-11-05 16:33:54",
        "2026-11-05",
        "10000-01-01T00:00:00Z",
        "yesterday",
        "",
    ]
)
NUMBERS = (
    st.integers(min_value=-10, max_value=10)
    | st.integers(min_value=1_600_000_000, max_value=1_800_000_000)
    | st.sampled_from([0, MAX_TS, MAX_TS + 1, -1, 2**64, 10**400, 1.5, -0.0, 1e300])
    | st.floats(allow_nan=True, allow_infinity=True)
)
SCALARS = (
    st.none()
    | st.booleans()
    | NUMBERS
    | st.text(max_size=12)
    | st.sampled_from(["1700000000", "1e9", "nan", "true", "yes", "0", "on"])
    | ADDRESSES
    | TIMES
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=6,
)


def shaped(field: fields.Field[Any]) -> st.SearchStrategy[Any]:
    """Values of the shape ``field`` expects, good ones and near misses alike."""
    if isinstance(field, Address):
        return ADDRESSES
    if isinstance(field, IsoTime):
        return TIMES | NUMBERS if field.unix else TIMES
    if isinstance(field, fields.Float | fields.Integer):
        return NUMBERS
    if isinstance(field, fields.Boolean):
        return st.booleans() | st.sampled_from(["true", 1, 0, "no"])
    if isinstance(field, fields.String):
        return st.text(max_size=12) | st.sampled_from(["bounce", "HardBounce", "Bounced Address"])
    if isinstance(field, fields.Nested) and isinstance(field.schema, Schema):
        nested = field.schema
        return st.deferred(lambda: items(nested))
    if isinstance(field, fields.List):
        return st.lists(shaped(field.inner), max_size=3)
    return VALUES


@st.composite
def items(draw: st.DrawFn, schema: Schema) -> dict[str, Any]:
    """An item with most of the schema's keys, each usually with a value of the shape its field
    expects (so that many items load), else a value of any JSON type; and keys it does not know."""
    item: dict[str, Any] = {}
    for name, field in schema.load_fields.items():
        key = field.data_key if field.data_key is not None else name
        roll = draw(st.integers(0, 15))
        if roll == 0:
            continue  # missing
        item[key] = draw(VALUES if roll == 1 else shaped(field))
    item.update(draw(st.dictionaries(st.sampled_from(["extra", "Other", "id"]), VALUES)))
    return item


def typed(value: Any) -> Any:
    """``value`` with the type of every part beside it: 1 == 1.0, but they are written apart."""
    if isinstance(value, dict):
        return {key: typed(inner) for key, inner in value.items()}
    if isinstance(value, list):
        return [typed(inner) for inner in value]
    return (type(value).__name__, repr(value))


def slow_load(schema: Schema, item: dict[str, Any]) -> dict[str, Any] | str:
    try:
        return dict(schema.load(item))
    except ValidationError as exc:
        return invalid_reason(exc.messages)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_the_fast_path_loads_what_the_schema_loads(name: str, data: st.DataObject) -> None:
    schema = SCHEMAS[name]
    fast = loader(schema)
    item = data.draw(items(schema))
    expected = slow_load(schema, item)
    if fast is None:
        return  # this schema always goes through marshmallow
    got = fast(dict(item))
    if got is not None:
        # taken by the fast path: marshmallow takes it too, with the same data, value types
        # included (1 and 1.0 are equal, but the queue would write them differently)
        assert not isinstance(expected, str), f"fast path took an item the schema refuses: {item}"
        assert typed(got) == typed(expected)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_validate_items_accepts_and_refuses_as_the_schema_does(
    name: str, data: st.DataObject
) -> None:
    schema = SCHEMAS[name]
    batch = data.draw(st.lists(items(schema) | VALUES, max_size=6))
    quarantined: list[Quarantined] = []
    valid = validate_items(schema, batch, quarantined)
    expected_valid: list[dict[str, Any]] = []
    expected_refused: list[Quarantined] = []
    for item in batch:
        if not isinstance(item, dict):
            expected_refused.append(Quarantined("event is not a JSON object", item))
            continue
        loaded = slow_load(schema, item)
        if isinstance(loaded, str):
            expected_refused.append(Quarantined(loaded, item))
        else:
            expected_valid.append(loaded)
    assert valid == expected_valid
    assert quarantined == expected_refused


WELL_FORMED = {
    "email": "User1@Example.com",
    "timestamp": 1_790_000_000,
    "sg_event_id": "ev00000001",
    "sg_message_id": "msg0000001.filter0001",
    "smtp-id": "<msg1@example.com>",
    "category": ["newsletter"],
}


@pytest.mark.parametrize("code", sorted(sendgrid.SCHEMAS))
def test_sendgrid_events_of_the_usual_shape_take_the_fast_path(code: str) -> None:
    """The fast path exists for every SendGrid hygiene schema and takes a usual event: without
    it, batches would cost marshmallow's full load per event again."""
    fast = loader(sendgrid.SCHEMAS[code])
    assert fast is not None
    event = {**WELL_FORMED, "event": code, "reason": "550 5.1.1 user unknown", "status": "5.1.1"}
    data = fast(event)
    assert data is not None
    assert data["email"] == "user1@example.com"
    assert data["timestamp"] == 1_790_000_000.0 and isinstance(data["timestamp"], float)


SENDGRID_CODES = st.sampled_from(
    [*sendgrid.SCHEMAS, "processed", "delivered", "open", "click", "deferred", "brand_new"]
)


@st.composite
def sendgrid_events(draw: st.DrawFn) -> Any:
    event: dict[str, Any] = dict(draw(items(sendgrid.SCHEMAS["bounce"])))
    event.update(draw(items(sendgrid.SCHEMAS["group_unsubscribe"])))
    if draw(st.integers(0, 9)):
        event["event"] = draw(SENDGRID_CODES)
    if draw(st.integers(0, 3)):
        event["type"] = draw(st.sampled_from(["bounce", "blocked", "expired", "BOUNCE", None, 5]))
    if draw(st.integers(0, 3)):
        event["reason"] = draw(
            st.sampled_from(["Bounced Address", "invalid", "Spam Content", None, 3])
        )
    return event if draw(st.integers(0, 20)) else draw(VALUES)


def schemas_only(parser: SendGridParser, batch: list[Any]) -> ParseResult:
    """What the SendGrid parser made of a batch before the fast path: each item loaded with its
    schema (refusals worded by marshmallow), then its event made as the parser made it."""
    result = ParseResult()
    for item in batch:
        code = item.get("event") if isinstance(item, dict) else None
        if not isinstance(code, str):
            why = "event code missing" if isinstance(item, dict) else "event is not an object"
            result.quarantined.append(Quarantined(why, item))
            continue
        schema = sendgrid.SCHEMAS.get(code)
        if schema is None:
            result.ignored[code] += 1
            continue
        loaded = slow_load(schema, item)
        if isinstance(loaded, str):
            result.quarantined.append(Quarantined(loaded, item))
            continue
        kind = sendgrid._kind(code, loaded)
        if kind is None:
            result.ignored[code] += 1
            continue
        email = normalize_email(loaded["email"])
        message_id = text(loaded["sg_message_id"])
        result.events.append(
            HygieneEvent(
                key=content_key("sendgrid", email, kind, loaded["timestamp"], message_id),
                source=parser.name,
                esp="sendgrid",
                email=email,
                kind=kind,
                occurred_at=loaded["timestamp"],
                message_id=message_id,
                reason=loaded.get("reason"),
                smtp_code=text(loaded.get("status")),
                list_id=text(loaded.get("asm_group_id")),
                raw=item,
            )
        )
    return result


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(sendgrid_events(), max_size=8))
def test_sendgrid_batches_give_the_events_and_refusals_of_the_schemas(batch: list[Any]) -> None:
    parser = SendGridParser(
        SourceConfig(name="sendgrid", esp="sendgrid", values={}), clock=lambda: 0.0
    )
    try:
        body = orjson.dumps(batch)
    except TypeError:  # an integer beyond 64 bits: no JSON body an ESP sends
        assume(False)
    got = admit(parser.parse(body))
    expected = admit(schemas_only(parser, orjson.loads(body)))
    assert got.events == expected.events
    assert got.ignored == expected.ignored
    assert [(q.reason, q.raw) for q in got.quarantined] == [
        (q.reason, q.raw) for q in expected.quarantined
    ]
