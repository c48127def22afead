-- GCRA, the same algorithm as `rate_limit::gcra` (see its docs): a limit of
-- `amount` per `window` µs runs in units of `window / amount`; the state is
-- the theoretical arrival time `tat` in units. Each limit of a key keeps its
-- own origin `o` (µs); `units_at(now - o)` is the time in units. The origin
-- only ever moves by whole windows (`rebase`), which shifts every unit count
-- by exactly `k * amount`: the arithmetic is the same as the memory store's,
-- and the numbers stay small.

-- A state is dropped this long after it is back to full (the moment it
-- carries nothing): slack for clocks (the server's `TIME` after a failover,
-- or a caller's clock) that run ahead of Redis's expiry clock.
local EXPIRY_MARGIN_MS = 1000

local function units_at(t, amount, window)
  return (mul_div(t, amount, window))
end

-- The first µs (since the origin) at which `units_at` reaches `units`.
local function time_of(units, amount, window)
  if units <= 0 then
    return 0
  end
  if amount == 0 then
    return MAX
  end
  local q, exact = mul_div(units, window, amount)
  if not exact then
    q = q + 1
  end
  return q
end

-- Moves the origin forward by whole windows so that `now - o < window`.
local function rebase(o, tat, now, amount, window)
  local elapsed = now - o
  if elapsed < window then
    return o, tat
  end
  local k = idiv(elapsed, window)
  local shift = k * amount
  o = o + k * window
  if shift >= tat then
    tat = 0
  else
    tat = tat - shift
  end
  return o, tat
end

-- The state at `t` without a charge: remaining units, µs to full.
local function gcra_peek(tat, t, amount, window)
  local now = units_at(t, amount, window)
  local base = math.max(tat, now)
  return math.max(0, amount - (base - now)), math.max(0, time_of(base, amount, window) - t)
end

-- Checks `cost` at `t` µs since the origin. Returns the new tat, whether
-- admitted, remaining units, µs to full, µs until it fits (-1: never).
local function gcra_check(tat, t, cost, amount, window)
  local now = units_at(t, amount, window)
  local base = math.max(tat, now)
  local charged = base + cost
  if cost <= amount and charged - now <= amount then
    return charged, true, amount - (charged - now), math.max(0, time_of(charged, amount, window) - t), 0
  end
  local retry = -1
  if cost <= amount then
    retry = math.max(0, time_of(charged - amount, amount, window) - t)
  end
  local remaining, reset = gcra_peek(tat, t, amount, window)
  return tat, false, remaining, reset, retry
end

-- Charges (delta > 0) or refunds (delta < 0) without a check.
local function gcra_adjust(tat, t, delta, amount, window)
  local now = units_at(t, amount, window)
  if delta >= 0 then
    return math.min(math.max(tat, now) + delta, MAX)
  end
  return math.max(math.max(tat + delta, 0), now)
end
