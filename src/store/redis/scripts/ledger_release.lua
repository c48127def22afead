-- Releases a reservation's hold without charging anything.
--
-- KEYS     the holds index, the hold
-- ARGV     now_us ('' = server TIME), amount held, reservation id, hold key prefix
-- Returns  1 if the hold was released, 0 if it was already gone
--
-- A settlement of `settle_batch.lua`, which passes it its own KEYS and ARGV.

local function ledger_release(KEYS, ARGV)
  local now = now_us(ARGV[1])
  local released = 0
  if redis.call('HGET', KEYS[2], 'a') == ARGV[2] then
    unhold(KEYS[2])
    redis.call('ZREM', KEYS[1], ARGV[3])
    released = 1
  end
  sweep(KEYS[1], ARGV[4], now, 32)
  return released
end
