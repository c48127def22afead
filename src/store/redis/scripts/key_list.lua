-- A page of key records in id order: up to `limit` whose ids sort after
-- `after`, read in one atomic step (no record half-written by a put).
--
-- KEYS[1]  the id index (sorted set, every score 0: ordered by id bytes);
--          the records, named from it, share its slot (one hash tag)
-- ARGV     record-by-id key prefix, lower bound ('-' or '(' .. after), limit
-- Returns  the records' JSON

local out = {}
for _, id in ipairs(redis.call('ZRANGEBYLEX', KEYS[1], ARGV[2], '+', 'LIMIT', 0, ARGV[3])) do
  local rec = redis.call('HGET', ARGV[1] .. id, 'rec')
  if rec then
    out[#out + 1] = rec
  end
end
return out
