"""Small conversions mapping modules share: user ids, hygiene traits, JSON, times, settings."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from typing import Any

from syncworker.events import ContactState

#: what a USER_ID setting may be, for error messages
USER_ID_RULES = "email, sha256 or a {email} template"


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
