-- Adds funds to a budget (a prepaid balance's funding; a budget's limit
-- until the next call brings it back to its spec).
--
-- KEYS     the budget hash, the holds index
-- ARGV     now_us ('' = server TIME), amount, lease ms, hold key prefix,
--          mode, limit, period code
-- Returns  the status

local now = now_us(ARGV[1])
local lease_ms = tonumber(ARGV[3])
sweep(KEYS[2], ARGV[4], now, 32)
local acc = load(KEYS[1], ARGV[5], ARGV[6], ARGV[7], now)
acc.lim = m_add(acc.lim, m_parse(ARGV[2]))
save(KEYS[1], acc, now, lease_ms)
return status(acc)
