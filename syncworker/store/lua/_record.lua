-- _record.lua: the ledger's record layout, shared by ledger_sync.lua and ledger_load.lua (the
-- loader puts it before their own text). Reads a record (load_record), converting one still in
-- the old layout (upgrade), and writes one (pack_record).
--
-- No KEYS or ARGV of its own. The old layout's keys of an address are named from the prefixes
-- below, copies of syncworker/store/keys.py's (CONTACT, HISTORY, SYNC, CONFIRMED, CONTACTS,
-- CONTACT_COUNT); KIND_CODE and EFFECT_CODE are syncworker/record.py's KIND_CODES and
-- EFFECT_CODES. tests/test_scripts.py checks that the copies are equal.

local C_PREFIX, H_PREFIX, S_PREFIX, F_PREFIX = 'sw:c:', 'sw:h:', 'sw:sync:', 'sw:confirmed:'
local OLD_SET, COUNT_KEY = 'sw:contacts', 'sw:contacts:n'
local KIND_CODE = {
  ["hard_bounce"] = 'h',
  ["soft_bounce"] = 's',
  ["blocked"] = 'b',
  ["unsubscribe"] = 'u',
  ["spam_complaint"] = 'c',
  ["resubscribe"] = 'r',
  ["manual"] = 'm',
  ["manual_unsuppress"] = 'M',
}
local EFFECT_CODE = {
  ["suppressed"] = 's',
  ["already"] = 'a',
  ["stale"] = 't',
  ["counted"] = 'c',
  ["ignored"] = 'i',
  ["unsuppressed"] = 'u',
  ["resubscribed"] = 'r',
}

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
