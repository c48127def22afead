-- Sets a budget's spend in its current period to zero (holds in flight
-- stay); a prepaid balance is left as it is.
--
-- KEYS     the budget hash, the holds index
-- ARGV     now_us ('' = server TIME), lease ms, hold key prefix, mode, limit,
--          period code
-- Returns  the status

local now = now_us(ARGV[1])
sweep(KEYS[2], ARGV[3], now, 32)
local acc = load(KEYS[1], ARGV[4], ARGV[5], ARGV[6], now)
if acc.mode == 'b' then
  acc.sp = M_ZERO
end
save(KEYS[1], acc, now, tonumber(ARGV[2]))
return status(acc)
