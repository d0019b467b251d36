-- breaker_succeeded.lua: counts a call the destination answered: closes the breaker and lifts
-- its pause. Returns the state it was in.
--
-- KEYS[1] the destination's breaker hash (sw:breaker:<dest>)
-- KEYS[2] the destination's pause key (sw:pause:<dest>)
-- ARGV[1] now (unix seconds)

local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
redis.call('HSET', KEYS[1], 'failures', 0, 'last_success_at', ARGV[1])
if state ~= 'closed' then
  redis.call('HSET', KEYS[1], 'state', 'closed', 'since', ARGV[1])
  redis.call('HDEL', KEYS[1], 'probe_at')
  local pause = redis.call('GET', KEYS[2])
  if pause and string.find(pause, 'breaker open', 1, true) then redis.call('DEL', KEYS[2]) end
end
return state
