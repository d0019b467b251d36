-- quarantine_rewrite.lua: rewrites one record where it is: at the index the replay expects it
-- (counted from the tail, the end it walks from), or, if a trim or a removal by someone else has
-- moved it, wherever it is now (found by its exact value); gone, it is left gone. Returns 1 if
-- rewritten.
--
-- KEYS[1] the quarantine list (sw:quarantine)
-- KEYS[2] its byte total (sw:quarantine:bytes)
-- ARGV[1] the record as it is
-- ARGV[2] the record to write in its place
-- ARGV[3] its expected index (negative: from the tail)

local at = tonumber(ARGV[3])
if redis.call('LINDEX', KEYS[1], at) ~= ARGV[1] then
  at = redis.call('LPOS', KEYS[1], ARGV[1], 'RANK', -1)
  if not at then return 0 end
end
redis.call('LSET', KEYS[1], at, ARGV[2])
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('INCRBY', KEYS[2], #ARGV[2] - #ARGV[1]) end
return 1
