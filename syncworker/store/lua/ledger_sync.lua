-- ledger_sync.lua: sets one destination's sync status in records (none: nothing to do, the
-- address was erased). Each record on its own: one Redis cannot write is skipped ({'!', why} in
-- its place) and the others are written; 1 written, 0 erased meanwhile. Loaded after
-- _record.lua.
--
-- KEYS[1..] the records sw:c:<addr>
-- ARGV[1..] per record, 9 values: destination; status; its time; the version it is of; its
--   other fields (JSON object, '' for none); '1': set the confirmed reasons to the next (kind
--   codes), '0': keep them; the confirmed reasons; the record as the worker read it and that
--   record with the status set ('' and '': none), written as they are if the record is still the
--   one read

local function sync_one(key, a)
  if ARGV[a + 7] ~= '' then  -- the worker's version, if the record has not changed since
    local cur = redis.pcall('GET', key)
    if cur == ARGV[a + 7] then
      redis.call('SET', key, ARGV[a + 8])
      return 1
    end
  end
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
  local ok, res = pcall(sync_one, key, (i - 1) * 9 + 1)
  if ok then
    out[i] = res
  else
    if type(res) == 'table' then res = res.err or cjson.encode(res) end
    out[i] = {'!', tostring(res)}
  end
end
return out
