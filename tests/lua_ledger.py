"""The ledger's rules as the previous release applied them: one Lua script per event, run in
Redis. Kept as the reference that the rules applied in the worker (syncworker/record.py) are
checked against, event by event (tests/test_record.py).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import orjson
import redis

from syncworker.config import Settings
from syncworker.events import HygieneEvent
from syncworker.ledger import MAX_SEEN, address_hash
from syncworker.record import EFFECT_CODES, IMMEDIATE, KIND_CODES
from syncworker.store.keys import (
    CONFIRMED,
    CONTACT,
    CONTACT_COUNT,
    CONTACTS,
    DEDUPE,
    EVENT,
    FORGOTTEN,
    HISTORY,
    PENDING,
    STATS,
    SYNC,
)


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
  local t = redis.call('TYPE', key).ok
  if t == 'none' then return nil end
  if t == 'hash' then return upgrade(key) end
  return unpack_record(redis.call('GET', key))
end
"""
)

APPLY_LUA = (
    """
-- KEYS[1] the record sw:c:<addr>; KEYS[2] the old layout's dedupe marker sw:k:<event key>
-- KEYS[3] sw:ev:<event key>; KEYS[4] sw:forgotten:<sha256 of addr>; KEYS[5] the STATS hash
-- KEYS[6..] sw:pending:<dest>, the state destinations', then the event streams'
-- ARGV[1] the event (JSON); ARGV[2] now; ARGV[3] dedupe TTL (s); ARGV[4] history limit
-- ARGV[5] soft-bounce threshold; ARGV[6] its window (s); ARGV[7] ',kinds,' that suppress at once
-- ARGV[8] number of state destinations; ARGV[9] number of event streams
-- ARGV[10] the event as event streams get it ('' for none); ARGV[11] counter prefix ('' = none)
-- ARGV[12] keys remembered beyond the history (max); ARGV[13..] the destinations' names
-- (also the count sw:contacts:n, and an old-layout address's keys when it is converted)
"""
    + RECORD_LUA
    + r"""
local ev = cjson.decode(ARGV[1])
local now = tonumber(ARGV[2])
local since = now - tonumber(ARGV[3])
-- ARGV[11]: the prefix of the effect counters in the hash KEYS[5] ('' = not counted), counted
-- here so that a crash cannot leave an applied event uncounted
local function count(effect)
  if ARGV[11] ~= '' then redis.call('HINCRBY', KEYS[5], ARGV[11] .. effect, 1) end
end
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
if duplicate() then
  count('duplicate')
  return {'duplicate', 0, 0}
end
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
if created then redis.call('INCR', COUNT_KEY) end
-- the record is the dedupe mark: written last
redis.call('SET', KEYS[1], pack_record(rec))
count(effect)
return {effect, changed and 1 or 0, version}
"""
)


def apply(
    conn: redis.Redis,
    settings: Settings,
    event: HygieneEvent,
    kind: str,
    detail: str | None,
    state_dests: tuple[str, ...] = (),
    event_dests: tuple[str, ...] = (),
    form: bytes = b"",
) -> str:
    """Apply one event with the reference script; its effect."""
    item = {
        "key": event.key,
        "email": event.email,
        "kind": kind,
        "occurred_at": event.occurred_at,
        "source": event.source,
        "message_id": event.message_id,
        "detail": detail,
    }
    keys = [
        CONTACT + event.email,
        DEDUPE + event.key,
        EVENT + event.key,
        FORGOTTEN + address_hash(event.email),
        STATS,
        *(PENDING + d for d in state_dests + event_dests),
    ]
    args: list[bytes | str | int | float] = [
        orjson.dumps({k: v for k, v in item.items() if v is not None}),
        time.time(),
        settings.dedupe_ttl_s,
        settings.history_limit,
        settings.soft_bounce_threshold,
        settings.soft_bounce_window_s,
        "," + ",".join(sorted(IMMEDIATE)) + ",",
        len(state_dests),
        len(event_dests),
        form if event_dests else "",
        "",
        MAX_SEEN,
        *state_dests,
        *event_dests,
    ]
    reply = conn.register_script(APPLY_LUA)(keys=keys, args=args)
    effect = reply[0]
    return effect.decode() if isinstance(effect, bytes) else str(effect)
