-- inbox_forget_consumer.lua: removes a consumer from the inbox's group if it holds no entry,
-- atomically: a consumer that reads between a check and the removal would lose its entries'
-- place in the pending list. Returns XGROUP DELCONSUMER's reply, or -1 if it holds entries.
--
-- KEYS[1] the inbox stream (sw:inbox)
-- ARGV[1] its consumer group
-- ARGV[2] the consumer

if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) == 0 then
  return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
end
return -1
