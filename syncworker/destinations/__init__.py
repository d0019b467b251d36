"""What a mapping module implements, and the HTTP client it is given.

A mapping module (``mappings/<name>.py``) defines one :class:`Destination` subclass whose
``name`` is the module name. It imports only from this module. The delivery loop hands it batches of
:class:`ContactChange` and records the :class:`Outcome` it returns for each.
"""

from __future__ import annotations

import email.utils
import hashlib
import importlib
import json
import logging
import re
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar, TypeVar

import requests

from syncworker.config import DestinationConfig
from syncworker.errors import (
    BadCredentials,
    ConfigError,
    DestinationError,
    NotConfigured,
    PermanentError,
    RetryableError,
    Throttled,
)
from syncworker.events import (
    HYGIENE_KINDS,
    MANUAL,
    ContactState,
    HygieneEvent,
    Kind,
    ReasonEntry,
)
from syncworker.privacy import mask_text, scrub_body

log = logging.getLogger(__name__)
T = TypeVar("T")

__all__ = [
    "MANUAL",
    "BadCredentials",
    "ContactChange",
    "ContactState",
    "Destination",
    "DestinationConfig",
    "DestinationError",
    "HttpClient",
    "HygieneEvent",
    "Kind",
    "Mode",
    "NotConfigured",
    "Outcome",
    "OutcomeStatus",
    "PermanentError",
    "Rate",
    "ReasonEntry",
    "RetryableError",
    "Throttled",
    "destination_class",
    "guard",
    "retry_after_seconds",
    "EVENT_NAMES",
    "EventPart",
    "attempt",
    "comma_list",
    "compact_json",
    "hygiene_traits",
    "iso_time",
    "json_object",
    "scrub_address",
    "scrub_body",
    "seconds",
    "send_parts",
    "split_events",
    "throttled_rest",
    "user_id",
    "valid_user_id_rule",
]


class Mode(StrEnum):
    #: CRMs: the contact's current state is sent; changes coalesce, order cannot go stale
    STATE = "state"
    #: event streams: each hygiene event is sent once, with an id derived from its key
    EVENTS = "events"


@dataclass(frozen=True, slots=True)
class Rate:
    """``requests`` calls per ``per_seconds``, shared by every worker process."""

    requests: int
    per_seconds: float = 1.0

    @classmethod
    def parse(cls, text: str) -> Rate:
        """``"100/10"`` -> 100 requests per 10 s; ``"5"`` -> 5 per second."""
        count, _, per = text.partition("/")
        rate = cls(int(count), float(per) if per else 1.0)
        if rate.requests <= 0 or rate.per_seconds <= 0:
            raise ValueError(text)
        return rate


class OutcomeStatus(StrEnum):
    APPLIED = "applied"  # the destination changed
    ALREADY = "already"  # it was already in that state: success, nothing changed
    NOT_FOUND = "not_found"  # no such contact there, and this destination does not create them
    RETRY = "retry"  # transient: try again later (backoff, or after ``retry_after``)
    FAILED = "failed"  # permanent for this contact: recorded and dead-lettered


