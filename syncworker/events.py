"""HygieneEvent and Kind: the one normalized event every ESP module produces."""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Kind(StrEnum):
    HARD_BOUNCE = "hard_bounce"
    SOFT_BOUNCE = "soft_bounce"
    BLOCKED = "blocked"
    UNSUBSCRIBE = "unsubscribe"
    SPAM_COMPLAINT = "spam_complaint"
    RESUBSCRIBE = "resubscribe"


HYGIENE_KINDS: frozenset[Kind] = frozenset(Kind)


MAX_TS = 253_402_300_799  # 9999-12-31: anything later is not a real event time

#: the longest address accepted, in UTF-8 octets: RFC 5321's 64-octet local part, "@" and a
#: 255-octet domain (longer than the 254 a path allows, so nothing an ESP reports is refused for it)
MAX_ADDRESS = 320
#: the longest event key kept as it is, in characters; a longer one (vendor ids are unbounded) is
#: replaced by a hash of itself, so every key the intake makes fits the ledger's dedupe marker
MAX_KEY = 200
#: the longest message id kept as it is (it is compared, never shown); longer ones are hashed
MAX_MESSAGE_ID = 200
#: free text (an SMTP reply, a list id) is cut to this many characters
MAX_TEXT = 1000

# RFC 5322 atext plus every letter, digit and combining mark: RFC 6531 allows UTF-8 local parts,
# and lowercasing some capitals yields a base letter plus a combining mark ("İ" -> "i" U+0307)
_ATOM = r"[-!#$%&'*+/=?^`{}|~\w\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]+"
_LOCAL = re.compile(
    rf'(?:{_ATOM}(?:\.{_ATOM})*|"(?:[\x01-\x08\x0b\x0c\x0e-\x1f!#-\[\]-\x7f]|\\[\x01-\x09\x0b\x0c\x0e-\x7f])*")\Z'
)
# marshmallow's Email domain rule (letters of any script, a TLD of two or more), an IPv4 literal,
# or localhost: what the intake accepted before it had a rule of its own
_DOMAIN = re.compile(
    r"(?:[a-z0-9\u00a1-\uffff](?:[a-z0-9\u00a1-\uffff-]{0,61}[a-z0-9\u00a1-\uffff])?\.)+"
    r"(?:[a-z\u00a1-\uffff]{2,6}|[a-z0-9\u00a1-\uffff-]{2,})\Z"
    r"|\[(25[0-5]|2[0-4]\d|[0-1]?\d?\d)(\.(25[0-5]|2[0-4]\d|[0-1]?\d?\d)){3}\]\Z"
    r"|localhost\Z",
    re.IGNORECASE,
)


def normalize_email(address: str) -> str:
    """The ledger's key for an address: trimmed, display name dropped, lowercased, NFC.

    Local parts are case-sensitive in theory only; ESPs and CRMs match them case-insensitively.
    ``"Jane Doe" <Jane@Example.com>`` and ``jane@example.com`` are one address.
    """
    address = address.strip()
    if address.endswith(">") and "<" in address:
        address = address[address.rindex("<") + 1 : -1]
    return unicodedata.normalize("NFC", address.strip().lower())


def address_problem(address: str) -> str | None:
    """Why ``address`` (already normalized) is not an address the ledger takes, or None.

    The one rule: the intake's address field, the event codec and the worker all use it, so what
    the web accepted the worker applies. The intake checks each address twice (the field, then
    the codec on the event made from it): recent answers are kept, for addresses short enough
    that keeping them costs little.
    """
    if len(address) <= MAX_ADDRESS:
        return _recent_problem(address)
    return _address_problem(address)


def _address_problem(address: str) -> str | None:
    if len(address.encode("utf-8", "surrogatepass")) > MAX_ADDRESS:
        return f"address longer than {MAX_ADDRESS} bytes"
    local, at, domain = address.rpartition("@")
    if not at or not local or not _LOCAL.match(local) or not _DOMAIN.match(domain):
        return "not an email address"
    if address != normalize_email(address):
        return "address not normalized"
    return None


#: a pure function of a string: its recent answers can be kept
_recent_problem = functools.lru_cache(maxsize=4096)(_address_problem)


def bounded(value: str, limit: int, prefix: str = "") -> str:
    """``value`` itself when it has at most ``limit`` characters, else ``prefix`` and a hash of
    it: the same long value always gives the same short one, so keys stay stable across retries."""
    if len(value) <= limit:
        return value
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:40]
    return f"{prefix}x:{digest}"


def content_key(esp: str, email: str, kind: str, occurred_at: float, message_id: str | None) -> str:
    """Event key for ESPs without a stable event id: a hash of what identifies the event."""
    material = f"{esp}\x1f{email}\x1f{kind}\x1f{float(occurred_at):.3f}\x1f{message_id or ''}"
    return f"{esp}:h:" + hashlib.sha256(material.encode("utf-8", "surrogatepass")).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class HygieneEvent:
    """One bounce, block, complaint or (un)subscription, normalized.

    ``key`` dedupes: the ESP's event id where it is stable, else :func:`content_key`.
    ``occurred_at`` is Unix seconds (UTC). ``raw`` is the ESP's own event, kept for inspection.
    ``syncworker.codec`` is its one JSON form (the queue and the stored event) and says what a
    valid event is.
    """

    key: str
    source: str
    esp: str
    email: str
    kind: Kind
    occurred_at: float
    message_id: str | None = None
    reason: str | None = None
    smtp_code: str | None = None
    list_id: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # vendor ids and texts are unbounded: long ones are hashed or cut here, once, so every
        # path that makes an event (parsers, import, replay, the worker's codec) bounds them alike
        if len(self.key) > MAX_KEY:
            object.__setattr__(self, "key", bounded(self.key, MAX_KEY, f"{self.esp[:60]}:"))
        if self.message_id is not None and len(self.message_id) > MAX_MESSAGE_ID:
            object.__setattr__(self, "message_id", bounded(self.message_id, MAX_MESSAGE_ID))
        for name in ("reason", "smtp_code", "list_id"):
            value = getattr(self, name)
            if value is not None and len(value) > MAX_TEXT:
                object.__setattr__(self, name, value[:MAX_TEXT])


MANUAL = "manual"  # the reason recorded by `syncworker suppress` / the API


@dataclass(frozen=True, slots=True)
class ReasonEntry:
    """Why an address is suppressed: the newest event of one reason, with when and where from."""

    reason: str  # a Kind value, or MANUAL
    at: float
    source: str
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class ContactState:
    """An address's current hygiene state as the ledger holds it."""

    email: str
    suppressed: bool
    reasons: dict[str, ReasonEntry]
    updated_at: float
    version: int

    @property
    def unsubscribed(self) -> bool:
        return Kind.UNSUBSCRIBE in self.reasons or MANUAL in self.reasons

    @property
    def bounced(self) -> bool:
        return any(r in self.reasons for r in (Kind.HARD_BOUNCE, Kind.SOFT_BOUNCE, Kind.BLOCKED))

    @property
    def complained(self) -> bool:
        return Kind.SPAM_COMPLAINT in self.reasons
