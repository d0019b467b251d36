"""The contract of an ESP module (``verify`` + ``parse``) and the checks ESP modules share."""

from __future__ import annotations

import hmac
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import chain, compress, repeat
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

import orjson
from marshmallow import Schema, ValidationError, fields, validate

from syncworker.errors import ConfigError, PayloadInvalid, SignatureInvalid
from syncworker.events import MAX_TS as MAX_TS  # ESP modules bound their times with it
from syncworker.events import HygieneEvent, Kind, content_key
from syncworker.intake.fastload import loader

if TYPE_CHECKING:  # avoids an import cycle with config
    from syncworker.config import SourceConfig

T = TypeVar("T")

# Arrays and objects nested in one another in a verified body, counting the outermost. ESPs'
# documented payloads nest fewer than 10; past 254 orjson cannot write a quarantined item back,
# and near 1000 the stdlib hits RecursionError. A deeper body is refused (400) and kept as text.
MAX_JSON_DEPTH = 64
_CONTAINERS = (dict, list)


class HeaderMap(Protocol):
    """Case-insensitive header lookup (werkzeug ``Headers`` in the app; any mapping in tests)."""

    def get(self, key: str, default: str, /) -> str: ...


@dataclass(frozen=True, slots=True)
class InboundRequest:
    """What an ESP module may look at: the raw body and the request's metadata.

    ``url`` is the public URL the ESP posted to (``SYNCWORKER_PUBLIC_URL`` + path behind a proxy);
    the web app fills it only for parsers with ``signs_url = True`` (it costs time to build).
    """

    body: bytes
    headers: HeaderMap
    url: str = ""
    remote_addr: str | None = None


@dataclass(frozen=True, slots=True)
class Quarantined:
    """An event from a verified request that failed validation: kept with the reason, replayable."""

    reason: str
    raw: Any


OTHER_CODE = "other"  # how an ignored event whose code the module does not know is counted


@dataclass(slots=True)
class ParseResult:
    """What a request yielded: hygiene events, counts of ignored native event types, bad events."""

    events: list[HygieneEvent] = field(default_factory=list)
    ignored: Counter[str] = field(default_factory=Counter)
    quarantined: list[Quarantined] = field(default_factory=list)
    #: a handshake the ESP expects an answer to (e.g. SNS SubscriptionConfirmation), if any
    response: dict[str, Any] | None = None
    #: work the route does for a verified handshake before it answers (e.g. GET of the SNS
    #: SubscribeURL), since a parser does no HTTP; returns a line for the log
    followup: Callable[[], str] | None = None


