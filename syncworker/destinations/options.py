"""Typed options: a mapping declares its settings once, and reads them parsed and checked.

A mapping's options are a frozen dataclass subclassing :class:`Options`; each field is one
setting ``SYNCWORKER_<NAME>_<FIELD>`` (the field name upper-cased), declared with :func:`option`::

    @dataclass(frozen=True)
    class AcmeOptions(Options):
        api_key: Secret = option(required=True)
        audiences: tuple[str, ...] = option(required=True)  # a comma list
        region: str = option("us", choices=("us", "eu"))
        max_batch_bytes: int = option(450_000, min=4_000, max=500_000)
        create_missing: bool = option(False)

    class Acme(Destination):
        options: AcmeOptions  # parsed once, when the destination is built

The annotation is the type: ``str``, ``int``, ``float``, ``bool`` (true/false, yes/no, on/off,
1/0), ``tuple[str, ...]`` or ``tuple[int, ...]`` (comma lists), :data:`Url` (http or https) and
:data:`Secret` (never shown: ``check-config`` masks it, an error does not quote it). An unset or
empty setting takes the default (``empty=True``: an empty value is kept as set). A bad value is a
problem naming the variable, the value and what is expected; :class:`~syncworker.errors
.NotConfigured` lists every problem of the destination at once, and ``syncworker check-config``
those of every destination. ``Destination.settings`` (the required keys) and
``optional_settings`` (key -> default, as text) are derived from the declaration: the
configuration reads exactly these keys.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NewType, Self

from syncworker.config import PREFIX, DestinationConfig
from syncworker.errors import NotConfigured

#: a credential: masked by ``check-config``, never quoted in an error
Secret = NewType("Secret", str)
#: an absolute http(s) URL
Url = NewType("Url", str)

TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_SPEC = "syncworker.option"
_KINDS: dict[Any, str] = {
    str: "text",
    Secret: "a secret",
    Url: "an http(s) URL",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    tuple[str, ...]: "a comma list",
    tuple[int, ...]: "a comma list of integers",
}
_EMPTY: dict[Any, Any] = {int: 0, float: 0.0, bool: False, tuple[str, ...]: (), tuple[int, ...]: ()}


@dataclass(frozen=True)
class Declared:
    """One declared option, as :func:`option` wrote it down."""

    default: Any = None
    required: bool = False
    choices: tuple[Any, ...] = ()
    min: float | None = None
    max: float | None = None
    pattern: str = ""
    check: Callable[[Any], object] | None = None
    expect: str = ""
    empty: bool = False


def option(
    default: Any = None,
    *,
    required: bool = False,
    choices: tuple[Any, ...] = (),
    min: float | None = None,
    max: float | None = None,
    pattern: str = "",
    check: Callable[[Any], object] | None = None,
    expect: str = "",
    empty: bool = False,
) -> Any:
    """Declare one option: its ``default`` (typed, or None: the type's empty value), whether it
    is ``required``, and what a valid value is: ``choices`` (each item, for a list), a range
    ``min``..``max`` (inclusive; a list: its items), a regular expression ``pattern`` (matched in
    full, on a non-empty value) or a ``check`` answering something false for a bad value,
    described by ``expect`` in the error."""
    declared = Declared(default, required, choices, min, max, pattern, check, expect, empty)
    return dataclasses.field(default=default, metadata={_SPEC: declared})


@dataclass(frozen=True)
class Spec:
    """A declared option with its setting name and resolved type."""

    field: str
    key: str
    kind: Any
    declared: Declared

    @property
    def secret(self) -> bool:
        return self.kind is Secret

    @property
    def default(self) -> Any:
        if self.declared.default is not None:
            return self.declared.default
        return _EMPTY.get(self.kind, "")

    def text(self, value: Any) -> str:
        """``value`` as a setting would spell it."""
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        if isinstance(value, tuple):
            return ",".join(str(v) for v in value)
        return str(value)

    def parse(self, raw: str | None) -> Any:
        """The typed value of ``raw`` (None: unset); ValueError(expectation) when it is bad."""
        text = (raw or "").strip()
        items = [part.strip() for part in text.split(",") if part.strip()]
        if self.kind in (tuple[str, ...], tuple[int, ...]) and not items:
            text = ""
        if not text:
            if raw is not None and raw == "" and self.declared.empty:
                return _EMPTY.get(self.kind, "")
            if self.declared.required:
                raise Missing
            return self.default
        value = self._convert(text, items)
        self._validate(value)
        return value

    def _convert(self, text: str, items: list[str]) -> Any:
        kind = self.kind
        try:
            if kind is bool:
                if text.lower() not in (*TRUE, *FALSE):
                    raise ValueError
                return text.lower() in TRUE
            if kind is int:
                return int(text)
            if kind is float:
                number = float(text)
                if not math.isfinite(number):
                    raise ValueError
                return number
            if kind == tuple[int, ...]:
                return tuple(int(item) for item in items)
            if kind == tuple[str, ...]:
                return tuple(items)
        except ValueError:
            raise ValueError(_KINDS[kind]) from None
        if kind is Url and not re.match(r"https?://[^/\s]+", text):
            raise ValueError(_KINDS[kind])
        return text

    def _validate(self, value: Any) -> None:
        d = self.declared
        values = value if isinstance(value, tuple) else (value,)
        if d.choices and any(v not in d.choices for v in values):
            raise ValueError(d.expect or "one of " + ", ".join(str(c) for c in d.choices))
        low, high = d.min, d.max
        if any((low is not None and v < low) or (high is not None and v > high) for v in values):
            if low is not None and high is not None:
                raise ValueError(d.expect or f"{self.text(low)}..{self.text(high)}")
            bound = f"at least {self.text(low)}" if low is not None else ""
            raise ValueError(d.expect or bound or f"at most {self.text(high)}")
        if d.pattern and any(not re.fullmatch(d.pattern, str(v)) for v in values):
            raise ValueError(d.expect or f"matching {d.pattern}")
        if d.check is not None and not d.check(value):
            raise ValueError(d.expect or "a valid value")


class Missing(Exception):
    """A required option is unset."""


_specs: dict[type, tuple[Spec, ...]] = {}


@dataclass(frozen=True)
class Options:
    """Base of a mapping's options (see the module docstring). No options: this class itself."""

    @classmethod
    def specs(cls) -> tuple[Spec, ...]:
        """The declared options, in declaration order."""
        found = _specs.get(cls)
        if found is None:
            hints = typing.get_type_hints(cls)
            found = tuple(
                Spec(f.name, f.name.upper(), hints[f.name], _declared(cls, f, hints[f.name]))
                for f in dataclasses.fields(cls)
            )
            _specs[cls] = found
        return found

    @classmethod
    def read(cls, config: DestinationConfig) -> tuple[Self, list[str]]:
        """The options of ``config``, and every problem (a bad value reads as its default)."""
        values: dict[str, Any] = {}
        problems: list[str] = []
        for spec in cls.specs():
            raw = config.values.get(spec.key)
            env = f"{PREFIX}{config.name.upper()}_{spec.key}"
            try:
                values[spec.field] = spec.parse(raw)
            except Missing:
                problems.append(f"{env} is required by {config.name!r}")
                values[spec.field] = spec.default
            except ValueError as exc:
                shown = "" if spec.secret else f"={raw!r}"
                problems.append(f"{env}{shown}: expected {exc}")
                values[spec.field] = spec.default
        return cls(**values), problems

    @classmethod
    def parse(cls, config: DestinationConfig) -> Self:
        """The options of ``config``; NotConfigured listing every bad one."""
        options, problems = cls.read(config)
        if problems:
            raise NotConfigured(problems)
        return options

    @classmethod
    def required(cls) -> tuple[str, ...]:
        return tuple(s.key for s in cls.specs() if s.declared.required)

    @classmethod
    def defaults(cls) -> Mapping[str, str]:
        """Optional keys -> their default as a setting would spell it."""
        return {s.key: s.text(s.default) for s in cls.specs() if not s.declared.required}

    @classmethod
    def secrets(cls) -> frozenset[str]:
        return frozenset(s.key for s in cls.specs() if s.secret)


def _declared(cls: type, field: dataclasses.Field[Any], kind: Any) -> Declared:
    if kind not in _KINDS:
        known = "str, int, float, bool, tuple[str, ...], tuple[int, ...], Url, Secret"
        raise TypeError(f"{cls.__name__}.{field.name}: {kind} is not an option type ({known})")
    declared = field.metadata.get(_SPEC)
    if not isinstance(declared, Declared):
        raise TypeError(f"{cls.__name__}.{field.name}: declare it with option(...)")
    return declared
