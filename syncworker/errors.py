"""The one error tree of syncworker.

SyncWorkerError
├── ConfigError           at startup; lists every bad or missing setting at once
│   └── NotConfigured     an enabled source or destination lacks a setting; startup names it
├── IntakeError           web/app.py answers it as JSON {"error", "detail"} with .status
│   ├── UnknownSource     404: no source of that name is configured
│   ├── SignatureInvalid  401
│   ├── PayloadTooLarge   413
│   ├── PayloadInvalid    400; detail = what is wrong (marshmallow messages where they apply)
│   └── Unavailable       503 + Retry-After: a host a verified request needs did not answer
└── DestinationError      carries destination, HTTP status, first 500 chars of the body
    ├── Throttled         429 / quota: pause until retry_after; no retry is spent
    ├── BadCredentials    401/403: pause and alert; contacts stay pending
    ├── RetryableError    timeout, 5xx: the contacts go back to pending with backoff
    └── PermanentError    other 4xx: the contacts' sync is recorded failed and dead-lettered
"""

from __future__ import annotations

from typing import Any

from syncworker.privacy import mask_text, scrub_body


class SyncWorkerError(Exception):
    """Base of every error syncworker raises on purpose."""


class ConfigError(SyncWorkerError):
    """One or more settings are missing or wrong; ``problems`` lists every one."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid configuration:\n  - " + "\n  - ".join(self.problems))


class NotConfigured(ConfigError):
    """An enabled source or destination lacks a setting it needs."""


class IntakeError(SyncWorkerError):
    """A request the intake refuses: answered with ``status`` and ``{"error", "detail"}``."""

    status = 400
    error = "bad_request"

    def __init_subclass__(cls, *, status: int, error: str, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.status, cls.error = status, error

    def __init__(self, detail: Any = None) -> None:
        self.detail = detail
        super().__init__(f"{self.error}: {detail}")


class UnknownSource(IntakeError, status=404, error="unknown_source"):
    """No source of that name is configured."""


class SignatureInvalid(IntakeError, status=401, error="signature_invalid"):
    """The request's signature or credentials do not verify (or were used already)."""


class PayloadTooLarge(IntakeError, status=413, error="payload_too_large"):
    """The body is larger than ``SYNCWORKER_MAX_BODY_BYTES``."""


class PayloadInvalid(IntakeError, status=400, error="payload_invalid"):
    """A verified body that cannot be read; ``detail`` says what is wrong."""


class Unavailable(IntakeError, status=503, error="unavailable"):
    """A host a verified request depends on (an SNS certificate, a SubscribeURL) did not answer:
    503 with Retry-After, so the ESP delivers again, as when Redis is down."""


class DestinationError(SyncWorkerError):
    """A destination call failed; the subclass says what the delivery loop does about it."""

    def __init__(
        self,
        destination: str,
        message: str,
        *,
        status: int | None = None,
        body: str = "",
    ) -> None:
        self.destination = destination
        self.status = status
        # masked here, once for every mapping: a destination's answer often echoes the address
        # (its own or another contact's), and both end up in logs, sync status and Sentry
        self.body = scrub_body(body, 500)
        message = mask_text(message)
        super().__init__(f"{destination}: {message}" + (f" (HTTP {status})" if status else ""))


class Throttled(DestinationError):
    """Rate limited or over quota: pause for ``retry_after`` seconds; no retry is spent."""

    def __init__(
        self,
        destination: str,
        retry_after: float,
        message: str = "throttled",
        *,
        status: int | None = None,
        body: str = "",
    ) -> None:
        self.retry_after = max(0.0, float(retry_after))
        super().__init__(destination, message, status=status, body=body)


class BadCredentials(DestinationError):
    """401/403: credentials are wrong or lack a scope; the destination pauses and alerts."""


class RetryableError(DestinationError):
    """Timeout, connection error or 5xx: try again later with backoff."""


class PermanentError(DestinationError):
    """A 4xx that repeating cannot fix: record the failure and dead-letter the contacts."""