@dataclass(frozen=True, slots=True)
class Outcome:
    status: OutcomeStatus
    detail: str = ""
    retry_after: float | None = None
    #: False for a wait the vendor imposes on one contact (a per-contact or per-user limit):
    #: like throttling, it is not a failure and spends no attempt
    counts: bool = True
    #: the destination throttled the request meant for this contact: it waits ``retry_after``
    #: without spending an attempt, and the whole destination pauses that long
    pause: bool = False
    #: FAILED because the destination refused the whole request this contact was in (one bad
    #: input fails a batch): the delivery loop splits the batch to find the contacts at fault
    whole_request: bool = False

    @classmethod
    def applied(cls, detail: str = "") -> Outcome:
        return cls(OutcomeStatus.APPLIED, detail)

    @classmethod
    def already(cls, detail: str = "") -> Outcome:
        return cls(OutcomeStatus.ALREADY, detail)

    @classmethod
    def not_found(cls, detail: str = "") -> Outcome:
        return cls(OutcomeStatus.NOT_FOUND, detail)

    @classmethod
    def retry(cls, detail: str = "", after: float | None = None) -> Outcome:
        return cls(OutcomeStatus.RETRY, detail, after)

    @classmethod
    def deferred(cls, after: float, detail: str = "") -> Outcome:
        """Not now, for this contact only (e.g. RD Station's 24 updates a day): retry after
        ``after`` seconds without spending an attempt."""
        return cls(OutcomeStatus.RETRY, detail, after, counts=False)

    @classmethod
    def throttled(cls, after: float, detail: str = "throttled") -> Outcome:
        """Not sent (or not answered) because the destination throttled the batch part by part:
        retry after ``after`` seconds, no attempt spent; the destination pauses until then. The
        contacts of the batch answered before the throttle keep their own outcomes."""
        return cls(OutcomeStatus.RETRY, detail, after, counts=False, pause=True)

    @classmethod
    def failed(cls, detail: str = "") -> Outcome:
        return cls(OutcomeStatus.FAILED, detail)

    @classmethod
    def request_refused(cls, detail: str = "") -> Outcome:
        """The request carrying this contact was refused as a whole (a 400 for the batch)."""
        return cls(OutcomeStatus.FAILED, detail, whole_request=True)

    @property
    def ok(self) -> bool:
        return self.status in _OK


_OK = (OutcomeStatus.APPLIED, OutcomeStatus.ALREADY, OutcomeStatus.NOT_FOUND)


@dataclass(frozen=True, slots=True)
class ContactChange:
    """One item of a batch.

    ``state`` is the address's state in the ledger *now*. For ``Mode.EVENTS`` destinations
    ``event`` is the hygiene event to send and ``key`` its event key (derive the vendor's dedupe id
    from it); for ``Mode.STATE`` destinations ``key`` is the address and ``event`` is None.
    """

    key: str
    email: str
    state: ContactState
    event: HygieneEvent | None = None
    #: Mode.STATE: the reasons this destination last confirmed (empty if it never did), so a
    #: mapping that writes without reading can clear what it set before and is now gone
    synced_reasons: frozenset[str] = frozenset()


