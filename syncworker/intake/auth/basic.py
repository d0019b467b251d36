"""HTTP Basic credentials set in the webhook URL (Postmark, Mailjet, SparkPost, EmailLabs, Brevo).

Several pairs may be configured while they rotate; every pair is compared in constant time.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable

from syncworker.errors import SignatureInvalid
from syncworker.intake.contract import EspParser, InboundRequest, equal


def check_basic_auth(request: InboundRequest, credentials: Iterable[tuple[str, str]]) -> None:
    """Accept the request if its Basic credentials match any configured pair."""
    user, password = basic_credentials(request)
    ok = False
    for want_user, want_password in credentials:
        # no early exit: every configured pair is compared
        ok |= equal(user, want_user) & equal(password, want_password)
    if not ok:
        raise SignatureInvalid("basic auth credentials do not match")


def basic_credentials(request: InboundRequest) -> tuple[str, str]:
    """The user and password of the request's Basic Authorization header; SignatureInvalid if
    there is none or it is malformed."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        raise SignatureInvalid("basic auth credentials missing")
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except ValueError:  # binascii.Error, UnicodeDecodeError, and non-ASCII input
        raise SignatureInvalid("basic auth header malformed") from None
    user, sep, password = decoded.partition(":")
    if not sep:
        raise SignatureInvalid("basic auth header malformed")
    return user, password


class BasicAuthParser(EspParser):
    """Base of ESP modules whose requests carry HTTP Basic credentials set in the webhook URL."""

    settings = ("USERNAME", "PASSWORD")

    def verify(self, request: InboundRequest) -> None:
        # USERNAME and PASSWORD rotate together: a pair is accepted only from one generation
        pairs = [(user, password) for user, password in self.generations("USERNAME", "PASSWORD")]
        check_basic_auth(request, pairs)