class EspParser:
    """Base of every ESP module. Subclasses set ``esp`` and ``settings`` and implement both methods.

    ``settings`` are read as ``SYNCWORKER_<SOURCE>_<KEY>``; each may be rotated by also setting
    ``SYNCWORKER_<SOURCE>_<KEY>_PREVIOUS`` (both accepted; settings that only work together are
    matched by ``generations``). ``optional_settings``: key -> default.
    A parser does no HTTP, no queueing and no logging.
    """

    esp: ClassVar[str]
    settings: ClassVar[tuple[str, ...]] = ()
    optional_settings: ClassVar[Mapping[str, str]] = {}
    #: how this source proves a request is genuine, for the README and ``check-config``
    verification: ClassVar[str] = ""
    #: the scheme signs the request URL, so the web app must fill ``InboundRequest.url``
    signs_url: ClassVar[bool] = False
    #: the native event codes this module knows: its code table and the documented types it
    #: ignores. An ignored event is counted under its code only if known, else as ``OTHER_CODE``
    #: (a code is the ESP's text: it could be an address, and each one would be a metric label)
    known_codes: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, source: SourceConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.source = source
        self.clock = clock

    @property
    def name(self) -> str:
        return self.source.name

    def verify(self, request: InboundRequest) -> None:
        """Raise :class:`SignatureInvalid` unless the request provably comes from the ESP."""
        raise SignatureInvalid(f"{type(self).__name__} does not implement verify()")

    def parse(self, body: bytes) -> ParseResult:
        """Turn a verified body into events; raise :class:`PayloadInvalid` for a malformed body."""
        raise PayloadInvalid(f"{type(self).__name__} does not implement parse()")

    def parse_request(self, request: InboundRequest) -> ParseResult:
        """What the web app calls after ``verify``: ``parse(body)``, unless a scheme keeps
        something the events need in the headers (e.g. the message id a sender repeats on every
        retry)."""
        return self.parse(request.body)

    def parse_item(self, raw: Any) -> ParseResult:
        """Parse one quarantined item again, without the request it came in.

        ``raw`` is what this module put in ``Quarantined.raw``, which has the shape of its events'
        ``raw``: each holds whatever the event's key needs, so an event recovered here is keyed
        as the request would have keyed it. ``syncworker quarantine replay`` calls this once a
        parser or a setting is fixed; the request was verified when it arrived, so nothing is
        verified here. Raise :class:`PayloadInvalid` for a raw this module does not produce.
        """
        raise PayloadInvalid(f"{type(self).__name__} does not implement parse_item()")

    def replay_nonce(self, request: InboundRequest) -> str | None:
        """What makes a verified request single-use, for a scheme whose signature does not bind
        the body: the route claims it in Redis for ``nonce_ttl_s`` before it writes anything and
        refuses a second request carrying it (401). ``None`` (the default): the signature covers
        the body, so a replay can only repeat the same events, which the ledger dedupes."""
        return None

    @property
    def nonce_ttl_s(self) -> int:
        """How long a claimed nonce is remembered: while its signature could still pass the skew
        check (a timestamp up to the tolerance ahead of our clock stays acceptable until the
        tolerance has passed behind it)."""
        return math.ceil(2 * self.source.signature_tolerance_s) + 1

    def kept_headers(self, headers: HeaderMap) -> dict[str, str]:
        """The headers ``parse_request`` reads, kept with a verified body that could not be
        parsed, so a replay can pass them back. Never a signature or a secret: only what the
        events need (e.g. a message id)."""
        return {}

    # -- helpers shared by ESP modules -------------------------------------------------------

    def secrets(self, key: str) -> list[str]:
        """The current and, during rotation, previous value of a secret setting."""
        return self.source.secrets(key)

    def generations(self, *keys: str) -> list[tuple[str, ...]]:
        """The values of settings that only work together (a user and its password), one tuple
        per generation: the current values, then, during rotation, the ``_PREVIOUS`` ones, where
        a key without a ``_PREVIOUS`` value keeps its current value. A request must match one
        generation in full: an old user with a new password is no credential anybody was given.
        """
        current = tuple(self.source.get(key) for key in keys)
        found = [current]
        if any(self.source.get(key + "_PREVIOUS") for key in keys):
            previous = tuple(
                self.source.get(key + "_PREVIOUS") or self.source.get(key) for key in keys
            )
            if previous != current:
                found.append(previous)
        return found

    def load_keys(self, key: str, load: Callable[[str], T]) -> list[T]:
        """``key``'s value and, while it rotates, ``key_PREVIOUS``'s, each turned into a key
        once with ``load``: a value ``load`` refuses (ValueError) is a configuration error naming
        the setting, raised with every other one, not a 401 on each request."""
        keys: list[T] = []
        problems: list[str] = []
        for setting in (key, key + "_PREVIOUS"):
            if value := self.source.get(setting):
                try:
                    keys.append(load(value))
                except ValueError as exc:
                    problems.append(f"SYNCWORKER_{self.source.name.upper()}_{setting}: {exc}")
        if problems:
            raise ConfigError(problems)
        return keys

    def event_key(
        self,
        vendor_id: str | None,
        email: str,
        kind: Kind,
        occurred_at: float,
        message_id: str | None,
    ) -> str:
        """``<esp>:<vendor_id>`` where the ESP gives an id that stays the same when it retries,
        else a hash of what identifies the event (:func:`~syncworker.events.content_key`)."""
        if vendor_id:
            return f"{self.esp}:{vendor_id}"
        return content_key(self.esp, email, kind, occurred_at, message_id)

    def check_timestamp(self, timestamp: str | float | None) -> float:
        """Parse a signed Unix timestamp and bound its skew; raise SignatureInvalid otherwise."""
        try:
            ts = float(timestamp)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise SignatureInvalid("timestamp missing or not a number") from None
        if ts != ts or abs(self.clock() - ts) > self.source.signature_tolerance_s:
            raise SignatureInvalid("timestamp outside the allowed skew")
        return ts


def equal(a: str | bytes, b: str | bytes) -> bool:
    """Constant-time comparison of two secrets or signatures."""
    a_b = a.encode() if isinstance(a, str) else a
    b_b = b.encode() if isinstance(b, str) else b
    return hmac.compare_digest(a_b, b_b)


def load_json(body: bytes | str, what: str = "body") -> Any:
    """Parse JSON (a body, or JSON carried in one of its fields); PayloadInvalid with a short
    reason if it is empty, not JSON, or nested deeper than MAX_JSON_DEPTH."""
    if not body.strip():
        raise PayloadInvalid(f"empty {what}")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise PayloadInvalid(f"{what} is not valid JSON: {exc.msg}") from None
    check_depth(doc, what)
    return doc


def check_depth(doc: Any, what: str = "body") -> None:
    """PayloadInvalid if ``doc`` nests arrays and objects deeper than MAX_JSON_DEPTH.

    Level by level rather than recursive, so that it cannot itself hit the recursion limit.
    """
    level = [doc] if isinstance(doc, _CONTAINERS) else []
    depth = 0
    while level:
        depth += 1
        if depth > MAX_JSON_DEPTH:
            raise PayloadInvalid(f"{what} nests arrays and objects deeper than {MAX_JSON_DEPTH}")
        # the values of the whole level, then the containers among them, each in one C-level
        # pass (a batch's level holds tens of thousands of values, nearly all scalars)
        children = list(
            chain.from_iterable([v.values() if isinstance(v, dict) else v for v in level])
        )
        level = list(compress(children, map(isinstance, children, repeat(_CONTAINERS))))


