-- Applies a batch of settlements (rate-limit corrections, budget charges
-- and releases) in one call, each exactly once however often the batch is
-- sent.
--
-- The batch is named by a marker key, written with the batch's replies
-- when it is applied: a batch sent again (its reply was lost with the
-- connection, or it timed out) finds the marker and gets the same replies
-- without applying anything twice. The writer sends batch k + 1 only once
-- batch k has answered, so k + 1 deletes k's marker (the ack); a marker
-- nobody acks expires after the writer's retry window.
--
-- Each settlement runs under `pcall`: one that fails (a reply it cannot
-- read) is answered with its error, and the others still apply.
--
-- KEYS     the marker, [the marker to delete], then each settlement's keys
-- ARGV     marker lifetime ms, settlements, ack (0/1), then per settlement:
--          kind (r: rate limit, s: budget charge, l: budget release), its
--          key count, its argument count, its arguments
-- Returns  per settlement {1, its reply} or {0, the error}

local SETTLERS = { r = rate_limit_settle, s = ledger_settle, l = ledger_release }

local marker = KEYS[1]
local done = redis.call('GET', marker)
if done then
  return cmsgpack.unpack(done)
end
local ttl, count = ARGV[1], tonumber(ARGV[2])
local k, a = 1, 4
if ARGV[3] == '1' then
  redis.call('DEL', KEYS[2])
  k = 2
end
local replies = {}
for e = 1, count do
  local kind, nk, na = ARGV[a], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  a = a + 3
  local keys, args = {}, {}
  for i = 1, nk do
    keys[i] = KEYS[k + i]
  end
  for i = 1, na do
    args[i] = ARGV[a + i - 1]
  end
  k, a = k + nk, a + na
  local settle = SETTLERS[kind]
  local ok, reply = false, 'unknown settlement kind'
  if settle then
    ok, reply = pcall(settle, keys, args)
  end
  if ok then
    replies[e] = { 1, reply }
  else
    -- Redis 7 raises `redis.call`'s errors as tables.
    if type(reply) == 'table' then
      reply = reply.err or 'error'
    end
    replies[e] = { 0, tostring(reply) }
  end
end
redis.call('SET', marker, cmsgpack.pack(replies), 'PX', ttl)
return replies
