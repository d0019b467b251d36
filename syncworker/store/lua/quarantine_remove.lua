-- quarantine_remove.lua: removes a record by its value and lowers the byte total by what
-- left. Returns how many copies were removed.
--
-- KEYS[1] the quarantine list (sw:quarantine)
-- KEYS[2] its byte total (sw:quarantine:bytes)
-- ARGV[1] the record
-- ARGV[2] LREM's count (-1: one, from the tail; 0: every copy)

local removed = redis.call('LREM', KEYS[1], ARGV[2], ARGV[1])
if removed > 0 and redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('DECRBY', KEYS[2], #ARGV[1] * removed)
end
return removed
