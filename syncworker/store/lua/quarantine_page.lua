-- quarantine_page.lua: the replay's next page: up to ARGV[2] records toward the head from the
-- newest record read that stays (ARGV[1]), or from the tail if there is none or it is gone (the
-- tail was trimmed past it). Found by value, so pushes at the head and trims at the tail do not
-- move the walk.
--
-- KEYS[1] the quarantine list (sw:quarantine)
-- ARGV[1] the newest record read that stays ('' none)
-- ARGV[2] most records to return

local start = redis.call('LLEN', KEYS[1])
if ARGV[1] ~= '' then
  local at = redis.call('LPOS', KEYS[1], ARGV[1], 'RANK', -1)
  if at then start = at end
end
if start == 0 then return {} end
return redis.call('LRANGE', KEYS[1], math.max(0, start - tonumber(ARGV[2])), start - 1)
