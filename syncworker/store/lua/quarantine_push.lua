-- quarantine_push.lua: pushes records at the head, then drops records from the tail (the
-- oldest) while the list holds more than ARGV[1] records or more than ARGV[2] bytes. KEYS[2]
-- keeps the list's byte total so that no push reads the list; it is computed once from the list
-- if missing (a list written by an older release), and reset when the list is empty. Whatever
-- removes a record elsewhere should lower it (quarantine_remove.lua does); where it does not, the
-- total errs high and the list is trimmed further than it needs to be, never less. Returns how
-- many records were dropped.
--
-- KEYS[1] the quarantine list (sw:quarantine)
-- KEYS[2] its byte total (sw:quarantine:bytes)
-- KEYS[3] the stats hash (sw:stats)
-- ARGV[1] most records
-- ARGV[2] most bytes
-- ARGV[3..] the records, oldest first

local limit, most = tonumber(ARGV[1]), tonumber(ARGV[2])
local total = tonumber(redis.call('GET', KEYS[2]))
if total == nil then
  total = 0
  for _, value in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do total = total + #value end
end
for i = 3, #ARGV do
  redis.call('LPUSH', KEYS[1], ARGV[i])
  total = total + #ARGV[i]
end
local dropped = 0
local n = redis.call('LLEN', KEYS[1])
while n > 0 and (n > limit or total > most) do
  total = total - #redis.call('RPOP', KEYS[1])
  n = n - 1
  dropped = dropped + 1
end
if n == 0 or total < 0 then total = 0 end
redis.call('SET', KEYS[2], total)
redis.call('HINCRBY', KEYS[3], 'quarantined', #ARGV - 2)
if dropped > 0 then redis.call('HINCRBY', KEYS[3], 'quarantine_dropped', dropped) end
return dropped
