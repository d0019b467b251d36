"""OAuth 2: one access token per destination, refreshed when it runs out or is rejected.

:class:`OAuthToken` gets a token from the vendor's token endpoint (the ``refresh_token`` grant,
or ``client_credentials``), keeps it until ``expires_in`` less a margin (until rejected, when the
answer has no ``expires_in`` and no lifetime is given), and :meth:`OAuthToken.request` sends a
call with it: a 401 renews the token once and repeats the call; a second 401 is
:class:`BadCredentials`. A refused refresh (400/401/403) is BadCredentials too. Threads share
one holder safely: one refresh at a time, and a token rejected by several calls at once is
renewed once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

import requests

from syncworker.destinations.http import HttpClient
from syncworker.errors import BadCredentials

Grant = Literal["refresh_token", "client_credentials"]


class OAuthToken:
    """An access token from ``token_url`` (relative to the client's base URL, or absolute).

    ``credentials``: the fields the grant sends (``client_id``, ``client_secret``, and
    ``refresh_token`` for that grant; ``scope`` if the vendor wants one). ``as_json`` sends them
    as a JSON body instead of a form; ``grant_type=False`` leaves the ``grant_type`` field out
    (RD Station's endpoint has none). ``lifetime``: seconds a token lives when the answer has no
    ``expires_in`` (None: until rejected). ``check``: called with a refused token answer before
    it becomes BadCredentials (to raise, say, Throttled for a vendor's limit).
    """

    def __init__(
        self,
        http: HttpClient,
        token_url: str,
        credentials: Mapping[str, str],
        *,
        grant: Grant = "refresh_token",
        as_json: bool = False,
        grant_type: bool = True,
        lifetime: float | None = None,
        margin: float = 60.0,
        check: Callable[[requests.Response], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.http = http
        self.token_url = token_url
        self.fields = {**({"grant_type": grant} if grant_type else {}), **credentials}
        self.as_json = as_json
        self.lifetime = lifetime
        self.margin = margin
        self.check = check
        self.clock = clock
        #: the last token answer (e.g. Salesforce's ``instance_url``)
        self.answer: dict[str, Any] = {}
        #: when the token is renewed before use (``clock`` time); None: only once rejected
        self.expires_at: float | None = None
        self._token: str | None = None
        self._lock = threading.Lock()

    def token(self) -> str:
        """A live access token: the cached one, or a new one once it is past its expiry."""
        with self._lock:
            due = self.expires_at is not None and self.clock() >= self.expires_at
            if self._token is None or due:
                self._refresh()
            assert self._token is not None
            return self._token

    def reject(self, token: str) -> None:
        """``token`` was refused: the next :meth:`token` gets a new one (unless another call has
        renewed it meanwhile)."""
        with self._lock:
            if self._token == token:
                self._token = None

    def request(
        self, method: str, url: str, *, allow: tuple[int, ...] = (), **kwargs: Any
    ) -> requests.Response:
        """``http.request`` with ``Authorization: Bearer <token>``; a 401 renews the token and
        repeats the call once, a second 401 is BadCredentials. ``allow`` as for HttpClient."""
        headers = dict(kwargs.pop("headers", None) or {})
        for again in (False, True):
            token = self.token()
            headers["Authorization"] = f"Bearer {token}"
            response = self.http.request(
                method, url, headers=headers, allow=(401, *allow), **kwargs
            )
            if response.status_code != 401:
                return response
            if not again:  # expired or revoked: renew it and repeat this call once
                self.reject(token)
        raise BadCredentials(
            self.http.destination, "access token rejected", status=401, body=response.text
        )

    def _refresh(self) -> None:
        body = {"json": self.fields} if self.as_json else {"data": self.fields}
        response = self.http.post(self.token_url, allow=(400, 401, 403), **body)
        if response.status_code >= 400:
            if self.check is not None:
                self.check(response)
            raise BadCredentials(
                self.http.destination,
                "token refresh rejected",
                status=response.status_code,
                body=response.text,
            )
        try:
            answer = response.json()
        except ValueError:
            answer = {}
        self.answer = answer if isinstance(answer, dict) else {}
        token = str(self.answer.get("access_token") or "")
        if not token and not self.http.dry_run:
            raise BadCredentials(self.http.destination, "no access_token in the token answer")
        lifetime = _seconds(self.answer.get("expires_in")) or self.lifetime
        self.expires_at = None
        if lifetime is not None:
            self.expires_at = self.clock() + lifetime - min(self.margin, lifetime / 10)
        self._token = token


def _seconds(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None
