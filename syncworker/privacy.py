"""Masking of email addresses for logs, job descriptions and Sentry events."""

from __future__ import annotations

import re
from typing import Any

_LOCAL = r"[A-Za-z0-9._%+\-=!#$&'*/?^`{|}~]"
_EMAIL = re.compile(rf"({_LOCAL}){_LOCAL}*@([A-Za-z0-9.\-]+\.[A-Za-z]{{2,}})")


def mask(email: str) -> str:
    """``jane.doe@example.com`` -> ``j***@example.com``; anything without ``@`` -> ``***``."""
    local, sep, domain = email.rpartition("@")
    if not sep or not local:
        return "***"
    return f"{local[0]}***@{domain}"


def mask_text(text: str) -> str:
    """Mask every address found in free text (SMTP replies, exception messages)."""
    return _EMAIL.sub(r"\1***@\2", text)


def scrub(value: Any) -> Any:
    """Return ``value`` with every address inside strings, lists and dicts masked."""
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, dict):
        return {scrub(k) if isinstance(k, str) else k: scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v) for v in value]
    return value
