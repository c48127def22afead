-- Sets a flag (revoked, disabled) on the record of key id, and tells every
-- instance.
--
-- KEYS[1]  the id index
-- ARGV     field, value (0/1), invalidation channel, record key prefix
-- Returns  the record's secret hash, or '' if there is no such key

local hash = redis.call('GET', KEYS[1])
if not hash then
  return ''
end
local record = ARGV[4] .. hash
if redis.call('EXISTS', record) == 0 then
  return ''
end
redis.call('HSET', record, ARGV[1], ARGV[2])
redis.call('PUBLISH', ARGV[3], hash)
return hash
