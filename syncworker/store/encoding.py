"""How values are written to Redis as JSON: any value a request carried, however odd (huge
integers, non-string keys, lone surrogates, deep nesting), as JSON orjson can write and read back.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def to_json(value: Any) -> bytes:
    """The JSON of a job's data or a quarantine record. It cannot fail on a value made of JSON
    types, whatever a parser read into it, since a request the intake answered 200 (or kept)
    must be written; a value of another type (a set, an object) is a bug and raises TypeError.

    orjson first (15x the stdlib). It refuses integers beyond 64 bits, nesting deeper than 254,
    keys that are not strings and lone surrogates: the stdlib writes those exactly, unless the
    nesting also exhausts its recursion. Last, a copy that orjson can write (:func:`_writable`).
    """
    try:
        return orjson.dumps(value)
    except TypeError:  # orjson.JSONEncodeError
        pass
    try:
        return json.dumps(value, allow_nan=False).encode()
    except (TypeError, ValueError, RecursionError):
        pass
    return orjson.dumps(_writable(value, MAX_WRITTEN_DEPTH), option=orjson.OPT_NON_STR_KEYS)


MAX_WRITTEN_DEPTH = 128  # levels :func:`_writable` keeps (orjson writes 254; intake takes 64)
_INT64 = range(-(2**63), 2**64)


def _writable(value: Any, depth: int) -> Any:
    """``value`` as orjson can write it: containers nested past ``depth`` replaced by a note,
    integers beyond 64 bits by their digits, lone surrogates by "?", non-finite floats by
    null (as orjson writes them). TypeError for a value of a type JSON does not have."""
    if value is None or isinstance(value, bool | float):
        return value
    if isinstance(value, int):
        return value if value in _INT64 else _digits(value)
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, dict | list | tuple):
        if depth <= 0:
            return f"[{type(value).__name__} nested deeper than {MAX_WRITTEN_DEPTH} levels]"
        if isinstance(value, dict):
            return {_writable_key(k): _writable(v, depth - 1) for k, v in value.items()}
        return [_writable(v, depth - 1) for v in value]
    raise TypeError(f"{type(value).__name__} is not a JSON type")


def _writable_key(key: Any) -> str:
    if isinstance(key, str):
        return str(_writable(key, 0))
    if isinstance(key, int | float | bool) or key is None:  # as json.dumps writes such keys
        return json.dumps(_writable(key, 0))
    raise TypeError(f"a key of type {type(key).__name__} is not JSON")


def _digits(value: int) -> str:
    try:
        return str(value)
    except ValueError:  # more digits than sys.get_int_max_str_digits()
        return f"[an integer of {value.bit_length()} bits]"
