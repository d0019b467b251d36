"""The suppression ledger: each address's hygiene state, reasons, history and per-destination sync.

Every event is applied by one Lua script, atomically: dedupe by event key, update the state (an
older event never overrides a newer state), append to the capped history, and mark the address
(or, for event streams, the event) pending for each destination that cares. A batch of events is
one pipelined round trip.

Keys: ``sw:c:<addr>`` the address's record, one compact JSON string (below); ``sw:ev:<event key>``
an event awaiting event-stream destinations; ``sw:pending:<dest>`` due time of each pending id;
``sw:contacts:n`` how many records there are; ``sw:forgotten:<sha256>`` the suppression an erased
address keeps.

The record is a JSON array ``[version, suppressed, updated_at, reasons, history, sync, soft,
cleared, seen]`` (empty trailing parts left out): about 180 bytes of JSON, 289 bytes of Redis
memory with its key, for an address with one reason, one event and one destination, where the
layout before took ~1,770 bytes (``python -m bench.memory``):

- ``reasons``: kind code -> ``[at, source, detail]`` (codes: :data:`KIND_CODES`);
- ``history``: newest first, capped at ``history_limit``: ``[at, recorded, kind code, event key,
  effect code, source, detail]``; an entry whose kind, time, source and detail are those of the
  reason the record holds for its kind is stored without source and detail (``[at, recorded,
  kind, key, effect]``) and read back from the reason;
- ``sync``: destination -> ``[status, at (since, for pending), version, confirmed reasons (kind
  codes), {other fields}]``; the confirmed reasons are what a state destination last confirmed;
- ``soft``: the counted soft bounces and blocks ``[at, kind, message id]``; ``cleared``: the times
  of the last unsuppress (``*``) and resubscribe (``unsubscribe``);
- ``seen``: ``[sha1(event key)[:12], recorded]`` of events that left the capped history within
  ``dedupe_ttl_s``.

Dedupe is per address: an event is a duplicate when its key is in the address's history or
``seen`` and was recorded within ``dedupe_ttl_s`` (at most :data:`MAX_SEEN` keys beyond the
history). The dedupe mark is the record itself, written last in the script: a script that fails
part-way writes no record, so the quarantined event applies when it is replayed.

The layout before this one (``sw:c:<addr>`` hash, ``sw:h:<addr>`` history list, ``sw:sync:<addr>``
hash, ``sw:confirmed:<dest>`` hash, ``sw:k:<event key>`` dedupe markers, ``sw:contacts`` set) is
read by every script: a record still in it is converted the first time it is read or written, and
``syncworker migrate`` (:meth:`Ledger.migrate`) converts them all. Old dedupe markers are honoured
until they expire.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
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
from syncworker.queueing import STATS

UNSUPPRESS = "manual_unsuppress"
COUNTERS = "ledger:"  # + effect: a counter in the STATS hash

CONTACT = "sw:c:"  # + address: the record
CONTACT_COUNT = "sw:contacts:n"  # how many records there are
EVENT = "sw:ev:"
PENDING = "sw:pending:"
FORGOTTEN = "sw:forgotten:"  # sha256 of an erased address -> the suppression reasons it had
# the layout before the compact record (read and converted by the scripts; ``migrate``)
HISTORY = "sw:h:"
SYNC = "sw:sync:"
CONFIRMED = "sw:confirmed:"
DEDUPE = "sw:k:"
CONTACTS = "sw:contacts"

#: event keys remembered for dedupe beyond the history, per address (within ``dedupe_ttl_s``)
MAX_SEEN = 1000
#: events per ledger script call: one call holds Redis for about 30 µs per event
APPLY_CHUNK = 200

# Kinds that suppress at once; soft bounces and blocks suppress after N within a window, counted
# once per message (an ESP reports each retry of a greylisted message).
IMMEDIATE = frozenset({Kind.HARD_BOUNCE, Kind.SPAM_COMPLAINT, Kind.UNSUBSCRIBE, MANUAL})
COUNTED = frozenset({Kind.SOFT_BOUNCE, Kind.BLOCKED})
# What a manual change is to an event stream: the README promises them an unsubscribe for a
# manual suppress and a resubscribe for an unsuppress
STREAM_KINDS: dict[str, Kind] = {MANUAL: Kind.UNSUBSCRIBE, UNSUPPRESS: Kind.RESUBSCRIBE}

#: one character for each kind and effect in the record; any other name is stored as it is
KIND_CODES: dict[str, str] = {
    Kind.HARD_BOUNCE.value: "h",
    Kind.SOFT_BOUNCE.value: "s",
    Kind.BLOCKED.value: "b",
    Kind.UNSUBSCRIBE.value: "u",
    Kind.SPAM_COMPLAINT.value: "c",
    Kind.RESUBSCRIBE.value: "r",
    MANUAL: "m",
    UNSUPPRESS: "M",
}
EFFECT_CODES: dict[str, str] = {
    "suppressed": "s",
    "already": "a",
    "stale": "t",
    "counted": "c",
    "ignored": "i",
    "unsuppressed": "u",
    "resubscribed": "r",
}
KIND_NAMES = {v: k for k, v in KIND_CODES.items()}
EFFECT_NAMES = {v: k for k, v in EFFECT_CODES.items()}


def _lua_table(mapping: Mapping[str, str]) -> str:
    return (
        "{" + ", ".join(f"[{orjson.dumps(k).decode()}] = '{v}'" for k, v in mapping.items()) + "}"
    )


# Shared by every script: reading a record (converting one still in the old layout) and writing it.
RECORD_LUA = (
    f"""
