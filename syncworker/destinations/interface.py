"""The mapping interface: what a mapping module implements and what the delivery loop reads.

A mapping module (``mappings/<name>.py``) defines one :class:`Destination` subclass whose ``name``
is the module name. The delivery loop hands it batches of :class:`ContactChange` and records the
:class:`Outcome` it returns for each. :func:`guard`, :func:`attempt` and :func:`throttled_rest` turn
the errors of calls made for some contacts into those contacts' outcomes (they live here, beside
``Destination.sync``, which uses them).
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar, TypeVar

from syncworker.config import PREFIX, DestinationConfig
from syncworker.destinations.http import HttpClient
from syncworker.destinations.options import Options
from syncworker.errors import NotConfigured, PermanentError, RetryableError, Throttled
from syncworker.events import HYGIENE_KINDS, MANUAL, ContactState, HygieneEvent, Kind

T = TypeVar("T")


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


#: the suppression reasons a CRM opts a contact out for, by default (its OPT_OUT_REASONS)
OPT_OUT_REASONS = (
    Kind.UNSUBSCRIBE.value,
    Kind.SPAM_COMPLAINT.value,
    Kind.HARD_BOUNCE.value,
    MANUAL,
)
#: every suppression reason: the choices of an OPT_OUT_REASONS setting
REASONS = (*(kind.value for kind in Kind), MANUAL)

BATCH_WAIT_CAP_S = 1.0  # longest wait of a deliver job for its batch to fill


class Destination:
    """Base class of a mapping module's destination.

    Set ``name`` (= module name), ``batch_size`` (the API's batch limit), ``rate``,
    ``endpoint_rates``, ``mode`` and ``kinds`` (the hygiene kinds it cares about), and declare the
    settings as ``options: <an Options dataclass>`` (see :mod:`syncworker.destinations.options`):
    they are parsed when the destination is built, and ``settings`` (the required keys, read as
    ``SYNCWORKER_<NAME>_<KEY>``), ``optional_settings`` (key -> default) and ``secret_settings``
    are derived from them. Implement ``sync`` for a batch API, or ``sync_one`` and inherit a
    ``sync`` that loops; override ``check`` for problems no single option shows. Every call must
    be safe to repeat.
    ``concurrency`` is how many deliver jobs may send to it at once (each its own batches): 1
    unless the API takes concurrent requests and their order does not matter.
    ``BASE_URL``, ``RATE`` (e.g. ``100/10``), ``BATCH_SIZE``, ``CONCURRENCY`` and ``BATCH_WAIT``
    may be overridden per deployment.
    """

    name: ClassVar[str]
    settings: ClassVar[tuple[str, ...]] = ()
    optional_settings: ClassVar[Mapping[str, str]] = {}
    secret_settings: ClassVar[frozenset[str]] = frozenset()
    option_class: ClassVar[type[Options]] = Options
    base_url: ClassVar[str] = ""
    batch_size: ClassVar[int] = 1
    rate: ClassVar[Rate] = Rate(10, 1.0)
    #: stricter limits of some endpoints, by path prefix (relative to base_url); a request to
    #: one waits at its endpoint's limiter and at ``rate``, each shared by all workers
    endpoint_rates: ClassVar[Mapping[str, Rate]] = {}
    mode: ClassVar[Mode] = Mode.STATE
    kinds: ClassVar[frozenset[Kind]] = HYGIENE_KINDS
    concurrency: ClassVar[int] = 1
    #: the parsed settings; a subclass narrows the annotation to its own Options dataclass
    options: Options

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "options" not in cls.__dict__.get("__annotations__", {}):
            return
        try:
            declared = typing.get_type_hints(cls)["options"]
        except NameError as exc:
            raise TypeError(f"{cls.__name__}.options: {exc}") from None
        if not (isinstance(declared, type) and issubclass(declared, Options)):
            raise TypeError(f"{cls.__name__}.options must be annotated with an Options subclass")
        for derived in ("settings", "optional_settings", "secret_settings"):
            if derived in cls.__dict__:
                raise TypeError(f"{cls.__name__}.{derived} comes from its options: drop it")
        cls.option_class = declared
        cls.settings = declared.required()
        cls.optional_settings = declared.defaults()
        cls.secret_settings = declared.secrets()

    def __init__(self, config: DestinationConfig, http: HttpClient) -> None:
        """Parse the options; NotConfigured lists every bad one and every :meth:`check` problem."""
        self.config = config
        self.http = http
        self.options, problems = self.option_class.read(config)
        problems += self.check()
        if problems:
            raise NotConfigured(problems)

    def check(self) -> list[str]:
        """Problems of the settings taken together (each option alone is checked already; a bad
        one reads as its default here). Name each by :meth:`setting`."""
        return []

    def setting(self, key: str) -> str:
        """The environment variable of one of this destination's settings."""
        return f"{PREFIX}{self.config.name.upper()}_{key}"

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
