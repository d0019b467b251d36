"""The HTTP client a mapping calls through, and how a throttled answer says when to come back."""

from __future__ import annotations

import email.utils
import json
import logging
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import requests

from syncworker.errors import BadCredentials, PermanentError, RetryableError, Throttled
from syncworker.privacy import mask_text, scrub_body

log = logging.getLogger("syncworker.destinations")


class HttpClient:
    """The HTTP client a mapping calls through: base URL, timeouts, shared rate limit, errors.

    Every request first waits at the destination's shared rate limiter (which raises
    :class:`Throttled` when the wait would be long), then is classified: 429 -> Throttled (honouring
    Retry-After / X-RateLimit-Reset), 401/403 -> BadCredentials, 408/5xx/timeouts -> RetryableError,
    other 4xx -> PermanentError. Statuses listed in ``allow`` are returned for the caller to read.
    """

    def __init__(
        self,
        destination: str,
        base_url: str,
        *,
        session: requests.Session | None = None,
        timeout: float = 15.0,
        before_request: Callable[[str], None] | None = None,
        headers: Mapping[str, str] | None = None,
        dry_run: bool = False,
    ) -> None:
        self.destination = destination
        self.base_url = base_url.rstrip("/")
        self.session = session or requests.Session()
        self.timeout = timeout
        self.before_request = before_request
        if headers:
            self.session.headers.update(headers)
        self.session.headers.setdefault("User-Agent", "syncworker")
        self.requests_made = 0
        #: dry run: nothing is sent; each request is logged (addresses masked) and answered 200 {}
        self.dry_run = dry_run

    def request(
        self,
        method: str,
        path: str,
        *,
        allow: Iterable[int] = (),
        **kwargs: Any,
    ) -> requests.Response:
        absolute = path.startswith(("http://", "https://"))
        if self.before_request is not None:
            # the limiter sees the path relative to base_url (an absolute URL: its own path)
            self.before_request(urllib.parse.urlsplit(path).path if absolute else path)
        url = path if absolute else self.base_url + path
        kwargs.setdefault("timeout", self.timeout)
        self.requests_made += 1
        if self.dry_run:
            return self._dry_run(method, url, kwargs)
        try:
            response = self.session.request(method, url, **kwargs)
        except requests.Timeout as exc:
            raise RetryableError(self.destination, f"timeout: {type(exc).__name__}") from None
        except requests.RequestException as exc:
            message = f"connection failed: {type(exc).__name__}"
            raise RetryableError(self.destination, message) from None
        status = response.status_code
        if status < 400 or status in set(allow):
            return response
        body = scrub_body(response.text)  # masked before it is cut (DestinationError keeps 500)
        if status == 429:
            raise Throttled(
                self.destination, retry_after_seconds(response), status=status, body=body
            )
        if status in (401, 403):
            raise BadCredentials(self.destination, "credentials rejected", status=status, body=body)
        if status == 408 or status >= 500:
            raise RetryableError(self.destination, "server error", status=status, body=body)
        raise PermanentError(self.destination, "request rejected", status=status, body=body)

    def _dry_run(self, method: str, url: str, kwargs: dict[str, Any]) -> requests.Response:
        payload = kwargs.get("json", kwargs.get("data"))
        if isinstance(payload, bytes | bytearray):
            text = payload.decode("utf-8", "replace")
        else:
            text = json.dumps(payload, default=str) if payload is not None else ""
        params = kwargs.get("params")
        log.info(
            "dry-run dest=%s request=%s %s params=%s body=%s",
            self.destination,
            method,
            mask_text(urllib.parse.unquote(url.split("?", 1)[0])),
            mask_text(json.dumps(params, default=str)) if params else "",
            mask_text(text)[:2000],
        )
        response = requests.Response()
        response.status_code = 200
        response._content = b"{}"
        response.headers["Content-Type"] = "application/json"
        response.url = url
        return response

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("PUT", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("DELETE", path, **kwargs)


def retry_after_seconds(response: requests.Response, default: float = 10.0) -> float:
    """Seconds to wait from ``Retry-After`` (seconds or HTTP date), else ``X-RateLimit-Reset``."""
    value = response.headers.get("Retry-After")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            parsed = email.utils.parsedate_to_datetime(value) if value.strip() else None
            if parsed is not None:
                return max(0.0, parsed.timestamp() - time.time())
    reset = response.headers.get("X-RateLimit-Reset")
    if reset:
        try:
            number = float(reset)
        except ValueError:
            return default
        # an epoch timestamp, or seconds from now
        return max(0.0, number - time.time()) if number > 1e9 else max(0.0, number)
    return default
