-- breaker_admit.lua: may a deliver job take a batch? Returns {'closed', '0'}: yes;
-- {'probe', until}: it sends the probe (the breaker is half open until then); {state, at}: no,
-- wait until at.
--
-- KEYS[1] the destination's breaker hash (sw:breaker:<dest>)
-- ARGV[1] now (unix seconds)
-- ARGV[2] seconds the probe may take before another job may probe (its holder died)

local now = tonumber(ARGV[1])
local state = redis.call('HGET', KEYS[1], 'state')
if not state or state == 'closed' then return {'closed', '0'} end
local at = tonumber(redis.call('HGET', KEYS[1], 'probe_at') or '0')
if now < at then return {state, tostring(at)} end
local held = tostring(now + tonumber(ARGV[2]))
redis.call('HSET', KEYS[1], 'state', 'half_open', 'probe_at', held)
return {'probe', held}
