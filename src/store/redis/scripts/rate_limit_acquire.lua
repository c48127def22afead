-- Checks a request against every limit of its key and charges them all, or
-- none. One call per admission.
--
-- KEYS[1]  the key's GCRA state (hash: cfg, o<i>, t<i>)
-- KEYS[2]  the key's concurrency slots (sorted set: token -> lease expiry ms)
-- ARGV     now_us ('' = server TIME), config, n, max_concurrent (-1: none),
--          slot token, slot lease ms, then n x (amount, window_us, cost)
-- Returns  { verdict (0 admitted, 1 limited, 2 concurrency), in_flight,
--            n x (remaining, reset_us, retry_after_us or -1) }

local now = now_us(ARGV[1])
local config = ARGV[2]
local n = tonumber(ARGV[3])
local max_concurrent = tonumber(ARGV[4])

local stored = redis.call('HGETALL', KEYS[1])
local state = {}
for i = 1, #stored, 2 do
  state[stored[i]] = stored[i + 1]
end
local fresh = state.cfg ~= config
if fresh then
  state = {}
end

local reply = { 0, 0 }
local origins, tats, uncharged = {}, {}, {}
local admitted = true
local full_at = now
for i = 1, n do
  local base = 4 + 3 * i
  local amount, window, cost = tonumber(ARGV[base]), tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2])
  local o = tonumber(state['o' .. i]) or now
  local tat = tonumber(state['t' .. i]) or 0
  o, tat = rebase(o, tat, now, amount, window)
  local t = math.max(now - o, 0)
  local new_tat, ok, remaining, reset, retry = gcra_check(tat, t, cost, amount, window)
  admitted = admitted and ok
  origins[i], tats[i] = o, new_tat
  if ok then
    uncharged[i] = { tat, t, amount, window }
  end
  full_at = math.max(full_at, now + reset)
  reply[#reply + 1] = remaining
  reply[#reply + 1] = reset
  reply[#reply + 1] = retry
end

local now_ms = math.floor(now / 1000)
local in_flight = 0
local slot_free = true
if max_concurrent >= 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', istr(now_ms))
  in_flight = redis.call('ZCARD', KEYS[2])
  slot_free = in_flight < max_concurrent
end

if not admitted or not slot_free then
  reply[1] = admitted and 2 or 1
  -- Nothing is charged: the limits that would have admitted the request
  -- report their state as it is, not as the charge would have left it.
  for i, u in pairs(uncharged) do
    local remaining, reset = gcra_peek(u[1], u[2], u[3], u[4])
    reply[3 * i] = remaining
    reply[3 * i + 1] = reset
  end
else
  if fresh then
    redis.call('DEL', KEYS[1])
  end
  local fields = { 'cfg', config }
  for i = 1, n do
    fields[#fields + 1] = 'o' .. i
    fields[#fields + 1] = istr(origins[i])
    fields[#fields + 1] = 't' .. i
    fields[#fields + 1] = istr(tats[i])
  end
  redis.call('HSET', KEYS[1], unpack(fields))
  -- Back to full: the state is then the same as no state, so let it go.
  redis.call('PEXPIRE', KEYS[1], istr(math.max(0, math.ceil((full_at - now) / 1000)) + EXPIRY_MARGIN_MS))
  if max_concurrent >= 0 then
    local lease = tonumber(ARGV[6])
    redis.call('ZADD', KEYS[2], istr(now_ms + lease), ARGV[5])
    redis.call('PEXPIRE', KEYS[2], istr(lease + 1000))
    in_flight = in_flight + 1
  end
end
reply[2] = in_flight
return reply
