-- take.lua: a deliver job takes a batch: ids whose lease expired go back to pending, then up
-- to ARGV[2] due ids (except those another taker has in flight) move from pending to in flight
-- under a lease, and the batch is recorded as this taker's (KEYS[3]). Returns the ids.
--
-- KEYS[1] the destination's pending set (sw:pending:<dest>)
-- KEYS[2] its in-flight set (sw:inflight:<dest>)
-- KEYS[3] this taker's batch (sw:taken:<dest>:<job id>)
-- ARGV[1] now (unix seconds)
-- ARGV[2] most ids to take
-- ARGV[3] the lease (s)

local now, n, lease = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, n)
for _, id in ipairs(expired) do
  redis.call('ZADD', KEYS[1], 'NX', now, id)
  redis.call('ZREM', KEYS[2], id)
end
-- due ids, except those another taker has in flight (a contact changed again while its last
-- state is being sent waits for that request: two takers never send one contact at once)
local ids, offset = {}, 0
while #ids < n and offset < 10 * n do
  local chunk = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', offset, n)
  if #chunk == 0 then break end
  for _, id in ipairs(chunk) do
    if #ids < n and not redis.call('ZSCORE', KEYS[2], id) then ids[#ids + 1] = id end
  end
  offset = offset + #chunk
end
-- this taker's batch (id -> its lease), so that a dead taker's batch is told from the others'
local until_ = math.floor((now + lease) * 1000) / 1000
redis.call('DEL', KEYS[3])
if #ids > 0 then  -- one command each for the whole batch
  local scored, leases = {}, {}
  for i, id in ipairs(ids) do
    scored[2 * i - 1], scored[2 * i] = until_, id
    leases[2 * i - 1], leases[2 * i] = id, until_
  end
  redis.call('ZREM', KEYS[1], unpack(ids))
  redis.call('ZADD', KEYS[2], unpack(scored))
  redis.call('HSET', KEYS[3], unpack(leases))
  redis.call('PEXPIRE', KEYS[3], math.ceil(lease * 1000) + 60000)
end
return ids
