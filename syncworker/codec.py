"""The one JSON form of a HygieneEvent: what the web queues, what the worker loads, what the ledger
stores for event-stream destinations, and the one definition of a valid event that all of them use.

The web checks each parsed event with :func:`problem` before it answers, and the worker loads each
queued event with :func:`load`, which applies the same checks: an event the web accepted is never
refused by the worker.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from syncworker.events import MAX_TS, HygieneEvent, Kind, address_problem

#: longest source and ESP names (configuration slugs)
MAX_NAME = 64
_KINDS = {kind.value: kind for kind in Kind}
_TEXTS = ("message_id", "reason", "smtp_code", "list_id")
_NUMBERS = (int, float)


class InvalidEvent(ValueError):
    """An event that breaks the codec's rules; its message says which, without the address."""


def dump(event: HygieneEvent, *, raw: bool = False) -> dict[str, Any]:
    """The queue and stored form (JSON types only). ``raw`` (the ESP's own event) is left out
    unless asked for: nothing downstream reads it, and in a batch it would be most of the size."""
    form: dict[str, Any] = {
        "key": event.key,
        "source": event.source,
        "esp": event.esp,
        "email": event.email,
        "kind": event.kind.value,
        "occurred_at": event.occurred_at,
        "message_id": event.message_id,
        "reason": event.reason,
        "smtp_code": event.smtp_code,
        "list_id": event.list_id,
    }
    if raw:
        form["raw"] = event.raw
    return form


def problem(event: HygieneEvent) -> str | None:
    """Why ``event`` is not one the ledger can apply, or None. Never names the address."""
    if not event.key:
        return "key is empty"
    if not 0 < len(event.source) <= MAX_NAME or not 0 < len(event.esp) <= MAX_NAME:
        return f"source and esp must have 1 to {MAX_NAME} characters"
    if not isinstance(event.kind, Kind):
        return "kind is not a hygiene kind"
    at = event.occurred_at
    if type(at) is not float and (isinstance(at, bool) or not isinstance(at, _NUMBERS)):
        return "occurred_at is not a number"
    if not (math.isfinite(at) and 0 <= at <= MAX_TS):
        return "occurred_at is outside 1970-9999"
    texts = (event.message_id, event.reason, event.smtp_code, event.list_id)
    for i, value in enumerate(texts):
        if value is not None and not isinstance(value, str):
            return f"{_TEXTS[i]} is not text"
    if _unencodable((event.key, event.email, event.source, event.esp, *texts)):
        return "text is not valid Unicode"
    return address_problem(event.email)


def load(form: Any) -> HygieneEvent:
    """A queued or stored event back as a HygieneEvent; :class:`InvalidEvent` if it breaks a rule.

    Also reads events stored before ``reason`` and ``smtp_code`` were kept apart (one ``detail``).
    """
    if not isinstance(form, Mapping):
        raise InvalidEvent("event is not a JSON object")
    for name in ("key", "source", "esp", "email"):
        if not isinstance(form.get(name), str):
            raise InvalidEvent(f"{name} is missing or not text")
    kind = _KINDS.get(form.get("kind"))  # type: ignore[arg-type]
    if kind is None:
        raise InvalidEvent("kind is not a hygiene kind")
    at = form.get("occurred_at")
    if isinstance(at, bool) or not isinstance(at, int | float):
        raise InvalidEvent("occurred_at is not a number")
    texts: dict[str, Any] = {name: form.get(name) for name in _TEXTS}
    if "reason" not in form and "smtp_code" not in form:
        texts["reason"] = form.get("detail")
    raw = form.get("raw")
    event = HygieneEvent(
        key=form["key"],
        source=form["source"],
        esp=form["esp"],
        email=form["email"],
        kind=kind,
        occurred_at=float(at),
        raw=raw if isinstance(raw, dict) else {},
        **texts,
    )
    why = problem(event)
    if why is not None:
        raise InvalidEvent(why)
    return event


def _unencodable(values: tuple[str | None, ...]) -> bool:
    """Lone surrogates (JSON's ``\\ud800``) cannot be written to Redis or logged as UTF-8."""
    text = "".join([value for value in values if value])
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