class HttpClient:
    """The HTTP client a mapping calls through: base URL, timeouts, shared rate limit, errors.

    Every request first waits at the destination's shared rate limiter (which raises
    :class:`Throttled` when the wait would be long), then is classified: 429 -> Throttled (honouring
    Retry-After / X-RateLimit-Reset), 401/403 -> BadCredentials, 408/5xx/timeouts -> RetryableError,
    other 4xx -> PermanentError. Statuses listed in ``allow`` are returned for the caller to read.
    """

    def __init__(
        self,
        destination: str,
        base_url: str,
        *,
        session: requests.Session | None = None,
        timeout: float = 15.0,
        before_request: Callable[[str], None] | None = None,
        headers: Mapping[str, str] | None = None,
        dry_run: bool = False,
    ) -> None:
        self.destination = destination
        self.base_url = base_url.rstrip("/")
        self.session = session or requests.Session()
        self.timeout = timeout
        self.before_request = before_request
        if headers:
            self.session.headers.update(headers)
        self.session.headers.setdefault("User-Agent", "syncworker")
        self.requests_made = 0
        #: dry run: nothing is sent; each request is logged (addresses masked) and answered 200 {}
        self.dry_run = dry_run

    def request(
        self,
        method: str,
        path: str,
        *,
        allow: Iterable[int] = (),
        **kwargs: Any,
    ) -> requests.Response:
        absolute = path.startswith(("http://", "https://"))
        if self.before_request is not None:
            # the limiter sees the path relative to base_url (an absolute URL: its own path)
            self.before_request(urllib.parse.urlsplit(path).path if absolute else path)
        url = path if absolute else self.base_url + path
        kwargs.setdefault("timeout", self.timeout)
        self.requests_made += 1
        if self.dry_run:
            return self._dry_run(method, url, kwargs)
        try:
            response = self.session.request(method, url, **kwargs)
        except requests.Timeout as exc:
            raise RetryableError(self.destination, f"timeout: {type(exc).__name__}") from None
        except requests.RequestException as exc:
            message = f"connection failed: {type(exc).__name__}"
            raise RetryableError(self.destination, message) from None
        status = response.status_code
        if status < 400 or status in set(allow):
            return response
        body = scrub_body(response.text)  # masked before it is cut (DestinationError keeps 500)
        if status == 429:
            raise Throttled(
                self.destination, retry_after_seconds(response), status=status, body=body
            )
        if status in (401, 403):
            raise BadCredentials(self.destination, "credentials rejected", status=status, body=body)
        if status == 408 or status >= 500:
            raise RetryableError(self.destination, "server error", status=status, body=body)
        raise PermanentError(self.destination, "request rejected", status=status, body=body)

    def _dry_run(self, method: str, url: str, kwargs: dict[str, Any]) -> requests.Response:
        payload = kwargs.get("json", kwargs.get("data"))
        if isinstance(payload, bytes | bytearray):
            text = payload.decode("utf-8", "replace")
        else:
            text = json.dumps(payload, default=str) if payload is not None else ""
        params = kwargs.get("params")
        log.info(
            "dry-run dest=%s request=%s %s params=%s body=%s",
            self.destination,
            method,
            mask_text(urllib.parse.unquote(url.split("?", 1)[0])),
            mask_text(json.dumps(params, default=str)) if params else "",
            mask_text(text)[:2000],
        )
        response = requests.Response()
        response.status_code = 200
        response._content = b"{}"
        response.headers["Content-Type"] = "application/json"
        response.url = url
        return response

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("PUT", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("DELETE", path, **kwargs)


def retry_after_seconds(response: requests.Response, default: float = 10.0) -> float:
    """Seconds to wait from ``Retry-After`` (seconds or HTTP date), else ``X-RateLimit-Reset``."""
    value = response.headers.get("Retry-After")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            parsed = email.utils.parsedate_to_datetime(value) if value.strip() else None
            if parsed is not None:
                return max(0.0, parsed.timestamp() - time.time())
    reset = response.headers.get("X-RateLimit-Reset")
    if reset:
        try:
            number = float(reset)
        except ValueError:
            return default
        # an epoch timestamp, or seconds from now
        return max(0.0, number - time.time()) if number > 1e9 else max(0.0, number)
    return default


BATCH_WAIT_CAP_S = 1.0  # longest wait of a deliver job for its batch to fill


class Destination:
    """Base class of a mapping module's destination.

    Set ``name`` (= module name), ``settings`` (required keys, read as ``SYNCWORKER_<NAME>_<KEY>``),
    ``optional_settings`` (key -> default), ``batch_size`` (the API's batch limit), ``rate``,
    ``endpoint_rates``, ``mode`` and ``kinds`` (the hygiene kinds it cares about). Implement
    ``sync`` for a batch API, or ``sync_one`` and inherit a ``sync`` that loops. Every call must
    be safe to repeat.
    ``concurrency`` is how many deliver jobs may send to it at once (each its own batches): 1
    unless the API takes concurrent requests and their order does not matter.
    ``BASE_URL``, ``RATE`` (e.g. ``100/10``), ``BATCH_SIZE``, ``CONCURRENCY`` and ``BATCH_WAIT``
    may be overridden per deployment.
    """

    name: ClassVar[str]
    settings: ClassVar[tuple[str, ...]] = ()
    optional_settings: ClassVar[Mapping[str, str]] = {}
    base_url: ClassVar[str] = ""
    batch_size: ClassVar[int] = 1
    rate: ClassVar[Rate] = Rate(10, 1.0)
    #: stricter limits of some endpoints, by path prefix (relative to base_url); a request to
    #: one waits at its endpoint's limiter and at ``rate``, each shared by all workers
    endpoint_rates: ClassVar[Mapping[str, Rate]] = {}
    mode: ClassVar[Mode] = Mode.STATE
    kinds: ClassVar[frozenset[Kind]] = HYGIENE_KINDS
    concurrency: ClassVar[int] = 1

    def __init__(self, config: DestinationConfig, http: HttpClient) -> None:
        self.config = config
        self.http = http

    @property
    def options(self) -> dict[str, str]:
        """The configured values over ``optional_settings``' defaults (empty means default)."""
        return {**self.optional_settings, **{k: v for k, v in self.config.values.items() if v}}

    def sync(self, changes: list[ContactChange]) -> list[Outcome]:
        """Bring each contact to ``change.state``; one Outcome per change, in order.

        Raise :class:`BadCredentials` for the whole batch, and :class:`Throttled` when nothing was
        sent; once part of the batch was answered, a throttle is :meth:`Outcome.throttled` for the
        contacts left (see :func:`throttled_rest`). The default loops over :meth:`sync_one`: a
        PermanentError is that contact's failure; a RetryableError stops the loop and sends that
        contact and the rest back for a retry; a Throttled stops it and the rest wait, unspent.
        """
        outcomes: list[Outcome] = []
        for change in changes:
            try:
                outcomes.append(self.sync_one(change))
            except Throttled as exc:
                return throttled_rest([*outcomes, *[None] * (len(changes) - len(outcomes))], exc)
            except RetryableError as exc:
                # the destination is failing: the rest of the batch waits for the retry too,
                # rather than spending one doomed request each
                outcomes.extend([Outcome.retry(str(exc))] * (len(changes) - len(outcomes)))
                break
            except PermanentError as exc:
                outcomes.append(Outcome.failed(f"{exc} {exc.body}".strip()))
        return outcomes

    def sync_one(self, change: ContactChange) -> Outcome:
        """Bring one contact to ``change.state`` (for APIs without a batch endpoint)."""
        raise TypeError(f"{type(self).__name__} must implement sync() or sync_one()")

    # -- what the delivery loop reads ----------------------------------------------------------

    @classmethod
    def effective_rate(cls, config: DestinationConfig) -> Rate:
        text = config.get("RATE")
        return Rate.parse(text) if text else cls.rate

    @classmethod
    def effective_batch_size(cls, config: DestinationConfig) -> int:
        text = config.get("BATCH_SIZE")
        return max(1, min(int(text), cls.batch_size)) if text else cls.batch_size

    @classmethod
    def effective_concurrency(cls, config: DestinationConfig, spare: int) -> int:
        """``CONCURRENCY`` as set, else ``concurrency`` within 1 + ``spare`` deliver processes
        (those beyond one per destination): a further job never queues ahead of another
        destination's for a process."""
        text = config.get("CONCURRENCY")
        if not text:
            return min(cls.concurrency, 1 + spare)
        value = int(text)
        if value < 1:
            raise ValueError(text)
        return value

    @classmethod
    def effective_batch_wait(cls, config: DestinationConfig, default: float) -> float:
        """Seconds a deliver job waits for a batch to fill: ``BATCH_WAIT``, or about one
        request interval of ``rate`` (``default`` at least), at most ``BATCH_WAIT_CAP_S``."""
        text = config.get("BATCH_WAIT")
        if text:
            value = float(text)
            if not 0 <= value <= BATCH_WAIT_CAP_S:
                raise ValueError(text)
            return value
        rate = cls.effective_rate(config)
        return min(BATCH_WAIT_CAP_S, max(default, rate.per_seconds / rate.requests))

    @classmethod
    def effective_base_url(cls, config: DestinationConfig) -> str:
        return config.get("BASE_URL") or cls.base_url


def destination_class(name: str) -> type[Destination]:
    """Import ``mappings.<name>`` and return its Destination subclass named ``name``."""
    if not name.isidentifier():
        raise ConfigError([f"destination {name!r} is not a valid module name"])
    try:
        module = importlib.import_module(f"mappings.{name}")
    except ModuleNotFoundError as exc:
        if exc.name in (f"mappings.{name}", "mappings"):
            raise ConfigError([f"destination {name!r}: no module mappings/{name}.py"]) from None
        raise NotConfigured([f"destination {name!r} needs a package: {exc.name}"]) from None
    found = [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type)
        and issubclass(obj, Destination)
        and obj is not Destination
        and getattr(obj, "name", None) == name
    ]
    if len(found) != 1:
        raise ConfigError([f"mappings/{name}.py must define one Destination with name = {name!r}"])
    return found[0]