local C_PREFIX, H_PREFIX, S_PREFIX, F_PREFIX = '{CONTACT}', '{HISTORY}', '{SYNC}', '{CONFIRMED}'
local OLD_SET, COUNT_KEY = '{CONTACTS}', '{CONTACT_COUNT}'
local KIND_CODE, EFFECT_CODE = {_lua_table(KIND_CODES)}, {_lua_table(EFFECT_CODES)}
"""
    + r"""
local function invert(t) local o = {} for k, v in pairs(t) do o[v] = k end return o end
local KIND_NAME, EFFECT_NAME = invert(KIND_CODE), invert(EFFECT_CODE)
local function code(map, name) return map[name] or name end
local function same(x, e)
  return x ~= nil and x.at == e.at and x.source == e.source and x.detail == e.detail
end
local function unpack_record(raw)
  local a = cjson.decode(raw)
  local r = {}
  for c, x in pairs(a[4] or {}) do
    r[code(KIND_NAME, c)] = {at = x[1], source = x[2], detail = x[3]}
  end
  local h = {}
  for i, e in ipairs(a[5] or {}) do
    local kind = code(KIND_NAME, e[3])
    local source, detail, effect = e[6], e[7], e[5] or 's'
    if #e < 6 then local x = r[kind] or {}; source, detail = x.source, x.detail end
    h[i] = {at = e[1], recorded = e[2], kind = kind, key = e[4], effect = code(EFFECT_NAME, effect),
      source = source or '', detail = detail}
  end
  local updated = a[3]
  if updated == 0 and h[1] then updated = h[1].recorded end
  return {version = a[1], suppressed = a[2] == 1, updated_at = updated, reasons = r, history = h,
    sync = a[6] or {}, soft = a[7] or {}, cleared = a[8] or {}, seen = a[9] or {}}
end
-- a history entry like the reason held for its kind keeps no source and detail (and, for the
-- event that gave the reason, no effect); updated_at equal to the newest entry's time is 0
local function pack_record(s)
  local r = {}
  for name, x in pairs(s.reasons) do r[code(KIND_CODE, name)] = {x.at, x.source or '', x.detail} end
  local h = {}
  for i, e in ipairs(s.history) do
    local entry = {e.at, e.recorded, code(KIND_CODE, e.kind), e.key or ''}
    if not same(s.reasons[e.kind], e) then
      entry[5] = code(EFFECT_CODE, e.effect); entry[6] = e.source or ''; entry[7] = e.detail
    elseif e.effect ~= 'suppressed' then
      entry[5] = code(EFFECT_CODE, e.effect)
    end
    h[i] = entry
  end
  local updated = s.updated_at
  if h[1] and updated ~= 0 and h[1][2] == updated then updated = 0 end
  local a = {s.version, s.suppressed and 1 or 0, updated, r, h, s.sync, s.soft, s.cleared, s.seen}
  local n = 9
  while n > 3 and next(a[n]) == nil do a[n] = nil; n = n - 1 end
  return cjson.encode(a)
