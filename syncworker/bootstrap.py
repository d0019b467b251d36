"""Where a process is put together: the settings resolved into enabled sources and destinations,
``check()`` (every plugin built once, offline), the worker's :class:`Runtime` and the web
process's :class:`AppState`.

``syncworker worker`` or a test builds the Runtime once per process (``configure``); jobs read it
with ``current()``, and a forked work-horse inherits it. ``create_app`` keeps an AppState in the
Flask app; requests read it, typed, with :func:`app_state`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import redis
import requests

from syncworker.config import DestinationConfig, PluginKeys, Settings
from syncworker.delivery.ratelimit import RateLimiter
from syncworker.destinations import Destination, HttpClient, Mode, Rate, destination_class
from syncworker.destinations.loader import mappings_dir
from syncworker.errors import ConfigError
from syncworker.intake.registry import ESP_PARSERS
from syncworker.ledger import Ledger, Route
from syncworker.queue.enqueue import Enqueuer
from syncworker.store.connections import connect_worker
from syncworker.store.quarantine import QuarantineLimits, store_quarantine

if TYPE_CHECKING:
    from syncworker.intake.contract import EspParser


class Plugins:
    """The ESP modules (``syncworker/intake/esps/``) and the mapping modules (``mappings/``)
    there are, as the settings see them (:class:`syncworker.config.Plugins`)."""

    def esps(self) -> list[str]:
        return list(ESP_PARSERS)

    def source_keys(self, esp: str) -> PluginKeys:
        parser = ESP_PARSERS[esp]
        return PluginKeys(parser.settings, parser.optional_settings)

    def destination_keys(self, name: str, mappings_dir: str) -> PluginKeys:
        dest = destination_class(name, mappings_dir)
        return PluginKeys(dest.settings, dest.optional_settings, dest.secret_settings)

    def effective_mappings_dir(self, setting: str) -> str:
        return str(mappings_dir(setting))


PLUGINS = Plugins()


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """The settings from ``environ`` (the process's environment by default), checked against
    the plugins there are; ConfigError lists every problem at once."""
    return Settings.from_env(os.environ if environ is None else environ, PLUGINS)


@dataclass
class DestinationRuntime:
    name: str
    cls: type[Destination]
    config: DestinationConfig
    rate: Rate
    batch_size: int
    base_url: str
    concurrency: int = 1  # deliver jobs that may send to it at once
    batch_wait_s: float = 0.0  # how long a deliver job waits for a full batch
    _session: requests.Session | None = field(default=None, repr=False)

    @property
    def mode(self) -> Mode:
        return self.cls.mode

    def instantiate(self, conn: redis.Redis, settings: Settings) -> tuple[Destination, RateLimiter]:
        """A destination instance whose every HTTP request waits at the shared rate limiter."""
        if self._session is None:
            self._session = requests.Session()
        cap = settings.rate_wait_cap_s
        limiter = RateLimiter(conn, self.name, self.rate, cap)
        endpoints = [
            (prefix, RateLimiter(conn, f"{self.name}:{prefix}", rate, cap))
            for prefix, rate in self.cls.endpoint_rates.items()
        ]

        def before_request(path: str) -> None:
            for prefix, endpoint in endpoints:  # the stricter one first: it may say "later"
                if path.startswith(prefix):
                    endpoint.acquire()
            limiter.acquire()

        http = HttpClient(
            self.name,
            self.base_url,
            session=self._session,
            timeout=settings.http_timeout_s,
            before_request=before_request,
            dry_run=self.dry_run,
        )
        return self.cls(self.config, http), limiter

    @property
    def dry_run(self) -> bool:
        return self.config.flag("DRY_RUN")


@dataclass
class Runtime:
    settings: Settings
    conn: redis.Redis
    destinations: dict[str, DestinationRuntime]
    ledger: Ledger

    @classmethod
    def build(cls, settings: Settings, conn: redis.Redis | None = None) -> Runtime:
        if conn is None:
            conn = connect_worker(settings.redis_url)
        dests: dict[str, DestinationRuntime] = {}
        for name, config in settings.destinations.items():
            klass = destination_class(name, settings.mappings_dir)
            dests[name] = DestinationRuntime(
                name=name,
                cls=klass,
                config=config,
                rate=klass.effective_rate(config),
                batch_size=klass.effective_batch_size(config),
                base_url=klass.effective_base_url(config),
                concurrency=klass.effective_concurrency(config, spare_processes(settings)),
                batch_wait_s=klass.effective_batch_wait(config, settings.batch_wait_s),
            )
        route = Route.build(
            {
                name: (d.mode is Mode.EVENTS, frozenset(k.value for k in d.cls.kinds))
                for name, d in dests.items()
            }
        )
        return cls(settings, conn, dests, Ledger(conn, settings, route))


def spare_processes(settings: Settings) -> int:
    """Deliver processes beyond one per destination (``SYNCWORKER_DELIVER_WORKERS``): a
    destination's further deliver jobs run in these, never in another destination's."""
    return max(0, settings.deliver_workers - len(settings.destinations))


def check(settings: Settings) -> None:
    """Build every enabled source parser and destination once, offline, so that a bad key or a
    malformed setting stops startup (and ``check-config``) instead of failing on first use."""
    problems: list[str] = []
    for source in settings.sources.values():
        try:
            ESP_PARSERS[source.esp](source)
        except ConfigError as exc:
            problems.extend(exc.problems)
    for name, config in settings.destinations.items():
        env = f"SYNCWORKER_{name.upper()}_"
        try:
            klass = destination_class(name, settings.mappings_dir)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        try:
            klass.effective_rate(config)
        except ValueError:
            problems.append(f"{env}RATE={config.get('RATE')!r}: expected N/SECONDS, e.g. 100/10")
        try:
            klass.effective_batch_size(config)
        except ValueError:
            problems.append(f"{env}BATCH_SIZE={config.get('BATCH_SIZE')!r}: expected a number")
        try:
            klass.effective_concurrency(config, 0)
        except ValueError:
            problems.append(f"{env}CONCURRENCY={config.get('CONCURRENCY')!r}: expected 1 or more")
        try:
            klass.effective_batch_wait(config, settings.batch_wait_s)
        except ValueError:
            problems.append(
                f"{env}BATCH_WAIT={config.get('BATCH_WAIT')!r}: expected seconds from 0 to 1"
            )
        http = HttpClient(name, klass.effective_base_url(config))
        try:
            klass(config, http)
        except ConfigError as exc:
            problems.extend(exc.problems)
        finally:
            http.session.close()
    if problems:
        raise ConfigError(problems)


_current: Runtime | None = None


def configure(runtime: Runtime | None) -> None:
    global _current
    _current = runtime


def current() -> Runtime:
    """The process's runtime; built from the environment on first use if nobody configured one."""
    global _current
    if _current is None:
        _current = Runtime.build(load_settings())
    return _current


#: the key of the web process's :class:`AppState` in ``app.extensions``
APP_STATE = "syncworker"


@dataclass
class AppState:
    """What a web process holds, beside its Flask app: read it with :func:`app_state`."""

    settings: Settings
    runtime: Runtime
    enqueuer: Enqueuer
    parsers: dict[str, EspParser] = field(default_factory=dict)

    def quarantine_body(self, source: str, esp: str, reason: str, body: bytes) -> None:
        """Keep a verified body that could not be parsed, for ``syncworker quarantine replay``,
        with the headers its parser reads (never a signature: ``EspParser.kept_headers``)."""
        from flask import has_request_context, request

        # the bytes as received: past the record size, their SHA-256 is what is kept of them
        item: dict[str, object] = {"esp": esp, "reason": reason, "body": body}
        parser = self.parsers.get(source)
        if parser is not None and has_request_context():  # the route calls it in its request
            if headers := parser.kept_headers(request.headers):
                item["headers"] = headers
        limits = QuarantineLimits.of(self.settings)
        store_quarantine(self.runtime.conn, source, [item], limits)


def app_state() -> AppState:
    """The serving app's state, typed (``current_app.extensions`` is a dict of anything)."""
    from flask import current_app

    state = current_app.extensions[APP_STATE]
    if not isinstance(state, AppState):
        raise TypeError(f"app.extensions[{APP_STATE!r}] is not an AppState")
    return state
