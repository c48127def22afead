-- Removes the record of key id, and tells every instance.
--
-- KEYS[1]  the id index
-- ARGV     invalidation channel, record key prefix
-- Returns  the removed record's secret hash, or '' if there was none

local hash = redis.call('GET', KEYS[1])
if not hash then
  return ''
end
redis.call('DEL', KEYS[1], ARGV[2] .. hash)
redis.call('PUBLISH', ARGV[1], hash)
return hash
