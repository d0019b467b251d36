-- ledger_forget.lua: erases an address's record (and its old layout's keys), keeping the reasons
-- of a suppressed one under the hash of the address.
--
-- KEYS[1] the record sw:c:<addr>
-- KEYS[2] the old layout's history sw:h:<addr>
-- KEYS[3] the old layout's sync hash sw:sync:<addr>
-- KEYS[4] sw:forgotten:<sha256 of addr>
-- KEYS[5] the count of records (sw:contacts:n)
-- KEYS[6] the old layout's address set (sw:contacts)
-- ARGV[1] the address
-- ARGV[2] the reasons it keeps (JSON; '' for none)

if redis.call('DEL', KEYS[1]) == 1 then redis.call('DECR', KEYS[5]) end
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('SREM', KEYS[6], ARGV[1])
if ARGV[2] ~= '' then redis.call('SET', KEYS[4], ARGV[2]) end
return 1
