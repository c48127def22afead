-- Charges the actual cost to every budget of a reservation and releases its
-- hold. A hold whose lease ran out was already released: the cost is still
-- charged.
--
-- An attributed charge is also added to the spend aggregates of each of
-- its scopes, for its model and the UTC day of `now`: a hash per scope and
-- day (fields `c|<model>` cost, `p|` prompt, `o|` completion, `k|` cached
-- tokens, `n|` requests), a sorted set of each scope's days, and the set of
-- scopes that have spend. Aggregates are kept for 400 days.
--
-- KEYS     n budget hashes (distinct), the holds index, the hold, the set of
--          scopes with spend
-- ARGV     now_us ('' = server TIME), actual, amount held, reservation id,
--          lease ms, hold key prefix, n, then n x (mode, limit, period code),
--          then the spend key prefix, model, prompt, completion, cached
--          tokens, m, and m scope ids (m = 0: not attributed)
-- Returns  n statuses, then the day the charge counted in
--
-- A settlement of `settle_batch.lua`, which passes it its own KEYS and ARGV.

local function ledger_settle(KEYS, ARGV)
  local now = now_us(ARGV[1])
  local actual = m_parse(ARGV[2])
  local lease_ms = tonumber(ARGV[5])
  local n = tonumber(ARGV[7])
  local holds_key, hold_key = KEYS[n + 1], KEYS[n + 2]

  local held, partial = nil, false
  local h = redis.call('HMGET', hold_key, 'a', 'p')
  -- The amount must match too: an id from before a Redis restart that lost
  -- the ledger must not release another request's hold.
  if h[1] and h[1] == ARGV[3] then
    held, partial = m_parse(h[1]), h[2] == '1'
    redis.call('DEL', hold_key)
    redis.call('ZREM', holds_key, ARGV[4])
  end

  local reply = {}
  for i = 1, n do
    local base = 5 + 3 * i
    local acc = load(KEYS[i], ARGV[base], ARGV[base + 1], ARGV[base + 2], now)
    if held then
      acc.rs = m_max0(m_sub(acc.rs, held))
      if partial then
        acc.pt = math.max(0, acc.pt - 1)
      end
    end
    acc.sp = m_add(acc.sp, actual)
    save(KEYS[i], acc, now, lease_ms)
    for _, v in ipairs(status(acc)) do
      reply[#reply + 1] = v
    end
  end

  local day = idiv(now, DAY_US)
  local at = 8 + 3 * n
  local spend_prefix, model = ARGV[at], ARGV[at + 1]
  local m = tonumber(ARGV[at + 5]) or 0
  for j = 1, m do
    local scope = ARGV[at + 5 + j]
    local key = spend_prefix .. scope .. ':' .. istr(day)
    redis.call('HINCRBY', key, 'c|' .. model, ARGV[2])
    redis.call('HINCRBY', key, 'p|' .. model, ARGV[at + 2])
    redis.call('HINCRBY', key, 'o|' .. model, ARGV[at + 3])
    redis.call('HINCRBY', key, 'k|' .. model, ARGV[at + 4])
    redis.call('HINCRBY', key, 'n|' .. model, 1)
    redis.call('PEXPIRE', key, 400 * 86400000)
    redis.call('ZADD', spend_prefix .. 'days:' .. scope, day, istr(day))
    redis.call('SADD', KEYS[n + 3], scope)
  end

  sweep(holds_key, ARGV[6], now, 32)
  reply[#reply + 1] = day
  return reply
end