def invalid_reason(messages: Any) -> str:
    """``invalid: <marshmallow messages as JSON>``; errors in list items are keyed by index,
    which orjson writes only as text keys."""
    return "invalid: " + orjson.dumps(messages, option=orjson.OPT_NON_STR_KEYS).decode()


def validate_items(
    schema: Schema, items: Iterable[Any], quarantined: list[Quarantined]
) -> list[dict[str, Any]]:
    """Load each item with ``schema``; items that fail go to ``quarantined`` with the reason."""
    valid: list[dict[str, Any]] = []
    fast = loader(schema)
    for item in items:
        if not isinstance(item, dict):
            quarantined.append(Quarantined("event is not a JSON object", item))
            continue
        # the common well-formed item skips marshmallow's machinery; any other is loaded by
        # the schema, which alone decides what is refused and says why
        data = fast(item) if fast is not None else None
        if data is not None:
            valid.append(data)
            continue
        try:
            valid.append(schema.load(item))
        except ValidationError as exc:
            quarantined.append(Quarantined(invalid_reason(exc.messages), item))
    return valid


def hygiene_items(
    items: Iterable[Any],
    schemas: Mapping[str, Schema],
    kind_of: Callable[[str, dict[str, Any]], Kind | None],
    result: ParseResult,
) -> Iterator[tuple[dict[str, Any], dict[str, Any], Kind]]:
    """Yield ``(item, data, kind)`` for each item of a batch that is a hygiene event.

    An item's code is its ``event``; ``data`` is the item loaded with ``schemas[code]`` and
    ``kind`` is ``kind_of(code, data)``. The rest is booked in ``result``: an item without a
    code, or one that fails its schema, is quarantined; a code without a schema, or whose data
    has no kind, is counted as ignored.
    """
    fast = {code: loader(schema) for code, schema in schemas.items()}
    for item in items:
        code = item.get("event") if isinstance(item, dict) else None
        if not isinstance(code, str):
            why = "event code missing" if isinstance(item, dict) else "event is not an object"
            result.quarantined.append(Quarantined(why, item))
            continue
        schema = schemas.get(code)
        if schema is None:
            result.ignored[code] += 1
            continue
        load = fast[code]  # as in validate_items: the schema loads what the fast path refuses
        data = load(item) if load is not None else None
        loaded = [data] if data is not None else validate_items(schema, [item], result.quarantined)
        for data in loaded:
            kind = kind_of(code, data)
            if kind is None:
                result.ignored[code] += 1
            else:
                yield item, data, kind


def text(value: Any) -> str | None:
    """Optional metadata as text; ESPs drift between numbers and strings, so accept both."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def iso_seconds(value: str) -> float:
    """An ISO 8601 time as Unix seconds; no offset means UTC. ValueError if it is not one.

    Python 3.11's parser takes any number of fractional digits (Postmark sends 7) and keeps 6.
    """
    moment = datetime.fromisoformat(value.strip())
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


class IsoTime(fields.Field[float]):
    """An ISO 8601 time as Unix seconds, in 1970-9999; no offset means UTC.

    ``unix=True`` also takes a JSON number of Unix seconds.
    """

    def __init__(self, *, unix: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.unix = unix

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> float:
        try:
            if self.unix and isinstance(value, int | float) and not isinstance(value, bool):
                seconds = float(value)
            elif isinstance(value, str):
                seconds = iso_seconds(value)
            else:
                raise ValueError
        except (ValueError, OverflowError):
            expected = "an ISO 8601 time or Unix seconds" if self.unix else "an ISO 8601 time"
            raise ValidationError(f"Not {expected}.") from None
        if not (math.isfinite(seconds) and 0 <= seconds <= MAX_TS):
            raise ValidationError("Time outside 1970-9999.")
        return seconds


class UnixTime(fields.Float):
    """A required event time in Unix seconds, from 1970 to the end of 9999."""

    def __init__(self) -> None:
        super().__init__(required=True, validate=validate.Range(0, MAX_TS))


def admit(result: ParseResult) -> ParseResult:
    """Move each event that breaks the event codec's rules to ``result.quarantined``, with the
    reason: the web and a quarantine replay queue only events the worker will take."""
    from syncworker import codec

    bad = [(event, why) for event in result.events if (why := codec.problem(event)) is not None]
    if bad:
        refused = {id(event) for event, _ in bad}
        result.events = [event for event in result.events if id(event) not in refused]
        result.quarantined += [
            Quarantined(f"invalid event: {why}", event.raw) for event, why in bad
        ]
    return result
