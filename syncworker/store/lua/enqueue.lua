-- enqueue.lua: writes a batch of accepted requests atomically in one command: the intake
-- counters bumped, each request's payload appended to the inbox stream, and, unless an ingest
-- job is queued and not yet started, one ingest job queued: its hash written in RQ's own job
-- layout and its id pushed on the queue, as RQ's Queue.enqueue would. Returns how many entries
-- were appended. Every key comes in ARGV (no KEYS).
--
-- The job hash (rq:job:<id>) gets created_at and enqueued_at (ARGV[10]) and FIXED_FIELDS,
-- replaced when the script is loaded (syncworker/store/scripts.py) by the field, value pairs of
-- RQ's own Job.to_dict() for the ingest job, but for those two times: with RQ 2.x these are data,
-- success_callback_name, failure_callback_name, stopped_callback_name, started_at, ended_at,
-- last_heartbeat, worker_name, group_id, retries_left, retry_intervals, origin, description,
-- timeout, result_ttl, failure_ttl, status. tests/test_queueing.py checks that RQ's Job.fetch
-- reads the job back with the fields Queue.enqueue sets.
--
-- ARGV[1] the queue's key (rq:queue:syncworker-ingest)
-- ARGV[2] RQ's set of queues (rq:queues)
-- ARGV[3] the stats hash (sw:stats)
-- ARGV[4] the job key prefix (rq:job:)
-- ARGV[5] the inbox stream (sw:inbox)
-- ARGV[6] its consumer group
-- ARGV[7] the queued flag (sw:inbox:queued)
-- ARGV[8] the flag's TTL (s)
-- ARGV[9] a new job id
-- ARGV[10] now, as RQ writes it (%Y-%m-%dT%H:%M:%S.%fZ)
-- ARGV[11] how many counters
-- ARGV[12..] that many counter name, amount pairs; then per request a reference, note, payload
--   triple

local queue, queues, stats, prefix = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local inbox, group, flag = ARGV[5], ARGV[6], ARGV[7]
local i = 12
for _ = 1, tonumber(ARGV[11]) do
  redis.call('HINCRBY', stats, ARGV[i], ARGV[i + 1])
  i = i + 2
end
if i > #ARGV then return 0 end
if redis.call('EXISTS', inbox) == 0 then
  redis.call('XGROUP', 'CREATE', inbox, group, '0', 'MKSTREAM')
end
local pushed = 0
while i <= #ARGV do
  redis.call('XADD', inbox, '*', 'r', ARGV[i], 'd', ARGV[i + 1], 'p', ARGV[i + 2])
  pushed = pushed + 1
  i = i + 3
end
if redis.call('EXISTS', flag) == 0 then
  local fixed = {FIXED_FIELDS}
  local id, stamp = ARGV[9], ARGV[10]
  redis.call('SET', flag, id, 'EX', ARGV[8])
  redis.call('HSET', prefix .. id, 'created_at', stamp, 'enqueued_at', stamp, unpack(fixed))
  redis.call('RPUSH', queue, id)
  redis.call('SADD', queues, queue)
end
return pushed