@dataclass(frozen=True, slots=True)
class EventPart:
    """One request's worth of an event-stream batch: positions in the batch, encoded items."""

    indexes: list[int]
    items: list[bytes]
    changes: list[ContactChange]


def split_events(
    changes: Sequence[ContactChange],
    encode: Callable[[ContactChange, HygieneEvent], Sequence[bytes]],
    max_bytes: int,
    overhead: int = 200,
) -> tuple[list[EventPart], list[Outcome | None]]:
    """Group a batch for an event stream into requests whose bodies stay under ``max_bytes``.

    ``encode`` turns one change's event into its encoded items (one or more per event); items
    are joined with one byte between them and ``overhead`` bytes of envelope around them. A
    change without an event gets a failed outcome; the others' outcomes are left for the caller.

    Events go in the order they occurred (then by key), whatever the batch's order: the events
    of a part sent again after a throttle or a failure, taken in another order or with newer
    events, are split into the same parts as before, so a per-request id derived from them
    (the webhook's ``webhook-id``) is the same too.
    """
    outcomes: list[Outcome | None] = [None] * len(changes)
    parts: list[EventPart] = []
    indexes: list[int] = []
    items: list[bytes] = []
    size = overhead
    timed: list[tuple[float, str, int, HygieneEvent]] = []
    for index, change in enumerate(changes):
        if change.event is None:
            outcomes[index] = Outcome.failed("no hygiene event to send")
        else:
            timed.append((change.event.occurred_at, change.key, index, change.event))
    for _, _, index, event in sorted(timed, key=lambda t: t[:3]):
        change = changes[index]
        encoded = list(encode(change, event))
        grown = sum(len(e) + 1 for e in encoded)
        if indexes and size + grown > max_bytes:
            parts.append(EventPart(indexes, items, [changes[i] for i in indexes]))
            indexes, items, size = [], [], overhead
        indexes.append(index)
        items.extend(encoded)
        size += grown
    if indexes:
        parts.append(EventPart(indexes, items, [changes[i] for i in indexes]))
    return parts, outcomes


