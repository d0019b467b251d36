-- ledger_load.lua: a record, converted first if it is still in the old layout. Loaded after
-- _record.lua.
--
-- KEYS[1] the record sw:c:<addr>

if redis.call('TYPE', KEYS[1]).ok == 'hash' then upgrade(KEYS[1]) end
return redis.call('GET', KEYS[1])
