"""The ledger as it was before the compact record, kept as it was to write old-layout data for the
migration tests and bench/memory.py. Its own description follows.

The suppression ledger: each address's hygiene state, reasons, history and per-destination sync.

Every event is applied by one Lua script, atomically: dedupe by event key, update the state (an
older event never overrides a newer state), append to the capped history, and mark the address
(or, for event streams, the event) pending for each destination that cares. A batch of events is
one pipelined round trip.

Keys: ``sw:c:<addr>`` state hash, ``sw:h:<addr>`` history list, ``sw:sync:<addr>`` destination
-> sync status, ``sw:k:<event key>`` dedupe marker, ``sw:ev:<event key>`` an event awaiting
event-stream destinations, ``sw:pending:<dest>`` due time of each pending id, ``sw:contacts``
every address.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis

from syncworker import codec
from syncworker.config import Settings
from syncworker.events import (
    MANUAL,
    ContactState,
    HygieneEvent,
    Kind,
    ReasonEntry,
    normalize_email,
)
from syncworker.store.keys import STATS

UNSUPPRESS = "manual_unsuppress"
COUNTERS = "ledger:"  # + effect: a counter in the STATS hash

CONTACT = "sw:c:"
HISTORY = "sw:h:"
SYNC = "sw:sync:"
DEDUPE = "sw:k:"
EVENT = "sw:ev:"
PENDING = "sw:pending:"
CONTACTS = "sw:contacts"  # every address the ledger holds (reconcile walks it)
FORGOTTEN = "sw:forgotten:"  # sha256 of an erased address -> the suppression reasons it had

# Kinds that suppress at once; soft bounces and blocks suppress after N within a window, counted
# once per message (an ESP reports each retry of a greylisted message).
IMMEDIATE = frozenset({Kind.HARD_BOUNCE, Kind.SPAM_COMPLAINT, Kind.UNSUBSCRIBE, MANUAL})
COUNTED = frozenset({Kind.SOFT_BOUNCE, Kind.BLOCKED})
# What a manual change is to an event stream: the README promises them an unsubscribe for a
# manual suppress and a resubscribe for an unsuppress
STREAM_KINDS: dict[str, Kind] = {MANUAL: Kind.UNSUBSCRIBE, UNSUPPRESS: Kind.RESUBSCRIBE}

APPLY_LUA = """
local ev = cjson.decode(ARGV[1])
local now = tonumber(ARGV[2])
-- ARGV[11]: the prefix of the effect counters in the hash KEYS[8] ('' = not counted), counted
-- here so that a crash cannot leave an applied event uncounted
local function count(effect)
  if ARGV[11] ~= '' then redis.call('HINCRBY', KEYS[8], ARGV[11] .. effect, 1) end
end
-- the dedupe marker is written last: a script that fails part-way (a key of the wrong type)
-- leaves none, so the quarantined event applies when it is replayed
if redis.call('EXISTS', KEYS[3]) == 1 then
  count('duplicate')
  return {'duplicate', 0, 0}
end
local function dec(s) if s then return cjson.decode(s) end return {} end
local c = redis.call('HMGET', KEYS[1], 'reasons', 'soft', 'cleared', 'version', 'suppressed')
if c[1] == false then
  -- an address erased with `forget` comes back: restore the suppression its hash kept
  local kept = redis.call('GET', KEYS[7])
  if kept then
    c = {kept, false, false, '0', '0'}
    redis.call('DEL', KEYS[7])
  end
