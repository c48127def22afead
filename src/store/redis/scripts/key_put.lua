-- Stores a key record under its id and under every secret hash it holds
-- (current and retired), drops the hashes the replaced record held and this
-- one does not, and tells every instance which hashes changed.
--
-- Every key is under the store's hash tag (one slot): the secret keys of
-- the replaced record, read from KEYS[1], are in the slot of those declared.
--
-- KEYS[1]  the record by id (hash: rec, hashes), KEYS[2] the id index
--          (sorted set), KEYS[3..] the record by each of its secret hashes,
--          in the order of ARGV[4]
-- ARGV     mode ('c' create | 'u' upsert | 'x' replace the record only if
--          it is still ARGV[7]), id, record JSON, its secret hashes (hex,
--          space-separated), invalidation channel, secret key prefix,
--          expected record JSON ('' = no record; mode 'x' only)
-- Returns  { 'ok', replaced record JSON or '', hashes touched } |
--          { 'exists' } | { 'taken', id of the key holding a secret } |
--          { 'changed' }

local id, rec, hashes = ARGV[2], ARGV[3], ARGV[4]
local current = redis.call('HMGET', KEYS[1], 'rec', 'hashes')
local previous = current[1] or ''
if ARGV[1] == 'c' and current[1] then
  return { 'exists' }
end
if ARGV[1] == 'x' and previous ~= ARGV[7] then
  return { 'changed' }
end
for i = 3, #KEYS do
  local owner = redis.call('HGET', KEYS[i], 'id')
  if owner and owner ~= id then
    return { 'taken', owner }
  end
end

local kept = {}
for hash in string.gmatch(hashes, '%S+') do
  kept[hash] = true
end
local touched = hashes
for hash in string.gmatch(current[2] or '', '%S+') do
  if not kept[hash] then
    -- A secret the new record does not hold stops working.
    redis.call('DEL', ARGV[6] .. hash)
    touched = touched .. ' ' .. hash
  end
end
for i = 3, #KEYS do
  redis.call('HSET', KEYS[i], 'id', id, 'rec', rec)
end
redis.call('HSET', KEYS[1], 'rec', rec, 'hashes', hashes)
redis.call('ZADD', KEYS[2], 0, id)
redis.call('PUBLISH', ARGV[5], touched)
return { 'ok', previous, touched }
