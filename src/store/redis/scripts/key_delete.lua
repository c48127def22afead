-- Deletes a key record, by id and by every secret hash it holds, and tells
-- every instance.
--
-- KEYS[1]  the record by id, KEYS[2] the id index (the secret keys, named
--          in KEYS[1], share their slot: one hash tag)
-- ARGV     id, invalidation channel, secret key prefix
-- Returns  the hashes the record held (hex, space-separated), or nil if
--          there was no such key

redis.call('ZREM', KEYS[2], ARGV[1])
local hashes = redis.call('HGET', KEYS[1], 'hashes')
if not hashes then
  return false
end
for hash in string.gmatch(hashes, '%S+') do
  redis.call('DEL', ARGV[3] .. hash)
end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[2], hashes)
return hashes
