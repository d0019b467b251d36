"""Event streams: one vocabulary of event names, and a batch split into requests by size.

A ``Mode.EVENTS`` mapping encodes each change's event (:func:`split_events` groups them into
requests under a byte cap, in the order the events occurred) and sends the parts with
:func:`send_parts`, which keeps what was answered when a throttle stops it part way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from syncworker.destinations.interface import ContactChange, Outcome, attempt, throttled_rest
from syncworker.errors import Throttled
from syncworker.events import HygieneEvent, Kind

#: track-event names, one vocabulary for every analytics tool, after Segment's email spec where it
#: has one; soft bounces, blocks and resubscribes get names of their own so that nothing
#: downstream mistakes them for hard bounces
EVENT_NAMES: Mapping[Kind, str] = {
    Kind.UNSUBSCRIBE: "Unsubscribed",
    Kind.HARD_BOUNCE: "Email Bounced",
    Kind.SPAM_COMPLAINT: "Email Marked as Spam",
    Kind.SOFT_BOUNCE: "Email Soft Bounced",
    Kind.BLOCKED: "Email Blocked",
    Kind.RESUBSCRIBE: "Resubscribed",
}


@dataclass(frozen=True, slots=True)
class EventPart:
    """One request's worth of an event-stream batch: positions in the batch, encoded items."""

    indexes: list[int]
    items: list[bytes]
    changes: list[ContactChange]


def split_events(
    changes: Sequence[ContactChange],
    encode: Callable[[ContactChange, HygieneEvent], Sequence[bytes]],
    max_bytes: int,
    overhead: int = 200,
) -> tuple[list[EventPart], list[Outcome | None]]:
    """Group a batch for an event stream into requests whose bodies stay under ``max_bytes``.

    ``encode`` turns one change's event into its encoded items (one or more per event); items
    are joined with one byte between them and ``overhead`` bytes of envelope around them. A
    change without an event gets a failed outcome; the others' outcomes are left for the caller.

    Events go in the order they occurred (then by key), whatever the batch's order: the events
    of a part sent again after a throttle or a failure, taken in another order or with newer
    events, are split into the same parts as before, so a per-request id derived from them
    (the webhook's ``webhook-id``) is the same too.
    """
    outcomes: list[Outcome | None] = [None] * len(changes)
    parts: list[EventPart] = []
    indexes: list[int] = []
    items: list[bytes] = []
    size = overhead
    timed: list[tuple[float, str, int, HygieneEvent]] = []
    for index, change in enumerate(changes):
        if change.event is None:
            outcomes[index] = Outcome.failed("no hygiene event to send")
        else:
            timed.append((change.event.occurred_at, change.key, index, change.event))
    for _, _, index, event in sorted(timed, key=lambda t: t[:3]):
        change = changes[index]
        encoded = list(encode(change, event))
        grown = sum(len(e) + 1 for e in encoded)
        if indexes and size + grown > max_bytes:
            parts.append(EventPart(indexes, items, [changes[i] for i in indexes]))
            indexes, items, size = [], [], overhead
        indexes.append(index)
        items.extend(encoded)
        size += grown
    if indexes:
        parts.append(EventPart(indexes, items, [changes[i] for i in indexes]))
    return parts, outcomes


def send_parts(
    parts: Sequence[EventPart],
    outcomes: list[Outcome | None],
    send: Callable[[EventPart], str],
) -> list[Outcome]:
    """Send the parts of a split batch in turn (see :func:`split_events`, :func:`attempt`).

    Each part's contacts get that request's outcome. A Throttled answer stops the sending: the
    parts already answered keep their outcomes, that part and the later ones wait unspent
    (:func:`throttled_rest`), and are sent again as the same events with the same ids.
    """
    for part in parts:
        try:
            outcome = attempt(send, part)
        except Throttled as exc:
            return throttled_rest(outcomes, exc)
        for index in part.indexes:
            outcomes[index] = outcome
    return [o or Outcome.failed("not sent") for o in outcomes]