def guard(call: Callable[[], T]) -> T | Outcome:
    """Run one call made for some contacts: its result, or a 5xx or a rejected request as the
    outcome of those contacts. Throttled and BadCredentials propagate (the whole destination)."""
    try:
        return call()
    except RetryableError as exc:
        return Outcome.retry(str(exc))
    except PermanentError as exc:
        return Outcome.failed(f"{exc} {exc.body}".strip())


def attempt(send: Callable[..., str], *args: Any) -> Outcome:
    """Run one request of a split batch: its detail on success, else its retry or failure.

    Throttled and BadCredentials propagate (they concern the whole destination: see
    :func:`send_parts`); a retryable or permanent error becomes the outcome of that request's
    contacts only. A refused request may hold one bad contact among good ones: the delivery loop
    splits it to find that one.
    """
    try:
        return Outcome.applied(send(*args))
    except RetryableError as exc:
        return Outcome.retry(str(exc))
    except PermanentError as exc:
        return Outcome.request_refused(f"{exc} {exc.body}".strip())


def throttled_rest(outcomes: Sequence[Outcome | None], exc: Throttled) -> list[Outcome]:
    """The outcomes a batch obtained before ``exc``, and a throttled one for each contact left.

    For a mapping that sends a batch in several requests: what was answered is kept (so it is
    not sent again), the rest waits ``exc.retry_after`` without spending an attempt, and the
    destination pauses. With nothing answered yet, ``exc`` is raised: the whole batch waits.
    """
    if all(o is None for o in outcomes):
        raise exc
    detail = f"throttled ({exc.status})" if exc.status else "throttled"
    return [o or Outcome.throttled(exc.retry_after, detail) for o in outcomes]


