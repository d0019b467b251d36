"""What a worker process holds: settings, a Redis connection, the enabled destinations, the ledger.

Built once per process (``configure``) by ``syncworker worker`` or a test; jobs read it with
``current()``. A forked work-horse inherits it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import redis
import requests

from syncworker.config import DestinationConfig, Settings
from syncworker.delivery.ratelimit import RateLimiter
from syncworker.destinations import Destination, HttpClient, Mode, Rate, destination_class
from syncworker.errors import ConfigError
from syncworker.ledger import Ledger, Route
from syncworker.queue.enqueue import connect_worker


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

    def build(self, conn: redis.Redis, settings: Settings) -> tuple[Destination, RateLimiter]:
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
    from syncworker.intake.registry import ESP_PARSERS

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
        _current = Runtime.build(Settings.from_env(os.environ))
    return _current
