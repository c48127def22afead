-- Stores a key record by the hash of its secret, and tells every instance.
--
-- KEYS[1]  the record hash (by secret hash), KEYS[2] the id index
-- ARGV     secret hash (hex), id, record JSON, revoked (0/1), disabled (0/1),
--          invalidation channel, record key prefix
-- Returns  { 1, previous hash or '' } or { 0, id of the key that already
--          has this secret }

local existing = redis.call('HGET', KEYS[1], 'id')
if existing and existing ~= ARGV[2] then
  return { 0, existing }
end
local previous = redis.call('GET', KEYS[2]) or ''
if previous ~= '' and previous ~= ARGV[1] then
  -- The key's secret was rotated: the old secret stops working.
  redis.call('DEL', ARGV[7] .. previous)
  redis.call('PUBLISH', ARGV[6], previous)
end
redis.call('HSET', KEYS[1], 'id', ARGV[2], 'rec', ARGV[3], 'revoked', ARGV[4], 'disabled', ARGV[5])
redis.call('SET', KEYS[2], ARGV[1])
redis.call('PUBLISH', ARGV[6], ARGV[1])
return { 1, previous }
