-- Applies a finished request's corrections: adds each delta (refund < 0,
-- charge > 0) to its limit without a check and frees its concurrency slots.
--
-- KEYS     per scope: its state, its concurrency slots
-- ARGV     now_us ('' = server TIME), scopes, then per scope: release
--          (0/1), limits, then per limit: field, algorithm, amount,
--          window_us, burst, delta
-- Returns  1
--
-- A settlement of `settle_batch.lua`, which passes it its own KEYS and ARGV.

local function rate_limit_settle(KEYS, ARGV)
  local now = now_us(ARGV[1])
  local scopes = tonumber(ARGV[2])
  local at = 3
  for s = 1, scopes do
    local release, n = ARGV[at], tonumber(ARGV[at + 1])
    at = at + 2
    if release == '1' then
      -- Slots are counted, not owned: freeing the one closest to its lease
      -- expiry leaves the same count as freeing this request's own.
      redis.call('ZPOPMIN', KEYS[2 * s])
    end
    local stored = read_scope(KEYS[2 * s - 1])
    local updates, fulls = {}, {}
    for i = 1, n do
      local field, alg = ARGV[at], ARGV[at + 1]
      local A, W, delta = tonumber(ARGV[at + 2]), tonumber(ARGV[at + 3]), tonumber(ARGV[at + 5])
      at = at + 6
      -- A state that is gone (it was full) has nothing to refund; charges
      -- still count.
      if delta > 0 or (delta < 0 and stored[field]) then
        updates[field], fulls[field] = cell_adjust(alg, parse(stored[field]), now, delta, A, W)
      end
    end
    write_scope(KEYS[2 * s - 1], stored, updates, fulls, now)
  end
  return 1
end
