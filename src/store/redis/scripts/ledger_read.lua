-- A budget's status in its current period (expired holds released first).
--
-- KEYS     the budget hash, the holds index
-- ARGV     now_us ('' = server TIME), hold key prefix, mode, limit, period code
-- Returns  the status

local now = now_us(ARGV[1])
sweep(KEYS[2], ARGV[2], now, 32)
return status(load(KEYS[1], ARGV[3], ARGV[4], ARGV[5], now))
