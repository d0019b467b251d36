-- release.lua: a deliver job that ends frees its slot among the destination's takers and drops
-- its batch record. Returns 1 if it held a slot.
--
-- KEYS[1] the destination's takers (sw:takers:<dest>)
-- KEYS[2] this taker's batch (sw:taken:<dest>:<job id>)
-- ARGV[1] this taker's job id

redis.call('DEL', KEYS[2])
return redis.call('HDEL', KEYS[1], ARGV[1])
