-- ledger_write.lua: writes the records a batch of events changed, each only if it is still the
-- one the worker read (compare-and-set), with what goes with it: the pending marks, the events
-- for event streams, the count of records, the effect counters. Each address on its own: 1
-- written, 0 changed meanwhile (the worker reads it again and applies its events again),
-- {'!', why} when Redis refused.
--
-- KEYS[1] the STATS hash (sw:stats)
-- KEYS[2] the count of records (sw:contacts:n)
-- KEYS[3..] per address: its record sw:c:<addr>; sw:forgotten:<sha256 of addr>; sw:pending:<dest>
--   of each state destination to mark; then per event for event streams: sw:ev:<event key> and
--   sw:pending:<dest> of each of its streams
-- ARGV[1] number of addresses
-- ARGV[2] now (unix seconds)
-- ARGV[3] dedupe TTL (s): the TTL of sw:ev:<event key>
-- ARGV[4] counter prefix ('' = not counted)
-- ARGV[5..] per address, 9 values: the record read ('' none); what sw:forgotten held when none
--   was read ('' none); the record to write ('' = leave it); '1' it is new; '1' drop
--   sw:forgotten; the address; number of state destinations; number of events for streams; the
--   effects to count (names, comma-separated); then per event for streams, 3 values: its form,
--   its number of streams, its key

local now, ttl, prefix = ARGV[2], ARGV[3], ARGV[4]
local function write(a, k, ns, ne)
  local rkey, fkey, expected = KEYS[k], KEYS[k + 1], ARGV[a]
  local cur = redis.pcall('GET', rkey)
  if type(cur) == 'table' then return 0 end  -- the old layout's hash: read it again, converted
  if (cur or '') ~= expected then return 0 end
  if expected == '' and (redis.call('GET', fkey) or '') ~= ARGV[a + 1] then return 0 end
  if ARGV[a + 2] ~= '' then redis.call('SET', rkey, ARGV[a + 2]) end
  if ARGV[a + 4] == '1' then redis.call('DEL', fkey) end
  for j = 1, ns do redis.call('ZADD', KEYS[k + 1 + j], 'NX', now, ARGV[a + 5]) end
  local kk, aa = k + 2 + ns, a + 9
  for _ = 1, ne do
    local nd = tonumber(ARGV[aa + 1])
    redis.call('SET', KEYS[kk], ARGV[aa], 'EX', ttl)
    for d = 1, nd do redis.call('ZADD', KEYS[kk + d], 'NX', now, ARGV[aa + 2]) end
    kk, aa = kk + 1 + nd, aa + 3
  end
  return 1
end
local out, effects, created = {}, {}, 0
local a, k = 5, 3
for i = 1, tonumber(ARGV[1]) do
  local ns, ne = tonumber(ARGV[a + 6]), tonumber(ARGV[a + 7])
  local keys = 2 + ns
  for j = 1, ne do keys = keys + 1 + tonumber(ARGV[a + 9 + (j - 1) * 3 + 1]) end
  local ok, res = pcall(write, a, k, ns, ne)
  if not ok then
    if type(res) == 'table' then res = res.err or cjson.encode(res) end
    out[i] = {'!', tostring(res)}
  else
    out[i] = res
    if res == 1 then
      if ARGV[a + 3] == '1' then created = created + 1 end
      for name in string.gmatch(ARGV[a + 8], '[^,]+') do
        effects[name] = (effects[name] or 0) + 1
      end
    end
  end
  a, k = a + 9 + 3 * ne, k + keys
end
if created > 0 then redis.call('INCRBY', KEYS[2], created) end
if prefix ~= '' then
  for name, n in pairs(effects) do redis.call('HINCRBY', KEYS[1], prefix .. name, n) end
end
return out
