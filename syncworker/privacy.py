"""Masking of email addresses for logs, stored error details, job descriptions and Sentry events.

An address is masked in every form the intake accepts (marshmallow's ``Email`` rule: unicode local
parts, IDN domains, TLDs with digits, dotless domains, IP literals, quoted local parts) and in the
encodings it reaches us in: raw, JSON-escaped (``\\u00e9``, ``\\"``), Python-escaped (``\\xc3``),
URL-encoded once or twice (``%40``, ``%2540``), and with a quoted display name (``"Name" <addr>``).
A mask keeps the first character of the local part and the domain (``j***@example.com``); an IP
literal or numeric domain identifies a person's host, so it is masked too (``j***@[***]``).
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["mask", "mask_text", "scrub", "scrub_body"]

_HEX = "[0-9A-Fa-f]"
# the at-sign raw or JSON-escaped (the backslash doubled when JSON is nested in JSON), and
# URL-encoded once or twice
_AT_RAW = r"(?:@|\\+u0040)"
_AT_URL = r"%(?:25)?40"
_AT = rf"(?:{_AT_RAW}|{_AT_URL})"
# one character as JSON or Python's repr escapes it: \u00e9, \xc3, \U0001f600, \/, \'
_ESC = rf"\\+(?:u{_HEX}{{4}}|x{_HEX}{{2}}|U{_HEX}{{8}}|[/'])"
# whitespace and RFC 5322's specials end an unquoted local part (a backslash only when it does
# not start an escape): https://www.rfc-editor.org/rfc/rfc5322#section-3.2.3
_SPECIALS = r"\s\"(),:;<>\[\]@\\"
# An unquoted local part: atext (any unicode but specials; ``%`` included, so URL-encoded text is
# one run) and escapes. The run is greedy and backtracks to its *last* at-sign followed by a
# domain, so a literal ``%40`` inside a local part is masked with the rest of it.
_ATOM = rf"(?:[^{_SPECIALS}]|{_ESC})+"
# URL-encoded, a local part's ``/ ? & = #`` are encoded too (``quote(s, safe="")``, form
# encoding): those end it, so a URL keeps its path and query names (``/contacts/j***%40…``).
_URL_STOPS = r"/?&=#"
_UATOM = rf"[^{_SPECIALS}{_URL_STOPS}]+"
# A quoted local part, raw or escaped (\"...\" in JSON): the closing quote is the opening one. A
# run of backslashes and the character after it are one token, so a body splits only one way.
_QUOTED = r"(?P<q>\\*\")(?P<qbody>(?:[^\"\\\r\n]|\\+[^\\\r\n]){0,400}?)(?P=q)"
# Anything else glued to the at-sign by a special (``<jane>@…``, ``jane(comment)@…``, a quoted
# local part whose opening quote is missing): the whole non-space run is the local part.
_ODD = r"[^\s@]*[(),:;<>\[\]\"\\]"
# A display name in quotes right before ``<``, raw, JSON-escaped or URL-encoded.
_NAME = r"(?P<nq>\\*\")(?:[^\"\\\r\n]|\\+[^\\\r\n]){0,200}?(?P=nq)"
_LT = r"[ \t]*(?:<|\\+u003[cC]|%3[cC])"
# Domain characters: unicode letters and digits, ``-``, ``.``; non-ASCII ones may be escaped or
# URL-encoded (once or twice). ASCII is never encoded in a domain, so ``%2C`` (a comma) or ``%40``
# ends it.
_D_ENCODED = (
    rf"(?:%(?:25)?[89A-Fa-f]{_HEX}|\\+u(?!00[0-7]){_HEX}{{4}}|\\+U{_HEX}{{8}}|\\+x[89A-Fa-f]{_HEX})"
)
_D_FIRST = rf"(?:[^\W_]|{_D_ENCODED})"
_D_UNIT = rf"(?:[\w.\-]|{_D_ENCODED})"
# an address literal, raw or URL-encoded; the closing bracket may have been cut off
_LITERAL = r"(?:\[[^\]\s]{0,100}\]?|%(?:25)?5[Bb](?:[\w.]|%(?:25)?3[Aa]){0,100}(?:%(?:25)?5[Dd])?)"
_DOMAIN = rf"(?P<domain>{_LITERAL}|{_D_FIRST}{_D_UNIT}*+)"

_ADDRESS = re.compile(
    rf"(?:(?P<name>{_NAME})(?P<lt>{_LT}))?"
    # outside a display name, each form is tried only where its run starts: keeps the scan linear
    rf"(?:{_QUOTED}(?P<at1>{_AT})"
    rf"|(?(name)|(?<![^{_SPECIALS}]))(?P<atom>{_ATOM})(?P<at2>{_AT_RAW})"
    rf"|(?(name)|(?<![^{_SPECIALS}{_URL_STOPS}]))(?P<uatom>{_UATOM})(?P<at3>{_AT_URL})"
    rf"|(?(name)|(?<!\S))(?P<odd>{_ODD})(?P<at4>{_AT}))"
    rf"{_DOMAIN}"
)
_ANY_AT = re.compile(_AT)
# the first character of a local part, as written: an escape, a URL-encoded UTF-8 sequence, or one
_FIRST_UNIT = rf"{_ESC}|%[C-Fc-f]{_HEX}(?:%[89ABab]{_HEX})*|%{_HEX}{{2}}|\\.|."
_FIRST = re.compile(_FIRST_UNIT, re.DOTALL)
# A local part masked already, alone, as the value of a ``key=value`` log field (``addr=j***``)
# or behind a special: kept as it is, so that masking a line twice changes nothing.
_MASKED = re.compile(
    rf"(?:.*[=(),:;<>\[\]\"\\])?(?:{_FIRST_UNIT})?\*\*\*[(),:;<>\[\]\"\\]*", re.DOTALL
)
_NUMERIC = re.compile(r"[0-9.]+")
_PARTIAL_WORD = re.compile(r"\S*\Z")


def _first(local: str) -> str:
    found = _FIRST.match(local)
    return found.group() if found else ""


def _masked_domain(domain: str) -> str:
    if domain.startswith("["):
        return "[***]" if domain.endswith("]") else "[***"
    if domain.upper().startswith(("%5B", "%255B")):
        opening = domain[: domain.upper().index("5B") + 2]
        return f"{opening}***" + (opening[:-2] + "5D" if domain.upper().endswith("5D") else "")
    if _NUMERIC.fullmatch(domain) and "." in domain.strip("."):
        return "***"  # an IPv4 address written without brackets
    return domain


def _replace(found: re.Match[str]) -> str:
    parts = []
    if found["name"] is not None:
        parts.append(f"{found['nq']}***{found['nq']}{found['lt']}")
    if found["q"] is not None:
        parts.append(f"{found['q']}{_first(found['qbody'])}***{found['q']}")
    elif (local := found["atom"] or found["uatom"]) is not None:
        parts.append(local if _MASKED.fullmatch(local) else f"{_first(local)}***")
    else:
        odd = found["odd"]
        parts.append(odd if _MASKED.fullmatch(odd) else f"{odd[0]}***")
    parts.append(found["at1"] or found["at2"] or found["at3"] or found["at4"])
    parts.append(_masked_domain(found["domain"]))
    return "".join(parts)


def mask_text(text: str) -> str:
    """Mask every address found in free text (SMTP replies, response bodies, exception messages)."""
    if not _ANY_AT.search(text):
        return text
    out: list[str] = []
    while found := _ADDRESS.search(text):
        out.append(text[: found.start()])
        out.append(_replace(found))
        # go on from a fresh string: the next local part may start right where this domain ended
        text = text[found.end() :]
    out.append(text)
    return "".join(out)


def mask(email: str) -> str:
    """``jane.doe@example.com`` -> ``j***@example.com``; anything without ``@`` -> ``***``."""
    found = _ADDRESS.fullmatch(email)
    if found is not None and found["name"] is None:
        return _replace(found)
    local, sep, domain = email.rpartition("@")
    if not sep or not local:
        return "***"
    return f"{_first(local)}***@{_masked_domain(domain)}"


def scrub(value: Any, other: Callable[[Any], Any] | None = None) -> Any:
    """Return ``value`` with every address masked: in strings, bytes, and inside dicts (keys too),
    lists, tuples and sets, at any depth. Numbers and times are kept; any other object is passed
    to ``other``, by default replaced by its masked ``repr`` (what a serializer such as Sentry's
    would have sent of it)."""
    if isinstance(value, str):
        return mask_text(value)
    if value is None or isinstance(value, bool | int | float | datetime.date | datetime.time):
        return value
    if isinstance(value, Mapping):
        return {
            mask_text(k) if isinstance(k, str) else k: scrub(v, other) for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [scrub(v, other) for v in value]
    if isinstance(value, bytes | bytearray):
        return mask_text(bytes(value).decode("utf-8", "replace"))
    return other(value) if other is not None else mask_text(repr(value))


def scrub_body(text: str, limit: int = 500) -> str:
    """The first ``limit`` characters of a response body, addresses masked.

    Masking comes before the cut, so an address is never cut into a part the masking would
    miss; a long body is masked only over a bounded prefix, whose last partial word is dropped.
    """
    window = limit * 4
    if len(text) > window:
        text = _PARTIAL_WORD.sub("", text[:window])
    return mask_text(text)[:limit]
