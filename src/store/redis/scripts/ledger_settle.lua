-- Charges the actual cost to every budget of a reservation and releases its
-- hold. A hold whose lease ran out was already released: the cost is still
-- charged.
--
-- KEYS     n budget hashes (distinct), the holds index, the hold
-- ARGV     now_us ('' = server TIME), actual, amount held, reservation id,
--          lease ms, hold key prefix, n, then n x (mode, limit, period code)
-- Returns  n statuses

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

sweep(holds_key, ARGV[6], now, 32)
return reply
