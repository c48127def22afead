-- Deletes a tenant record and tells every instance.
--
-- KEYS[1]  the record, KEYS[2] its kind's id index
-- ARGV     id, invalidation channel, invalidation message
-- Returns  1 if the tenant existed, else 0

redis.call('ZREM', KEYS[2], ARGV[1])
local existed = redis.call('DEL', KEYS[1])
if existed == 1 then
  redis.call('PUBLISH', ARGV[2], ARGV[3])
end
return existed
