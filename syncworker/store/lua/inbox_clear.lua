-- inbox_clear.lua: frees the queued flag if it still names the job. Returns 1 if freed.
--
-- KEYS[1] the queued flag (sw:inbox:queued)
-- ARGV[1] the ingest job id

if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
