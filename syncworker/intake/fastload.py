"""A precompiled fast path for ``Schema.load`` of one well-formed item.

``marshmallow`` stays the definition of a valid item: :func:`loader` compiles a schema into a
function that loads an item the way the schema would, for the common case only, and returns
``None`` for anything it cannot vouch for (a missing or null field, a value of another type, a
value a validator refuses, ...). The caller then loads that item with the schema itself, which
gives the same data for an item the fast path took, and its own error messages for one it did
not. So the fast path never refuses anything: it only skips marshmallow's machinery (an error
store, a closure and several method calls per field) for items that pass.

A schema with anything the fast path does not reproduce (hooks, ``many``, ``partial``, nested
attribute names, unknown fields kept or refused) gets no fast path: :func:`loader` returns
``None`` and every item goes through ``schema.load``. Fields of the common types (``Raw``,
``String``, ``Boolean``, ``Float`` and its validators, the intake's ``Address``) are checked
inline; any other field is loaded with its own ``deserialize``, as the schema would call it.
``tests/intake/test_fastload.py`` checks that both paths agree on random items.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, missing, validate

from syncworker.events import address_problem, normalize_email
from syncworker.intake.fields import Address

#: what a compiled field gives for a value it cannot vouch for
_REFUSED: Any = object()

Loader = Callable[[dict[str, Any]], dict[str, Any] | None]
#: (value, item) -> the loaded value or _REFUSED
_Check = Callable[[Any, dict[str, Any]], Any]
_ATTRIBUTE = "_syncworker_fast_loader"


def loader(schema: Schema) -> Loader | None:
    """The fast path of ``schema``, compiled once and kept on it; ``None`` if it has none."""
    try:
        return getattr(schema, _ATTRIBUTE)  # type: ignore[no-any-return]
    except AttributeError:
        pass
    compiled = _compile(schema)
    setattr(schema, _ATTRIBUTE, compiled)
    return compiled


def _compile(schema: Schema) -> Loader | None:
    if (
        schema.many
        or schema.partial is not None  # marshmallow hands any other value to Nested fields
        or schema.unknown != EXCLUDE
        or any(schema._hooks.values())
    ):
        return None
    # per field: its key in the item, its key in the data, its check, whether the check also
    # takes a missing or null value (a field's own code does), required, load_default, allow_none
    plan: list[tuple[str, str, _Check, bool, bool, Any, bool]] = []
    for attr_name, field in schema.load_fields.items():
        key = field.data_key if field.data_key is not None else attr_name
        target = field.attribute or attr_name
        if "." in target:  # marshmallow nests the value under each part
            return None
        check, takes_all = _check(field, key)
        plan.append(
            (key, target, check, takes_all, field.required, field.load_default, field.allow_none)
        )

    def load(item: dict[str, Any]) -> dict[str, Any] | None:
        data: dict[str, Any] = {}
        for key, target, check, takes_all, required, default, allow_none in plan:
            value = item.get(key, missing)
            if takes_all:
                loaded = check(value, item)
                if loaded is _REFUSED:
                    return None
                if loaded is not missing:
                    data[target] = loaded
            elif value is missing:
                if required:
                    return None
                if default is not missing:
                    data[target] = default() if callable(default) else default
            elif value is None:
                if not allow_none:
                    return None
                data[target] = None
            else:
                loaded = check(value, item)
                if loaded is _REFUSED:
                    return None
                data[target] = loaded
        return data

    return load


def _check(field: fields.Field[Any], key: str) -> tuple[_Check, bool]:
    """How a present, non-null value of ``field`` is loaded, and whether a missing or null one
    goes that way too (the field's own ``deserialize`` takes all three)."""
    kind = type(field)
    if not field.pre_load and not field.post_load:
        if kind is fields.Raw and not field.validators:
            return _raw, False
        if kind is fields.String and not field.validators:
            return _string, False
        if kind is fields.Boolean and not field.validators and _default_truths(field):
            return _boolean, False
        if kind is Address and not field.validators:
            return _address, False
        if _plain_float(field):
            return _float(field.validators), False
    return _generic(field, key), True


def _raw(value: Any, item: dict[str, Any]) -> Any:
    return value


def _string(value: Any, item: dict[str, Any]) -> Any:
    return value if type(value) is str else _REFUSED


def _boolean(value: Any, item: dict[str, Any]) -> Any:
    return value if type(value) is bool else _REFUSED


def _default_truths(field: fields.Field[Any]) -> bool:
    """A ``Boolean`` with marshmallow's own truthy and falsy sets, which hold True and False."""
    return (
        isinstance(field, fields.Boolean)
        and field.truthy is fields.Boolean.truthy
        and field.falsy is fields.Boolean.falsy
    )


def _address(value: Any, item: dict[str, Any]) -> Any:
    if type(value) is not str:
        return _REFUSED
    address = normalize_email(value)
    return address if address_problem(address) is None else _REFUSED


def _plain_float(field: fields.Field[Any]) -> bool:
    """A ``Float`` (or a subclass that only sets its arguments) that refuses NaN and infinities."""
    return (
        isinstance(field, fields.Float)
        and not field.allow_nan
        and all(
            getattr(type(field), name) is getattr(fields.Float, name)
            for name in ("deserialize", "_deserialize", "_validated", "_format_num", "_validate")
        )
    )


def _json_float(value: Any) -> Any:
    """A JSON number (not a string, not a bool) as a finite float, else ``_REFUSED``: an
    infinity or an integer past a float's range is refused as ``fields.Float`` refuses it."""
    kind = type(value)
    if kind is not int and kind is not float:
        return _REFUSED
    try:
        number = float(value)
    except OverflowError:
        return _REFUSED
    return number if math.isfinite(number) else _REFUSED


def _float(validators: list[Callable[[Any], Any]]) -> _Check:
    """JSON numbers only (a numeric string goes to marshmallow, which also takes it): the
    number as a float, checked with the field's validators; an inclusive ``Range`` inline."""
    bounds = validators[0] if len(validators) == 1 else None
    if (
        type(bounds) is validate.Range
        and bounds.min is not None
        and bounds.max is not None
        and bounds.min_inclusive
        and bounds.max_inclusive
    ):
        low, high = bounds.min, bounds.max

        def in_range(value: Any, item: dict[str, Any]) -> Any:
            number = _json_float(value)
            if number is _REFUSED or not low <= number <= high:
                return _REFUSED
            return number

        return in_range

    def check(value: Any, item: dict[str, Any]) -> Any:
        number = _json_float(value)
        if number is _REFUSED:
            return _REFUSED
        try:
            for validator in validators:
                if validator(number) is False:  # refusing too much only costs the slow path
                    return _REFUSED
        except ValidationError:
            return _REFUSED
        return number

    return check


def _generic(field: fields.Field[Any], key: str) -> _Check:
    """The field's own ``deserialize``, called as the schema calls it (``missing`` included)."""

    def check(value: Any, item: dict[str, Any]) -> Any:
        try:
            return field.deserialize(value, key, item)
        except ValidationError:
            return _REFUSED

    return check
