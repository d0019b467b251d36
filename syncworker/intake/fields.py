"""Marshmallow fields ESP schemas share: ``Address``, the intake's one rule for an email address."""

from __future__ import annotations

from typing import Any

from marshmallow import ValidationError, fields

from syncworker.events import address_problem, normalize_email


class Address(fields.Field[str]):
    """An email address, normalized (display name dropped, lowercased, NFC) and then checked with
    :func:`~syncworker.events.address_problem`: the rule the event codec and the worker apply, so an
    address the intake takes is one the ledger takes. ``"Jane" <Jane@Example.com>`` loads as
    ``jane@example.com``."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> str:
        return load_address(value)


def load_address(value: Any) -> str:
    """``value`` as a normalized address; ValidationError unless the one rule accepts it."""
    if not isinstance(value, str):
        raise ValidationError("Not a valid email address.")
    address = normalize_email(value)
    if address_problem(address) is not None:
        raise ValidationError("Not a valid email address.")
    return address