end
local reasons, soft, cleared = dec(c[1]), dec(c[2]), dec(c[3])
local version = tonumber(c[4] or '0')
local was = c[5] == '1'
local t = tonumber(ev.occurred_at)
local kind = ev.kind
local threshold, window = tonumber(ARGV[5]), tonumber(ARGV[6])
local immediate = ARGV[7]
local function names(r)
  local n = {}
  for k, _ in pairs(r) do n[#n + 1] = k end
  table.sort(n)
  return table.concat(n, ',')
end
local function note()
  local r = reasons[kind]
  if r == nil or tonumber(r.at) < t then
    reasons[kind] = {at = t, source = ev.source, detail = ev.detail}
  end
end
local before = names(reasons)
local effect
local cleared_all = tonumber(cleared['*'] or 0)
if kind == 'manual_unsuppress' then
  if t > cleared_all then cleared['*'] = t end
  for k, r in pairs(reasons) do
    if tonumber(r.at) <= t then reasons[k] = nil end
  end
  local keep = {}
  for _, s in ipairs(soft) do if tonumber(s[1]) > t then keep[#keep + 1] = s end end
  soft = keep
  effect = 'unsuppressed'
elseif t <= cleared_all then
  effect = 'stale'
elseif kind == 'resubscribe' then
  if t > tonumber(cleared['unsubscribe'] or 0) then cleared['unsubscribe'] = t end
  local u = reasons['unsubscribe']
  if u ~= nil and tonumber(u.at) >= t then
    effect = 'stale'
  else
    reasons['unsubscribe'] = nil
    effect = 'resubscribed'
  end
elseif kind == 'unsubscribe' and t <= tonumber(cleared['unsubscribe'] or 0) then
  effect = 'stale'
elseif string.find(immediate, ',' .. kind .. ',', 1, true) then
  note()
  effect = 'suppressed'
elseif kind == 'soft_bounce' or kind == 'blocked' then
  -- ESPs report a temporary failure on each retry of one message: count messages, not reports
  local repeated = false
  if ev.message_id then
    for _, s in ipairs(soft) do
      if s[3] == ev.message_id then
        repeated = true
        if tonumber(s[1]) < t then s[1] = t end
      end
    end
  end
  if not repeated then soft[#soft + 1] = {t, kind, ev.message_id} end
  local newest = 0
  for _, s in ipairs(soft) do if tonumber(s[1]) > newest then newest = tonumber(s[1]) end end
  local keep = {}
  for _, s in ipairs(soft) do
    if tonumber(s[1]) > newest - window then keep[#keep + 1] = s end
  end
  table.sort(keep, function(a, b) return tonumber(a[1]) < tonumber(b[1]) end)
  while #keep > threshold * 2 + 10 do table.remove(keep, 1) end
  soft = keep
  if #soft >= threshold and t > newest - window then
    note()
    effect = 'suppressed'
  else
    effect = 'counted'
  end
else
  effect = 'ignored'
end
local suppressed = next(reasons) ~= nil
local changed = (names(reasons) ~= before) or (suppressed ~= was)
if effect == 'suppressed' and not changed then effect = 'already' end
if changed then version = version + 1 end
local function enc(tbl) if next(tbl) == nil then return '{}' end return cjson.encode(tbl) end
redis.call('SADD', KEYS[6], ev.email)
redis.call('HSET', KEYS[1], 'email', ev.email, 'reasons', enc(reasons), 'soft', enc(soft),
  'cleared', enc(cleared), 'version', version, 'suppressed', suppressed and '1' or '0',
  'updated_at', now)
redis.call('LPUSH', KEYS[2], cjson.encode({at = t, recorded = now, kind = kind, source = ev.source,
  key = ev.key, effect = effect, detail = ev.detail}))
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[4]) - 1)
local s, e = tonumber(ARGV[8]), tonumber(ARGV[9])
if changed then
  local status = cjson.encode({status = 'pending', since = now, version = version})
  for i = 1, s do
    redis.call('ZADD', KEYS[8 + i], 'NX', now, ev.email)
    redis.call('HSET', KEYS[4], ARGV[11 + i], status)
  end
end
if e > 0 and ARGV[10] ~= '' then
  redis.call('SET', KEYS[5], ARGV[10], 'EX', ARGV[3])
  for j = s + 1, s + e do
    redis.call('ZADD', KEYS[8 + j], 'NX', now, ev.key)
  end
end
redis.call('SET', KEYS[3], '1', 'EX', ARGV[3])
count(effect)
return {effect, changed and 1 or 0, version}
"""


@dataclass(frozen=True)
class Route:
    """Which destinations an event of each kind reaches."""

    state: dict[str, tuple[str, ...]] = field(default_factory=dict)  # kind -> state destinations
    events: dict[str, tuple[str, ...]] = field(default_factory=dict)  # kind -> event destinations

    @classmethod
    def build(cls, destinations: Mapping[str, tuple[bool, frozenset[str]]]) -> Route:
        """``destinations``: name -> (is an event stream, kinds it cares about)."""
        state: dict[str, list[str]] = {}
        events: dict[str, list[str]] = {}
        kinds = [*(k.value for k in Kind), MANUAL, UNSUPPRESS]
        for name, (stream, cares) in destinations.items():
            for kind in kinds:
                manual = kind in (MANUAL, UNSUPPRESS)
                if stream and STREAM_KINDS.get(kind, kind) in cares:
                    events.setdefault(kind, []).append(name)
                if not stream and (manual or kind in cares):
                    state.setdefault(kind, []).append(name)
        return cls(
            {k: tuple(v) for k, v in state.items()}, {k: tuple(v) for k, v in events.items()}
        )


@dataclass
class ApplyResult:
    effects: Counter[str] = field(default_factory=Counter)
    marked: set[str] = field(default_factory=set)  # destinations that got new pending work
    #: events Redis refused to apply (index in the batch, Redis's reason); the others applied
    failed: list[tuple[int, str]] = field(default_factory=list)


@dataclass(frozen=True)
class ContactView:
    """Everything the ledger knows about one address, for lookup and the API."""

    state: ContactState
    history: list[dict[str, Any]]
    sync: dict[str, dict[str, Any]]

    def as_json(self) -> dict[str, Any]:
        return {
            "email": self.state.email,
            "suppressed": self.state.suppressed,
            "version": self.state.version,
            "updated_at": self.state.updated_at,
            "reasons": {
                name: {"at": r.at, "source": r.source, "detail": r.detail}
                for name, r in sorted(self.state.reasons.items())
            },
            "history": self.history,
            "destinations": self.sync,
        }


class Ledger:
    def __init__(self, conn: redis.Redis, settings: Settings, route: Route) -> None:
        self.conn = conn
        self.settings = settings
        self.route = route
        self._apply = conn.register_script(APPLY_LUA)
        self._immediate = "," + ",".join(sorted(IMMEDIATE)) + ","

    # -- writing ------------------------------------------------------------------------------

    def apply(self, events: Sequence[HygieneEvent], count: bool = False) -> ApplyResult:
        """Apply events in order, each atomically; one round trip for the whole batch. An event
        Redis refuses (``ApplyResult.failed``) does not stop the others. With ``count``, each
        applied event's effect is counted (``ledger:<effect>`` in STATS) in the same write."""
        return self._apply_events([(e, e.kind.value) for e in events], COUNTERS if count else "")

    def suppress(self, email: str, reason: str, *, source: str = MANUAL) -> ApplyResult:
        """Record a manual suppression; :class:`~syncworker.codec.InvalidEvent` for a string that
        is not an address."""
        return self._manual(email, MANUAL, reason, source)

    def unsuppress(self, email: str, reason: str, *, source: str = MANUAL) -> ApplyResult:
        return self._manual(email, UNSUPPRESS, reason, source)

    def _manual(self, email: str, kind: str, reason: str, source: str) -> ApplyResult:
        event = HygieneEvent(
            key=f"{MANUAL}:{uuid.uuid4().hex}",
            source=source,
            esp=MANUAL,
            email=normalize_email(email),
            kind=STREAM_KINDS[kind],  # what event streams get; the ledger applies ``kind``
            occurred_at=time.time(),
            reason=reason or None,
        )
        why = codec.problem(event)
        if why is not None:
            raise codec.InvalidEvent(why)
        return self._apply_events([(event, kind)])

    def _apply_events(
        self, items: list[tuple[HygieneEvent, str]], counters: str = ""
    ) -> ApplyResult:
        """Apply each event as ledger kind ``kind`` (a Kind, or a manual change); ``counters``
        is the prefix its effect is counted under in STATS ('' = not counted)."""
        result = ApplyResult()
        if not items:
            return result
        s = self.settings
        now = time.time()
        routes: list[tuple[tuple[str, ...], tuple[str, ...]]] = []
        with self.conn.pipeline(transaction=False) as pipe:
            for event, kind in items:
                state_dests = self.route.state.get(kind, ())
                event_dests = self.route.events.get(kind, ())
                routes.append((state_dests, event_dests))
                email, key = event.email, event.key
                keys = [
                    CONTACT + email,
                    HISTORY + email,
                    DEDUPE + key,
                    SYNC + email,
                    EVENT + key,
                    CONTACTS,
                    FORGOTTEN + address_hash(email),
                    STATS,
                    *(PENDING + d for d in state_dests + event_dests),
                ]
                item = {
                    "key": key,
                    "email": email,
                    "kind": kind,
                    "occurred_at": event.occurred_at,
                    "source": event.source,
                    "message_id": event.message_id,
                    "detail": _detail(event.reason, event.smtp_code),
                }
                args: list[bytes | str | int | float] = [
                    # cjson reads JSON null as a truthy value: absent fields are left out
                    orjson.dumps({k: v for k, v in item.items() if v is not None}),
                    now,
                    s.dedupe_ttl_s,
                    s.history_limit,
                    s.soft_bounce_threshold,
                    s.soft_bounce_window_s,
                    self._immediate,
                    len(state_dests),
                    len(event_dests),
                    # the event as event streams get it: the codec's form, every field kept
                    orjson.dumps(codec.dump(event)) if event_dests else "",
                    counters,
                    *state_dests,
                    *event_dests,
                ]
                self._apply(keys=keys, args=args, client=pipe)
            replies = pipe.execute(raise_on_error=False)
        for i, (reply, (state_dests, event_dests)) in enumerate(zip(replies, routes, strict=True)):
            if isinstance(reply, redis.ResponseError):
                result.failed.append((i, str(reply)[:300]))
                result.effects["failed"] += 1
                continue
            effect = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
            result.effects[effect] += 1
            if effect == "duplicate":
                continue
            if int(reply[1]):  # the state changed: the CRMs get it
                result.marked.update(state_dests)
            result.marked.update(event_dests)
        return result

    # -- reading ------------------------------------------------------------------------------

    def states(self, emails: list[str]) -> list[ContactState]:
        with self.conn.pipeline(transaction=False) as pipe:
            for email in emails:
                pipe.hmget(CONTACT + email, "reasons", "suppressed", "updated_at", "version")
            rows = pipe.execute()
        return [_state(email, row) for email, row in zip(emails, rows, strict=True)]

    def state(self, email: str) -> ContactState:
        return self.states([normalize_email(email)])[0]

    def view(self, email: str) -> ContactView | None:
        email = normalize_email(email)
        with self.conn.pipeline(transaction=False) as pipe:
            pipe.exists(CONTACT + email)
            pipe.hmget(CONTACT + email, "reasons", "suppressed", "updated_at", "version")
            pipe.lrange(HISTORY + email, 0, -1)
            pipe.hgetall(SYNC + email)
            exists, row, history, sync = pipe.execute()
        if not exists:
            return None
        return ContactView(
            state=_state(email, row),
            history=[orjson.loads(h) for h in history],
            sync={k.decode(): orjson.loads(v) for k, v in sorted(sync.items())},
        )

    def forget(self, email: str) -> bool:
        """Erase everything the ledger holds about an address. A suppressed address leaves only
        the SHA-256 of itself and its reasons' names and times, so that it stays suppressed if an
        ESP reports it again. Returns whether the address was suppressed."""
        email = normalize_email(email)
        state = self.state(email)
        with self.conn.pipeline(transaction=True) as pipe:
            if state.suppressed:
                kept = {
                    name: {"at": r.at, "source": "forgotten"} for name, r in state.reasons.items()
                }
                pipe.set(FORGOTTEN + address_hash(email), orjson.dumps(kept))
            pipe.delete(CONTACT + email, HISTORY + email, SYNC + email)
            pipe.srem(CONTACTS, email)
            pipe.execute()
        return state.suppressed


def address_hash(email: str) -> str:
    return hashlib.sha256(normalize_email(email).encode()).hexdigest()


def _detail(reason: str | None, smtp_code: str | None) -> str | None:
    if reason and smtp_code:
        return f"{smtp_code} {reason}"[:300]
    return (reason or smtp_code or None) and (reason or smtp_code or "")[:300]


def _state(email: str, row: list[bytes | None]) -> ContactState:
    reasons_raw, suppressed, updated_at, version = row
    reasons = {
        name: ReasonEntry(name, float(r["at"]), str(r.get("source", "")), r.get("detail"))
        for name, r in (orjson.loads(reasons_raw) if reasons_raw else {}).items()
    }
    return ContactState(
        email=email,
        suppressed=suppressed == b"1",
        reasons=reasons,
        updated_at=float(updated_at or 0),
        version=int(version or 0),
    )
