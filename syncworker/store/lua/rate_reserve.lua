-- rate_reserve.lua: reserves a destination's next request slot (a GCRA with no burst, on
-- Redis's clock). Returns {1, wait}: reserved, wait that many seconds; {0, wait}: the wait would
-- exceed ARGV[2], nothing reserved.
--
-- KEYS[1] the destination's next free slot (sw:rate:<dest>)
-- ARGV[1] the interval between requests (s)
-- ARGV[2] the longest wait to accept (s)

local interval, cap = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = tat - now
if wait > cap then return {0, tostring(wait)} end
local nxt = tat + interval
redis.call('SET', KEYS[1], tostring(nxt), 'PX', math.ceil((nxt - now) * 1000) + 1000)
return {1, tostring(wait)}
