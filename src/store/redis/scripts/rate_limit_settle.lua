-- Applies a finished request's corrections: adds each delta (refund < 0,
-- charge > 0) to its limit without a check and frees its concurrency slot.
--
-- KEYS[1]  the key's GCRA state, KEYS[2] its concurrency slots
-- ARGV     now_us ('' = server TIME), config, n, release (0/1),
--          then n x (amount, window_us, delta)
-- Returns  1

local now = now_us(ARGV[1])
local config = ARGV[2]
local n = tonumber(ARGV[3])

if ARGV[4] == '1' then
  -- Slots are counted, not owned: freeing the one closest to its lease
  -- expiry leaves the same count as freeing this request's own.
  redis.call('ZPOPMIN', KEYS[2])
end

local charges = false
for i = 1, n do
  if tonumber(ARGV[2 + 3 * i + 2]) > 0 then
    charges = true
  end
end

local cfg = redis.call('HGET', KEYS[1], 'cfg')
if cfg == false then
  -- No state (expired: it was full). Refunds have nothing to refund;
  -- charges still count.
  if not charges then
    return 1
  end
elseif cfg ~= config then
  -- The key's limits changed since admission: its state started afresh.
  return 1
end

local stored = redis.call('HGETALL', KEYS[1])
local state = {}
for i = 1, #stored, 2 do
  state[stored[i]] = stored[i + 1]
end

local fields = { 'cfg', config }
local full_at = now
for i = 1, n do
  local base = 2 + 3 * i
  local amount, window, delta = tonumber(ARGV[base]), tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2])
  local o = tonumber(state['o' .. i]) or now
  local tat = tonumber(state['t' .. i]) or 0
  o, tat = rebase(o, tat, now, amount, window)
  local t = math.max(now - o, 0)
  if delta ~= 0 then
    tat = gcra_adjust(tat, t, delta, amount, window)
  end
  full_at = math.max(full_at, o + time_of(tat, amount, window))
  fields[#fields + 1] = 'o' .. i
  fields[#fields + 1] = istr(o)
  fields[#fields + 1] = 't' .. i
  fields[#fields + 1] = istr(tat)
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('PEXPIRE', KEYS[1], istr(math.max(0, math.ceil((full_at - now) / 1000)) + EXPIRY_MARGIN_MS))
return 1