end
local function sync_pack(d, confirmed)
  local status = d.status or ''
  local tk = status == 'pending' and 'since' or 'at'
  local e = {status, d[tk] or 0, d.version or 0, confirmed}
  local rest = {}
  for k, v in pairs(d) do
    if k ~= 'status' and k ~= tk and k ~= 'version' then rest[k] = v end
  end
  if next(rest) ~= nil then e[5] = rest end
  return e
end
local function codes(names)
  local out, plain = {}, true
  for i, n in ipairs(names) do
    out[i] = code(KIND_CODE, n)
    if #out[i] ~= 1 then plain = false end
  end
  if plain then return table.concat(out) end
  return ',' .. table.concat(names, ',')
end
-- a record still in the old layout (a hash, a history list, a sync hash, confirmed reasons in
-- each destination's hash, a member of the address set) becomes one record, atomically
local function upgrade(key)
  local email = string.sub(key, #C_PREFIX + 1)
  local f = redis.call('HGETALL', key)
  local o = {}
  for i = 1, #f, 2 do o[f[i]] = f[i + 1] end
  local function dec(x) if x and x ~= '' then return cjson.decode(x) end return {} end
  local reasons = {}
  for name, x in pairs(dec(o.reasons)) do
    reasons[name] = {at = x.at, source = x.source or '', detail = x.detail}
  end
  local s = {version = tonumber(o.version or '0'), suppressed = o.suppressed == '1',
    updated_at = tonumber(o.updated_at or '0'), reasons = reasons, history = {}, sync = {},
    soft = dec(o.soft), cleared = dec(o.cleared), seen = {}}
  for i, raw in ipairs(redis.call('LRANGE', H_PREFIX .. email, 0, -1)) do
    local e = cjson.decode(raw)
    s.history[i] = {at = e.at, recorded = e.recorded, kind = e.kind, key = e.key or '',
      effect = e.effect, source = e.source or '', detail = e.detail}
  end
  local sync = redis.call('HGETALL', S_PREFIX .. email)
  for i = 1, #sync, 2 do
    local dest = sync[i]
    local confirmed = redis.call('HGET', F_PREFIX .. dest, email)
    local c = ''
    if confirmed then
      c = codes(cjson.decode(confirmed))
      redis.call('HDEL', F_PREFIX .. dest, email)
    end
    s.sync[dest] = sync_pack(cjson.decode(sync[i + 1]), c)
  end
  redis.call('DEL', key, H_PREFIX .. email, S_PREFIX .. email)
  redis.call('SREM', OLD_SET, email)
  redis.call('INCR', COUNT_KEY)
  redis.call('SET', key, pack_record(s))
  return s
end
local function load_record(key)
  local raw = redis.pcall('GET', key)
  if type(raw) == 'table' then  -- not a string: the old layout's hash, or an error
    if redis.call('TYPE', key).ok == 'hash' then return upgrade(key) end
    error(raw.err, 0)
  end
  if not raw then return nil end
  return unpack_record(raw)
end
"""
)

# Applies a batch of events in order, each on its own: one that fails (Redis refuses a command,
# a record it cannot read) answers {'!', why} and the others are applied. One call per batch
# spares Redis a script call per event, and the client the arguments all events share.
APPLY_LUA = (
    """
-- KEYS[1] the STATS hash; then per event: the record sw:c:<addr>, the old layout's dedupe
-- marker sw:k:<event key>, sw:ev:<event key>, sw:forgotten:<sha256 of addr>, and
-- sw:pending:<dest> for the state destinations, then for the event streams
-- ARGV[1] number of events; ARGV[2] now; ARGV[3] dedupe TTL (s); ARGV[4] history limit
-- ARGV[5] soft-bounce threshold; ARGV[6] its window (s); ARGV[7] ',kinds,' that suppress at once
-- ARGV[8] counter prefix ('' = none); ARGV[9] keys remembered beyond the history (max)
-- then per event: its key, address, kind, time, source, message id and detail ('' for none);
-- number of state destinations; number of event streams; the event as event streams get it
-- ('' for none); the destinations' names
-- (also the count sw:contacts:n, and an old-layout address's keys when it is converted)
"""
    + RECORD_LUA
    + r"""
-- one event: KEYS and ARGV here are the single-event layout the batch is unpacked into below
-- (KEYS: record, marker, event, forgotten, STATS, pending...; ARGV: unused, now, TTL, history
-- limit, threshold, window, immediate kinds, #state, #streams, stream form, counter prefix,
-- seen max, names...); ev: the event's fields
local function apply_one(KEYS, ARGV, ev)
local now = tonumber(ARGV[2])
local since = now - tonumber(ARGV[3])
local function hash(key) return string.sub(redis.sha1hex(key), 1, 12) end
local rec = load_record(KEYS[1])
local function duplicate()
  if redis.call('EXISTS', KEYS[2]) == 1 then return true end  -- the old layout's marker
  if rec == nil then return false end
  for _, e in ipairs(rec.history) do
    if e.key == ev.key and tonumber(e.recorded) > since then return true end
  end
  local h
  for _, x in ipairs(rec.seen) do
    if tonumber(x[2]) > since then
      h = h or hash(ev.key)
      if x[1] == h then return true end
    end
  end
  return false
end
if duplicate() then return {'duplicate', 0, 0, 0} end
local created = rec == nil
if created then
  rec = {version = 0, suppressed = false, updated_at = now, reasons = {}, history = {},
    sync = {}, soft = {}, cleared = {}, seen = {}}
  -- an address erased with `forget` comes back: restore the suppression its hash kept
  local kept = redis.call('GET', KEYS[4])
  if kept then
    for name, x in pairs(cjson.decode(kept)) do
      rec.reasons[name] = {at = x.at, source = x.source or '', detail = x.detail}
    end
    redis.call('DEL', KEYS[4])
  end
end
local reasons, soft, cleared = rec.reasons, rec.soft, rec.cleared
local version = tonumber(rec.version)
local was = rec.suppressed
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
rec.version, rec.suppressed, rec.updated_at = version, suppressed, now
rec.reasons, rec.soft, rec.cleared = reasons, soft, cleared
local s, e = tonumber(ARGV[8]), tonumber(ARGV[9])
if changed then
  for i = 1, s do
    local dest = ARGV[12 + i]
    local old = rec.sync[dest]
    redis.call('ZADD', KEYS[5 + i], 'NX', now, ev.email)
    rec.sync[dest] = {'pending', now, version, old and old[4] or ''}
  end
end
if e > 0 and ARGV[10] ~= '' then
  redis.call('SET', KEYS[3], ARGV[10], 'EX', ARGV[3])
  for j = s + 1, s + e do
    redis.call('ZADD', KEYS[5 + j], 'NX', now, ev.key)
  end
end
-- the history, capped; keys leaving it are remembered (hashed) while within the dedupe TTL
table.insert(rec.history, 1, {at = t, recorded = now, kind = kind, source = ev.source or '',
  key = ev.key, effect = effect, detail = ev.detail})
local seen = {}
for _, x in ipairs(rec.seen) do if tonumber(x[2]) > since then seen[#seen + 1] = x end end
while #rec.history > tonumber(ARGV[4]) do
  local old = table.remove(rec.history)
  if tonumber(old.recorded) > since then
    seen[#seen + 1] = {hash(old.key), math.floor(tonumber(old.recorded))}
  end
end
while #seen > tonumber(ARGV[12]) do table.remove(seen, 1) end
rec.seen = seen
-- the record is the dedupe mark: written last
redis.call('SET', KEYS[1], pack_record(rec))
return {effect, changed and 1 or 0, version, created and 1 or 0}
end
-- effects are counted (ARGV[8]: the counters' prefix in the STATS hash, '' = not counted) and
-- new records too, in this same call: a crash cannot leave an applied event uncounted
local out, effects, created = {}, {}, 0
local function given(x) if x == '' then return nil end return x end
local a, k = 10, 2
for i = 1, tonumber(ARGV[1]) do
  -- the event's fields as arguments: decoding JSON would cost Redis more than applying it
  local ev = {key = ARGV[a], email = ARGV[a + 1], kind = ARGV[a + 2],
    occurred_at = tonumber(ARGV[a + 3]), source = ARGV[a + 4], message_id = given(ARGV[a + 5]),
    detail = given(ARGV[a + 6])}
  a = a + 7
  local s, e = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  local one = {'', ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], s, e, ARGV[a + 2],
    ARGV[8], ARGV[9]}
  for j = 1, s + e do one[12 + j] = ARGV[a + 2 + j] end
  local keys = {KEYS[k], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[1]}
  for j = 1, s + e do keys[5 + j] = KEYS[k + 3 + j] end
  a, k = a + 3 + s + e, k + 4 + s + e
  local ok, res = pcall(apply_one, keys, one, ev)
  if ok then
    out[i] = {res[1], res[2], res[3]}
    effects[res[1]] = (effects[res[1]] or 0) + 1
    created = created + res[4]
  else
    if type(res) == 'table' then res = res.err or cjson.encode(res) end
    out[i] = {'!', tostring(res)}
  end
end
if created > 0 then redis.call('INCRBY', COUNT_KEY, created) end
if ARGV[8] ~= '' then
  for effect, n in pairs(effects) do redis.call('HINCRBY', KEYS[1], ARGV[8] .. effect, n) end
end
return out
"""
)

# Sets one destination's sync status in a record (none: nothing to do, the address was erased).
SYNC_LUA = (
    """
-- KEYS: the records sw:c:<addr>; per record, 7 ARGV: destination; status; its time; the version
-- it is of; its other fields (JSON object, '' for none); '1': set the confirmed reasons to the
-- next (kind codes), '0': keep them. Each record on its own: one Redis cannot write is skipped
-- ({'!', why} in its place) and the others are written; 1 written, 0 erased meanwhile.
"""
    + RECORD_LUA
    + r"""
local function sync_one(key, a)
  local rec = load_record(key)
  if rec == nil then return 0 end
  local old = rec.sync[ARGV[a]]
  local confirmed = ARGV[a + 5] == '1' and ARGV[a + 6] or (old and old[4] or '')
  local e = {ARGV[a + 1], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), confirmed}
  if ARGV[a + 4] ~= '' then e[5] = cjson.decode(ARGV[a + 4]) end
  rec.sync[ARGV[a]] = e
  redis.call('SET', key, pack_record(rec))
  return 1
end
local out = {}
for i, key in ipairs(KEYS) do
  local ok, res = pcall(sync_one, key, (i - 1) * 7 + 1)
  if ok then
    out[i] = res
  else
    if type(res) == 'table' then res = res.err or cjson.encode(res) end
    out[i] = {'!', tostring(res)}
  end
end
return out
"""
)

# A record, converted first if it is still in the old layout.
LOAD_LUA = (
    """
-- KEYS[1] the record sw:c:<addr>
"""
    + RECORD_LUA
    + r"""
if redis.call('TYPE', KEYS[1]).ok == 'hash' then upgrade(KEYS[1]) end
return redis.call('GET', KEYS[1])
"""
)

FORGET_LUA = f"""
-- KEYS[1] the record; KEYS[2], KEYS[3] the old layout's history and sync keys
-- KEYS[4] sw:forgotten:<sha256 of addr>
-- ARGV[1] the address; ARGV[2] the reasons it keeps (JSON; '' for none)
if redis.call('DEL', KEYS[1]) == 1 then redis.call('DECR', '{CONTACT_COUNT}') end
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('SREM', '{CONTACTS}', ARGV[1])
if ARGV[2] ~= '' then redis.call('SET', KEYS[4], ARGV[2]) end
return 1
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
class SyncWrite:
    """One destination's sync status for one address, to be written (``Ledger.write_syncs``)."""

    email: str
    destination: str
    status: Mapping[str, Any]
    confirmed: Iterable[str] | None = None


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
        self._sync = conn.register_script(SYNC_LUA)
        self._load = conn.register_script(LOAD_LUA)
        self._forget = conn.register_script(FORGET_LUA)
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
        shared: list[bytes | str | int | float] = [
            now,
            s.dedupe_ttl_s,
            s.history_limit,
            s.soft_bounce_threshold,
            s.soft_bounce_window_s,
            self._immediate,
            counters,
            MAX_SEEN,
        ]
        routes: list[tuple[tuple[str, ...], tuple[str, ...]]] = []
        with self.conn.pipeline(transaction=False) as pipe:
            for start in range(0, len(items), APPLY_CHUNK):
                chunk = items[start : start + APPLY_CHUNK]
                keys: list[str] = [STATS]
                args: list[bytes | str | int | float] = [len(chunk), *shared]
                for event, kind in chunk:
                    state_dests = self.route.state.get(kind, ())
                    event_dests = self.route.events.get(kind, ())
                    routes.append((state_dests, event_dests))
                    email, key = event.email, event.key
                    keys += [CONTACT + email, DEDUPE + key, EVENT + key]
                    keys.append(FORGOTTEN + address_hash(email))
                    keys += [PENDING + d for d in state_dests + event_dests]
                    args += [
                        key,
                        email,
                        kind,
                        event.occurred_at,
                        event.source,
                        event.message_id or "",
                        _detail(event.reason, event.smtp_code) or "",
                        len(state_dests),
                        len(event_dests),
                        # the event as event streams get it: the codec's form, every field kept
                        orjson.dumps(codec.dump(event)) if event_dests else "",
                        *state_dests,
                        *event_dests,
                    ]
                self._apply(keys=keys, args=args, client=pipe)
            chunks = pipe.execute(raise_on_error=False)
        replies: list[Any] = []
        for start, chunk_reply in zip(range(0, len(items), APPLY_CHUNK), chunks, strict=True):
            size = min(APPLY_CHUNK, len(items) - start)
            if isinstance(chunk_reply, redis.ResponseError):  # refused whole (out of memory...)
                replies += [chunk_reply] * size
            else:
                replies += chunk_reply
        for i, (reply, (state_dests, event_dests)) in enumerate(zip(replies, routes, strict=True)):
            if isinstance(reply, redis.ResponseError) or _text(reply[0]) == "!":
                why = str(reply) if isinstance(reply, redis.ResponseError) else _text(reply[1])
                result.failed.append((i, why[:300]))
                result.effects["failed"] += 1
                continue
            effect = _text(reply[0])
            result.effects[effect] += 1
            if effect == "duplicate":
                continue
            if int(reply[1]):  # the state changed: the CRMs get it
                result.marked.update(state_dests)
            result.marked.update(event_dests)
        return result

    # -- reading ------------------------------------------------------------------------------

    def records(self, emails: Sequence[str]) -> list[list[Any] | None]:
        """The decoded records of ``emails`` (None: the ledger has none); a record still in the
        old layout is converted as it is read."""
        if not emails:
            return []
        with self.conn.pipeline(transaction=False) as pipe:
            for email in emails:
                pipe.get(CONTACT + email)
            rows: list[Any] = pipe.execute(raise_on_error=False)
        old = [i for i, row in enumerate(rows) if isinstance(row, redis.ResponseError)]
        if old:
            with self.conn.pipeline(transaction=False) as pipe:
                for i in old:
                    self._load(keys=[CONTACT + emails[i]], client=pipe)
                for i, row in zip(old, pipe.execute(), strict=True):
                    rows[i] = row
        return [orjson.loads(row) if row is not None else None for row in rows]

    def states(self, emails: list[str]) -> list[ContactState]:
        return [_state(e, r) for e, r in zip(emails, self.records(emails), strict=True)]

    def state(self, email: str) -> ContactState:
        return self.states([normalize_email(email)])[0]

    def view(self, email: str) -> ContactView | None:
        email = normalize_email(email)
        record = self.records([email])[0]
        if record is None:
            return None
        return ContactView(
            state=_state(email, record), history=_history(record), sync=_sync(record)
        )

    def sync_status(self, emails: list[str]) -> list[dict[str, dict[str, Any]]]:
        """Each address's sync status per destination (empty for an address with no record)."""
        return [_sync(r) if r else {} for r in self.records(emails)]

    def confirmed(self, destination: str, emails: list[str]) -> list[frozenset[str]]:
        """The reasons ``destination`` last confirmed for each address."""
        return [_confirmed(r, destination) for r in self.records(emails)]

    def states_confirmed(
        self, destination: str, emails: list[str]
    ) -> list[tuple[ContactState, frozenset[str]]]:
        """Each address's state and the reasons ``destination`` last confirmed, in one read."""
        return [
            (_state(e, r), _confirmed(r, destination))
            for e, r in zip(emails, self.records(emails), strict=True)
        ]

    # -- sync status --------------------------------------------------------------------------

    def write_sync(
        self,
        pipe: redis.client.Pipeline,
        email: str,
        destination: str,
        status: Mapping[str, Any],
        confirmed: Iterable[str] | None = None,
    ) -> None:
        """Queue on ``pipe`` the write of ``destination``'s sync status for ``email`` (and, for a
        state destination that confirmed a change, the reasons it now has); an address erased
        meanwhile is left erased."""
        self.write_syncs(pipe, [SyncWrite(email, destination, status, confirmed)])

    def write_syncs(self, pipe: redis.client.Pipeline, writes: Sequence[SyncWrite]) -> None:
        """Queue on ``pipe`` many sync status writes, as :meth:`write_sync`, in one script call
        per ``APPLY_CHUNK`` records."""
        for start in range(0, len(writes), APPLY_CHUNK):
            keys: list[str] = []
            args: list[str | int | float | bytes] = []
            for w in writes[start : start + APPLY_CHUNK]:
                rest = dict(w.status)
                label = str(rest.pop("status", ""))
                keys.append(CONTACT + w.email)
                args += [
                    w.destination,
                    label,
                    rest.pop("since" if label == "pending" else "at", 0),
                    rest.pop("version", 0),
                    orjson.dumps(rest) if rest else "",
                    "0" if w.confirmed is None else "1",
                    _codes(w.confirmed or ()),
                ]
            self._sync(keys=keys, args=args, client=pipe)

    # -- the whole ledger ---------------------------------------------------------------------

    def scan(self, cursor: int, count: int) -> tuple[int, list[str]]:
        """One step of a walk over every address (``SCAN``; resumable from the cursor)."""
        cursor, keys = self.conn.scan(cursor, match=CONTACT + "*", count=count)
        return int(cursor), [_text(k)[len(CONTACT) :] for k in keys]

    def contact_count(self) -> int:
        """How many addresses the ledger holds (records, and any still in the old layout)."""
        with self.conn.pipeline(transaction=False) as pipe:
            pipe.get(CONTACT_COUNT)
            pipe.scard(CONTACTS)
            count, old = pipe.execute()
        return int(count or 0) + int(old)

    def migrate(
        self, batch: int = 500, on_batch: Callable[[int], None] = lambda n: None
    ) -> MigrationReport:
        """Convert every record still in the old layout, ``batch`` at a time, each atomically:
        safe to interrupt and to run again (what is converted is not seen again), and while
        workers run (the scripts convert what they touch). Pending sets, in-flight sets and
        dead letters are not touched."""
        report = MigrationReport(before=int(self.conn.scard(CONTACTS)))
        cursor = 0
        while True:
            cursor, keys = self.conn.scan(cursor, match=CONTACT + "*", count=batch, _type="hash")
            if keys:
                with self.conn.pipeline(transaction=False) as pipe:
                    for key in keys:
                        self._load(keys=[key], client=pipe)
                    pipe.execute()
                report.converted += len(keys)
                on_batch(report.converted)
            if int(cursor) == 0:
                break
        report.left = int(self.conn.scard(CONTACTS))  # members with no record (never written)
        if report.left:
            self.conn.delete(CONTACTS)
        report.records = int(self.conn.get(CONTACT_COUNT) or 0)
        return report

    def forget(self, email: str) -> bool:
        """Erase everything the ledger holds about an address. A suppressed address leaves only
        the SHA-256 of itself and its reasons' names and times, so that it stays suppressed if an
        ESP reports it again. Returns whether the address was suppressed."""
        email = normalize_email(email)
        state = self.state(email)
        kept = b""
        if state.suppressed:
            kept = orjson.dumps(
                {name: {"at": r.at, "source": "forgotten"} for name, r in state.reasons.items()}
            )
        keys = [CONTACT + email, HISTORY + email, SYNC + email, FORGOTTEN + address_hash(email)]
        self._forget(keys=keys, args=[email, kept])
        return state.suppressed


@dataclass
class MigrationReport:
    before: int = 0  # addresses in the old layout's address set when the run started
    converted: int = 0  # records converted by this run
    left: int = 0  # addresses in that set that had no record (the set is removed)
    records: int = 0  # records in the ledger after the run


def address_hash(email: str) -> str:
    return hashlib.sha256(normalize_email(email).encode()).hexdigest()


def _detail(reason: str | None, smtp_code: str | None) -> str | None:
    if reason and smtp_code:
        return f"{smtp_code} {reason}"[:300]
    return (reason or smtp_code or None) and (reason or smtp_code or "")[:300]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _confirmed(record: list[Any] | None, destination: str) -> frozenset[str]:
    entry = _part(record, 5, {}).get(destination) if record else None
    return _names(entry[3]) if entry and len(entry) > 3 else frozenset()


def _part(record: list[Any], index: int, empty: Any) -> Any:
    """A part of a record; ``empty`` for an empty one (left out at the end, or ``{}``)."""
    value = record[index] if len(record) > index else None
    return value if value else empty


def _codes(names: Iterable[str]) -> str:
    coded = [KIND_CODES.get(n, n) for n in sorted(names)]
    if all(len(c) == 1 for c in coded):
        return "".join(coded)
    return "," + ",".join(sorted(names))


def _names(codes: str) -> frozenset[str]:
    if codes.startswith(","):
        return frozenset(n for n in codes[1:].split(",") if n)
    return frozenset(KIND_NAMES.get(c, c) for c in codes)


def _reasons(record: list[Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for code, entry in _part(record, 3, {}).items():
        reason: dict[str, Any] = {"at": entry[0], "source": entry[1]}
        if len(entry) > 2:
            reason["detail"] = entry[2]
        out[KIND_NAMES.get(code, code)] = reason
    return out


def _state(email: str, record: list[Any] | None) -> ContactState:
    if record is None:
        return ContactState(email=email, suppressed=False, reasons={}, updated_at=0.0, version=0)
    reasons = {
        name: ReasonEntry(name, float(r["at"]), str(r.get("source", "")), r.get("detail"))
        for name, r in _reasons(record).items()
    }
    return ContactState(
        email=email,
        suppressed=record[1] == 1,
        reasons=reasons,
        updated_at=_updated_at(record),
        version=int(record[0] or 0),
    )


def _updated_at(record: list[Any]) -> float:
    """The record's time; 0 stands for its newest history entry's."""
    history = _part(record, 4, [])
    if record[2] == 0 and history:
        return float(history[0][1])
    return float(record[2] or 0)


def _history(record: list[Any]) -> list[dict[str, Any]]:
    reasons = _reasons(record)
    out = []
    for entry in _part(record, 4, []):
        kind = KIND_NAMES.get(entry[2], entry[2])
        effect = entry[4] if len(entry) > 4 else EFFECT_CODES["suppressed"]
        item: dict[str, Any] = {
            "at": entry[0],
            "recorded": entry[1],
            "kind": kind,
            "key": entry[3],
            "effect": EFFECT_NAMES.get(effect, effect),
        }
        if len(entry) < 6:  # like the reason the record holds for its kind
            reason = reasons.get(kind, {})
            item["source"] = reason.get("source", "")
            if reason.get("detail") is not None:
                item["detail"] = reason["detail"]
        else:
            item["source"] = entry[5]
            if len(entry) > 6:
                item["detail"] = entry[6]
        out.append(item)
    return out


def _sync(record: list[Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for dest, entry in sorted(_part(record, 5, {}).items()):
        label, at, version = entry[0], entry[1], entry[2]
        status: dict[str, Any] = {
            "status": label,
            "since" if label == "pending" else "at": at,
            "version": version,
        }
        if len(entry) > 4 and entry[4]:
            status.update(entry[4])
        out[dest] = status
    return out
