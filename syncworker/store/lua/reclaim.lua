-- reclaim.lua: frees the slot of a dead taker in the destination's takers, and makes the ids
-- of its batch that are still in flight under its lease due now: nobody is sending them. An id
-- whose lease has changed since was retaken by another taker and is left be. Returns how many
-- ids were made due (-1: the taker held no slot).
--
-- KEYS[1] the destination's takers (sw:takers:<dest>)
-- KEYS[2] its in-flight set (sw:inflight:<dest>)
-- KEYS[3] the dead taker's batch (sw:taken:<dest>:<job id>)
-- ARGV[1] the dead taker's job id

if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return -1 end
redis.call('HDEL', KEYS[1], ARGV[1])
local taken = redis.call('HGETALL', KEYS[3])
local n = 0
for i = 1, #taken, 2 do
  local score = redis.call('ZSCORE', KEYS[2], taken[i])
  if score and math.abs(tonumber(score) - tonumber(taken[i + 1])) < 0.01 then
    redis.call('ZADD', KEYS[2], 'XX', 0, taken[i])
    n = n + 1
  end
end
redis.call('DEL', KEYS[3])
return n
