-- breaker_release.lua: a probe that got no verdict: the breaker opens again with its next probe
-- due now. Returns 1 if it was half open.
--
-- KEYS[1] the destination's breaker hash (sw:breaker:<dest>)
-- ARGV[1] now (unix seconds)

if redis.call('HGET', KEYS[1], 'state') == 'half_open' then
  redis.call('HSET', KEYS[1], 'state', 'open', 'probe_at', ARGV[1])
  return 1
end
return 0