def send_parts(
    parts: Sequence[EventPart],
    outcomes: list[Outcome | None],
    send: Callable[[EventPart], str],
) -> list[Outcome]:
    """Send the parts of a split batch in turn (see :func:`split_events`, :func:`attempt`).

    Each part's contacts get that request's outcome. A Throttled answer stops the sending: the
    parts already answered keep their outcomes, that part and the later ones wait unspent
    (:func:`throttled_rest`), and are sent again as the same events with the same ids.
    """
    for part in parts:
        try:
            outcome = attempt(send, part)
        except Throttled as exc:
            return throttled_rest(outcomes, exc)
        for index in part.indexes:
            outcomes[index] = outcome
    return [o or Outcome.failed("not sent") for o in outcomes]


# -- event streams: one vocabulary, so that every analytics tool tells the same story ---------

#: track-event names, after Segment's email spec where it has one; soft bounces, blocks and
#: resubscribes get names of their own so that nothing downstream mistakes them for hard bounces
EVENT_NAMES: Mapping[Kind, str] = {
    Kind.UNSUBSCRIBE: "Unsubscribed",
    Kind.HARD_BOUNCE: "Email Bounced",
    Kind.SPAM_COMPLAINT: "Email Marked as Spam",
    Kind.SOFT_BOUNCE: "Email Soft Bounced",
    Kind.BLOCKED: "Email Blocked",
    Kind.RESUBSCRIBE: "Resubscribed",
}


def valid_user_id_rule(rule: str) -> bool:
    """``email``, ``sha256``, or a template holding ``{email}`` (and no other placeholder)."""
    return rule in ("email", "sha256") or rule.count("{") == rule.count("{email}") > 0


def user_id(rule: str, email: str) -> str:
    """The configured email -> user-id rule: the address, its SHA-256, or a template."""
    if rule == "email":
        return email
    if rule == "sha256":
        return hashlib.sha256(email.strip().lower().encode()).hexdigest()
    return rule.replace("{email}", email)


def hygiene_traits(state: ContactState) -> dict[str, Any]:
    """The address's hygiene as profile traits / user properties."""
    return {
        "email_suppressed": state.suppressed,
        "email_unsubscribed": state.unsubscribed,
        "email_bounced": state.bounced,
        "email_complained": state.complained,
        "email_suppression_reasons": sorted(str(r) for r in state.reasons),
    }


def scrub_address(value: Any, email: str) -> Any:
    """``value`` with ``email`` replaced by ``[address]`` (pseudonymous user ids)."""
    if isinstance(value, str):
        value = re.sub(re.escape(email), "[address]", value, flags=re.IGNORECASE)
    return value


def json_object(text: str) -> dict[str, Any]:
    """A response body's JSON object, or {} when it is not one."""
    try:
        answer = json.loads(text)
    except ValueError:
        return {}
    return answer if isinstance(answer, dict) else {}


def compact_json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


# -- small conversions mapping modules share ----------------------------------------------------


def iso_time(at: float, timespec: str = "milliseconds") -> str:
    """Unix seconds as ISO 8601 UTC with a ``Z`` (``2026-01-01T00:00:00.000Z``)."""
    return datetime.fromtimestamp(at, UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


def comma_list(text: str) -> list[str]:
    """A comma-separated setting as its non-empty, stripped parts."""
    return [part.strip() for part in text.split(",") if part.strip()]


def seconds(value: str | None) -> float:
    """A number of seconds from a setting or header; 0 when missing, negative or not a number."""
    try:
        return max(0.0, float(value or 0))
    except ValueError:
        return 0.0
