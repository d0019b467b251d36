"""HygieneEvent and Kind: the one normalized event every ESP module produces."""

from __future__ import annotations

import hashlib
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


def normalize_email(address: str) -> str:
    """The ledger's key for an address: trimmed, display name dropped, lowercased.

    Local parts are case-sensitive in theory only; ESPs and CRMs match them case-insensitively.
    """
    address = address.strip()
    if address.endswith(">") and "<" in address:
        address = address[address.rindex("<") + 1 : -1]
    return address.strip().lower()


def content_key(esp: str, email: str, kind: str, occurred_at: float, message_id: str | None) -> str:
    """Event key for ESPs without a stable event id: a hash of what identifies the event."""
    material = f"{esp}\x1f{email}\x1f{kind}\x1f{occurred_at:.3f}\x1f{message_id or ''}"
    return f"{esp}:h:" + hashlib.sha256(material.encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class HygieneEvent:
    """One bounce, block, complaint or (un)subscription, normalized.

    ``key`` dedupes: the ESP's event id where it is stable, else :func:`content_key`.
    ``occurred_at`` is Unix seconds (UTC). ``raw`` is the ESP's own event, kept for inspection.
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

    def to_dict(self, *, raw: bool = False) -> dict[str, Any]:
        """The queue form (JSON types only); ``schemas.HygieneEventSchema`` loads it back.

        ``raw`` is left out unless asked for: the ledger keeps none of it, and in a batch of ESP
        events it would be most of the job's size.
        """
        form: dict[str, Any] = {
            "key": self.key,
            "source": self.source,
            "esp": self.esp,
            "email": self.email,
            "kind": self.kind.value,
            "occurred_at": self.occurred_at,
            "message_id": self.message_id,
            "reason": self.reason,
            "smtp_code": self.smtp_code,
            "list_id": self.list_id,
        }
        if raw:
            form["raw"] = self.raw
        return form


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
