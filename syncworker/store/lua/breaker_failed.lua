-- breaker_failed.lua: counts a call that got no answer; the failures in a row reaching ARGV[2]
-- (or any failure while open or probing) open the breaker and pause the destination until the
-- next probe. Returns the state it leaves.
--
-- KEYS[1] the destination's breaker hash (sw:breaker:<dest>)
-- KEYS[2] the destination's pause key (sw:pause:<dest>)
-- ARGV[1] now (unix seconds)
-- ARGV[2] failures in a row that open the breaker
-- ARGV[3] seconds from now to the next probe
-- ARGV[4] the failure, masked (kept as last_error)

local now, wait = tonumber(ARGV[1]), tonumber(ARGV[3])
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
local n = redis.call('HINCRBY', KEYS[1], 'failures', 1)
redis.call('HSET', KEYS[1], 'last_error', ARGV[4], 'last_error_at', ARGV[1])
if state == 'closed' and n < tonumber(ARGV[2]) then return state end
if state == 'closed' then redis.call('HSET', KEYS[1], 'since', ARGV[1]) end
redis.call('HSET', KEYS[1], 'state', 'open', 'probe_at', tostring(now + wait))
local ms = math.max(1, math.floor(wait * 1000))
if redis.call('PTTL', KEYS[2]) < ms then
  local pause = cjson.encode({reason = 'breaker open', ['until'] = now + wait})
  redis.call('SET', KEYS[2], pause, 'PX', ms)
end
return 'open'
