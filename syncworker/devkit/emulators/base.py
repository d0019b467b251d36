"""The loopback HTTP server every destination emulator builds on: journal, auth, limits, faults.

An emulator is a real ``ThreadingHTTPServer`` on 127.0.0.1 (free port, HTTP/1.1 keep-alive) run in
a background thread. Each request passes, in order: outage (``down()``: the connection is dropped
unanswered) -> injected delay (``slow_next``) -> injected failure (``fail_next``; ``down(503)``:
every request) -> the auth check (``authorized``) -> the sliding-window rate limit (``rate_limit``:
429 + Retry-After) -> the subclass's ``handle``. Every request is journaled with what was answered.
"""

from __future__ import annotations

import dataclasses
import math
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qsl, urlsplit

import orjson


@dataclass(frozen=True)
class Request:
    """One request as the emulator received it, and the status it answered (0: dropped)."""

    method: str
    path: str  # percent-encoded, without the query string
    query: dict[str, str]
    headers: dict[str, str]  # names lower-cased
    body: bytes
    json: Any  # the parsed body; None when empty or not JSON (see ``json_error``)
    json_error: bool
    at: float  # time.monotonic() at arrival
    status: int = 0


@dataclass
class Response:
    status: int
    body: Any = None  # JSON-serializable, raw bytes, or None for an empty body
    headers: dict[str, str] = field(default_factory=dict)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real APIs
    timeout = 60  # an idle kept-alive connection is closed after this
    disable_nagle_algorithm = True
    wbufsize = 64 * 1024  # status, headers and body leave in one write (flushed per request)
    server: _Server

    def do_GET(self) -> None:
        self.server.emulator._serve(self)

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request stderr lines."""


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins handler threads: nothing outlives stop()
    allow_reuse_address = True

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        super().__init__(("127.0.0.1", 0), _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        self.emulator._track(sock, True)
        return sock, addr

    def shutdown_request(self, request: Any) -> None:
        self.emulator._track(request, False)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up (timed out, or the server stopped) is not an emulator bug."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class Emulator:
    """Base of the destination emulators. Use as a context manager (or ``start()``/``stop()``).

    ``requests`` is the journal; ``throttled`` counts 429s sent by the rate limit, ``injected``
    the failures sent by ``fail_next``. ``wait_for(predicate)`` blocks until a request makes the
    predicate true, or fails after a deadline.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._journal: list[Request] = []
        self._window: deque[float] = deque()
        self._limit: tuple[int, float] | None = None
        self._plan: deque[tuple[int, dict[str, str]] | None] = deque()
        self._delays: deque[float] = deque()
        self._down = False
        self._outage = 0  # a status answered to every request (``down(status)``)
        self._connections: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.send_retry_after = True
        self.throttled = 0
        self.injected = 0
        self.in_flight = 0  # requests arrived and not yet answered
        self.peak_in_flight = 0  # the most there were at once

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> Self:
        self._stopping.clear()
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.01},  # how soon stop() is noticed
            name=f"{type(self).__name__}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        with self._lock:
            for sock in list(self._connections):
                try:
                    sock.shutdown(socket.SHUT_RDWR)  # wakes handler threads waiting on keep-alive
                except OSError:
                    pass
        server.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError(f"{type(self).__name__} is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    # -- what tests configure -------------------------------------------------------------------

    def rate_limit(self, requests: int | None, per_seconds: float = 1.0) -> None:
        """Admit ``requests`` per sliding ``per_seconds`` window (by arrival time); None lifts it.

        Only admitted requests fill the window. Each 429 carries ``Retry-After``: whole seconds
        until the oldest admitted request leaves the window (``requests=0``: always 429, after
        ``per_seconds``)."""
        with self._lock:
            self._limit = None if requests is None else (requests, per_seconds)
            self._window.clear()

    def fail_next(
        self,
        n: int = 1,
        status: int = 503,
        *,
        after: int = 0,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer ``status`` to ``n`` requests, after letting ``after`` requests through."""
        with self._lock:
            self._plan.extend([None] * after)
            self._plan.extend([(status, dict(headers or {}))] * n)

    def slow_next(self, n: int, seconds: float) -> None:
        """Hold each of the next ``n`` requests ``seconds`` before answering (client timeouts)."""
        with self._lock:
            self._delays.extend([seconds] * n)

    @property
    def slow_pending(self) -> int:
        """How many of the requests ``slow_next`` asked to hold have not arrived yet."""
        with self._lock:
            return len(self._delays)

    def down(self, status: int = 0) -> None:
        """Outage until ``up()``: every request's connection is dropped without an answer, or
        with ``status`` (e.g. 503) every request is answered that."""
        with self._lock:
            self._down = status == 0
            self._outage = status

    def up(self) -> None:
        with self._lock:
            self._down = False
            self._outage = 0

    # -- what tests inspect ---------------------------------------------------------------------

    @property
    def requests(self) -> list[Request]:
        with self._lock:
            return list(self._journal)

    def calls(self, path: str | None = None, method: str | None = None) -> list[Request]:
        """Journaled requests whose path starts with ``path`` (and of ``method``)."""
        return [
            r
            for r in self.requests
            if (path is None or r.path.startswith(path)) and (method is None or r.method == method)
        ]

    def clear_journal(self) -> None:
        with self._lock:
            self._journal.clear()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Block until ``predicate()`` is true (re-checked after each request) or fail."""
        with self._changed:
            if not self._changed.wait_for(predicate, timeout):
                raise AssertionError(f"{type(self).__name__}: condition not met in {timeout}s")

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> None:
        self.wait_for(lambda: len(self._journal) >= n, timeout)

    # -- what subclasses implement --------------------------------------------------------------

    def authorized(self, request: Request) -> bool:
        return True

    def unauthorized(self, request: Request) -> Response:
        return Response(401, {"message": "unauthorized"})

    def throttle(self, request: Request, retry_after: int) -> Response:
        return Response(429, {"message": "rate limited"})

    def error(self, status: int, request: Request) -> Response:
        """The body of an injected failure."""
        return Response(status, {"message": "injected failure"})

    def handle(self, request: Request) -> Response:
        return Response(404, {"message": f"no route {request.method} {request.path}"})

    # -- the server side ------------------------------------------------------------------------

    def _track(self, sock: Any, alive: bool) -> None:
        with self._lock:
            if alive:
                self._connections.add(sock)
            else:
                self._connections.discard(sock)

    def _serve(self, handler: _Handler) -> None:
        arrived = time.monotonic()
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        split = urlsplit(handler.path)
        parsed, json_error = None, False
        if body:
            try:
                parsed = orjson.loads(body)
            except ValueError:
                json_error = True
        request = Request(
            method=handler.command,
            path=split.path,
            query=dict(parse_qsl(split.query, keep_blank_values=True)),
            headers={k.lower(): v for k, v in handler.headers.items()},
            body=body,
            json=parsed,
            json_error=json_error,
            at=arrived,
        )
        with self._lock:
            down = self._down
            delay = self._delays.popleft() if self._delays and not down else 0.0
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            if down:
                handler.close_connection = True
                self._record(request, 0)
                return
            if delay:
                self._stopping.wait(delay)
            response = self._respond(request)
            self._record(request, response.status)  # before answering: never seen missing
            self._send(handler, response)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _respond(self, request: Request) -> Response:
        with self._lock:
            planned = self._plan.popleft() if self._plan else None
            if planned is None and self._outage:
                planned = (self._outage, {})
            if planned is not None:
                self.injected += 1
                status, headers = planned
                response = self.error(status, request)
                response.headers.update(headers)
                return response
            if not self.authorized(request):
                return self.unauthorized(request)
            throttled = self._admit(request.at)
            if throttled is not None:
                self.throttled += 1
                response = self.throttle(request, throttled)
                if self.send_retry_after:
                    response.headers.setdefault("Retry-After", str(throttled))
                return response
            return self.handle(request)

    def _admit(self, now: float) -> int | None:
        """None if admitted, else whole seconds until the window has room again."""
        if self._limit is None:
            return None
        count, per = self._limit
        while self._window and self._window[0] <= now - per:
            self._window.popleft()
        if count <= 0:  # a 429 storm: nothing is admitted
            return max(1, math.ceil(per))
        if len(self._window) >= count:
            return max(1, math.ceil(self._window[0] + per - now))
        self._window.append(now)
        return None

    def _send(self, handler: _Handler, response: Response) -> None:
        if response.body is None:
            payload = b""
        elif isinstance(response.body, bytes):
            payload = response.body
        else:
            payload = orjson.dumps(response.body, option=orjson.OPT_NON_STR_KEYS)
        handler.send_response(response.status)
        headers = {"Content-Type": "application/json;charset=utf-8", **response.headers}
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)

    def _record(self, request: Request, status: int) -> None:
        with self._changed:
            self._journal.append(dataclasses.replace(request, status=status))
            self._changed.notify_all()
