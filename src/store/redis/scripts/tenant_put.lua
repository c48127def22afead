-- Stores a tenant record (a user, team or org) and tells every instance.
--
-- KEYS[1]  the record (hash: rec), KEYS[2] its kind's id index (sorted
--          set, every score 0); both under the key store's hash tag
-- ARGV     mode ('c' create | 'u' upsert), id, record JSON, invalidation
--          channel, invalidation message
-- Returns  { 'ok', replaced record JSON or '' } | { 'exists' }

local previous = redis.call('HGET', KEYS[1], 'rec')
if ARGV[1] == 'c' and previous then
  return { 'exists' }
end
redis.call('HSET', KEYS[1], 'rec', ARGV[3])
redis.call('ZADD', KEYS[2], 0, ARGV[2])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return { 'ok', previous or '' }
