"""The SDK mapping modules import: ``from syncworker.destinations import ...``.

A mapping module (``mappings/<name>.py``) imports only from this package, never from its
submodules or other syncworker modules. What it offers, by submodule:

- ``interface``: what a mapping implements and returns (Destination, ContactChange, Outcome, Mode,
  Rate) and the helpers turning a call's errors into outcomes (guard, attempt, throttled_rest);
- ``options``: typed options (Options, option, Secret, Url), declared once, parsed at build;
- ``oauth``: OAuthToken, an OAuth 2 access token renewed on expiry and once on a 401;
- ``http``: the HttpClient every request goes through, and retry_after_seconds;
- ``streams``: event streams (EVENT_NAMES, EventPart, split_events, send_parts);
- ``convert``: small conversions (user_id, hygiene_traits, iso_time, compact_json, ...);
- ``loader``: destination_class, which loads ``mappings/<name>.py`` from the mappings directory.

The errors, the ledger's value types and DestinationConfig are re-exported from where they live.
"""

from syncworker.config import DestinationConfig
from syncworker.destinations.convert import (
    USER_ID_RULES,
    comma_list,
    compact_json,
    hygiene_traits,
    iso_time,
    json_object,
    scrub_address,
    seconds,
    user_id,
    valid_user_id_rule,
)
from syncworker.destinations.http import HttpClient, retry_after_seconds
from syncworker.destinations.interface import (
    OPT_OUT_REASONS,
    REASONS,
    ContactChange,
    Destination,
    Mode,
    Outcome,
    OutcomeStatus,
    Rate,
    attempt,
    guard,
    throttled_rest,
)
from syncworker.destinations.loader import destination_class, mappings_dir
from syncworker.destinations.oauth import OAuthToken
from syncworker.destinations.options import Options, Secret, Url, option
from syncworker.destinations.streams import EVENT_NAMES, EventPart, send_parts, split_events
from syncworker.errors import (
    BadCredentials,
    ConfigError,
    DestinationError,
    NotConfigured,
    PermanentError,
    RetryableError,
    Throttled,
)
from syncworker.events import MANUAL, ContactState, HygieneEvent, Kind, ReasonEntry
from syncworker.privacy import scrub_body

__all__ = [
    "EVENT_NAMES",
    "MANUAL",
    "OPT_OUT_REASONS",
    "REASONS",
    "BadCredentials",
    "ConfigError",
    "ContactChange",
    "ContactState",
    "Destination",
    "DestinationConfig",
    "DestinationError",
    "EventPart",
    "HttpClient",
    "HygieneEvent",
    "Kind",
    "Mode",
    "NotConfigured",
    "OAuthToken",
    "Outcome",
    "OutcomeStatus",
    "Options",
    "PermanentError",
    "Rate",
    "Secret",
    "USER_ID_RULES",
    "Url",
    "ReasonEntry",
    "RetryableError",
    "Throttled",
    "attempt",
    "comma_list",
    "compact_json",
    "destination_class",
    "guard",
    "hygiene_traits",
    "iso_time",
    "json_object",
    "mappings_dir",
    "option",
    "retry_after_seconds",
    "scrub_address",
    "scrub_body",
    "seconds",
    "send_parts",
    "split_events",
    "throttled_rest",
    "user_id",
    "valid_user_id_rule",
]
