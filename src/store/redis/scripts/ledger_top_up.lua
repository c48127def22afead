-- Adds funds to a prepaid balance (a budget's limit until the next call
-- brings it back to its spec), at most once per idempotency key within 24 h.
--
-- KEYS     the budget hash, the holds index, the idempotency marker ('' when
--          the caller gave no key: then KEYS has two entries)
-- ARGV     now_us ('' = server TIME), amount, lease ms, hold key prefix,
--          mode, limit, period code
-- Returns  the status, then 1 if the key had been used (nothing added)

local now = now_us(ARGV[1])
local lease_ms = tonumber(ARGV[3])
sweep(KEYS[2], ARGV[4], now, 32)
local acc = load(KEYS[1], ARGV[5], ARGV[6], ARGV[7], now)
local replayed = 0
if KEYS[3] then
  if redis.call('SET', KEYS[3], '1', 'NX', 'PX', 86400000) == false then
    replayed = 1
  end
end
if replayed == 0 then
  acc.lim = m_add(acc.lim, m_parse(ARGV[2]))
  save(KEYS[1], acc, now, lease_ms)
end
local reply = status(acc)
reply[#reply + 1] = replayed
return reply
