-- The rate-limit algorithms, the same as `rate_limit::{gcra, sliding,
-- fixed}` (see their docs), over one scope's hash: one field per limit,
-- named by its measure, algorithm and window (never its amount), holding
-- the limit's state as numbers separated by spaces, the first of which is
-- when the state is back to full (Unix µs):
--
--   gcra     full at debt      the cost outstanding at `at`
--   fixed    full index used   the cost admitted in window `index`
--   sliding  full k c k c …    the cost admitted per bucket (`60·t/W`)
--
-- Times are Unix µs (the server's `TIME`). GCRA units and sliding buckets
-- are counted on grids anchored at the Unix epoch, so any instance, and a
-- memory store whose start is on the same grid, agree exactly.

-- A state is dropped this long after it is back to full (the moment it
-- carries nothing): slack for clocks (the server's `TIME` after a failover,
-- or a caller's clock) that run ahead of Redis's expiry clock.
local EXPIRY_MARGIN_MS = 1000
local BUCKETS = 60

local function parse(value)
  local out = {}
  if value then
    for n in string.gmatch(value, '%S+') do
      out[#out + 1] = tonumber(n)
    end
  end
  return out
end

-- ceil(a * b / d); 2^53 when d is 0 (a limit of 0 never frees up).
local function ceil_div(a, b, d)
  if a <= 0 then
    return 0
  end
  if d == 0 then
    return MAX
  end
  local q, exact = mul_div(a, b, d)
  if not exact then
    q = q + 1
  end
  return q
end

-- GCRA ---------------------------------------------------------------------

-- The state as (base, tat): `tat` in units since `base`, a multiple of the
-- window at or before both `at` and `now`.
local function g_load(st, now, A, W)
  local at, debt = st[2] or now, st[3] or 0
  local base = idiv(math.min(at, now), W) * W
  return base, (mul_div(at - base, A, W)) + debt
end

local function g_store(base, tat, now, A, W)
  local now_u = (mul_div(now - base, A, W))
  local full = base + ceil_div(tat, W, A)
  return istr(full) .. ' ' .. istr(now) .. ' ' .. istr(math.max(0, tat - now_u)), full
end

local function g_check(st, now, cost, A, W, cap)
  local base, tat = g_load(st, now, A, W)
  local t = now - base
  local now_u = (mul_div(t, A, W))
  local b = math.max(tat, now_u)
  local charged = b + cost
  if cost <= cap and charged - now_u <= cap then
    return true, cap - (charged - now_u), math.max(0, base + ceil_div(charged, W, A) - now), 0
  end
  local retry = -1
  if cost <= cap then
    retry = math.max(0, base + ceil_div(charged - cap, W, A) - now)
  end
  return false, math.max(0, cap - (b - now_u)), math.max(0, base + ceil_div(b, W, A) - now), retry
end

local function g_adjust(st, now, delta, A, W)
  local base, tat = g_load(st, now, A, W)
  local now_u = (mul_div(now - base, A, W))
  if delta >= 0 then
    tat = math.min(math.max(tat, now_u) + delta, MAX)
  else
    tat = math.max(tat + delta, now_u)
  end
  return g_store(base, tat, now, A, W)
end

-- Fixed --------------------------------------------------------------------

local function f_used(st, now, W)
  if st[2] == idiv(now, W) then
    return st[3] or 0
  end
  return 0
end

local function f_check(st, now, cost, A, W)
  local used = f_used(st, now, W)
  local index = idiv(now, W)
  local finish = (index + 1) * W - now
  local charged = used + cost
  if cost <= A and charged <= A then
    local reset = finish
    if charged == 0 then
      reset = 0
    end
    return true, A - charged, reset, 0
  end
  local retry = -1
  if cost <= A then
    retry = finish
  end
  return false, math.max(0, A - used), finish, retry
end

local function f_adjust(st, now, delta, W)
  local index = idiv(now, W)
  local used = math.max(0, f_used(st, now, W) + delta)
  local full = 0
  if used > 0 then
    full = (index + 1) * W
  end
  return istr(full) .. ' ' .. istr(index) .. ' ' .. istr(used), full
end

-- Sliding ------------------------------------------------------------------

local function s_leaves(k, W)
  return ceil_div(k + BUCKETS + 1, W, BUCKETS)
end

-- The buckets that still count at `now`, oldest first: { {k, c}, … }.
local function s_load(st, now, W)
  local oldest = (mul_div(now, BUCKETS, W)) - BUCKETS
  local buckets = {}
  for i = 2, #st - 1, 2 do
    if st[i] >= oldest and st[i + 1] > 0 then
      buckets[#buckets + 1] = { st[i], st[i + 1] }
    end
  end
  return buckets
end

local function s_check(st, now, cost, A, W)
  local buckets = s_load(st, now, W)
  local used = 0
  for _, b in ipairs(buckets) do
    used = used + b[2]
  end
  local charged = used + cost
  if cost <= A and charged <= A then
    local reset = 0
    if #buckets > 0 then
      reset = s_leaves(buckets[1][1], W) - now
    elseif cost > 0 then
      reset = s_leaves((mul_div(now, BUCKETS, W)), W) - now
    end
    return true, A - charged, math.max(0, reset), 0
  end
  local retry = -1
  if cost <= A then
    local excess, freed = charged - A, 0
    for _, b in ipairs(buckets) do
      freed = freed + b[2]
      if freed >= excess then
        retry = math.max(0, s_leaves(b[1], W) - now)
        break
      end
    end
  end
  local reset = 0
  if #buckets > 0 then
    reset = math.max(0, s_leaves(buckets[1][1], W) - now)
  end
  return false, math.max(0, A - used), reset, retry
end

local function s_adjust(st, now, delta, W)
  local buckets = s_load(st, now, W)
  if delta > 0 then
    local k = (mul_div(now, BUCKETS, W))
    local last = buckets[#buckets]
    if last and last[1] == k then
      last[2] = math.min(last[2] + delta, MAX)
    else
      buckets[#buckets + 1] = { k, delta }
    end
  elseif delta < 0 then
    -- Refunds come from the oldest buckets: what is left counts at least as
    -- long as it would have.
    local refund = -delta
    for _, b in ipairs(buckets) do
      local take = math.min(refund, b[2])
      b[2] = b[2] - take
      refund = refund - take
      if refund == 0 then
        break
      end
    end
  end
  local parts, full = {}, 0
  for _, b in ipairs(buckets) do
    if b[2] > 0 then
      parts[#parts + 1] = istr(b[1]) .. ' ' .. istr(b[2])
      full = s_leaves(b[1], W)
    end
  end
  return istr(full) .. ' ' .. table.concat(parts, ' '), full
end

-- Any algorithm ------------------------------------------------------------

local function cell_check(alg, st, now, cost, A, W, cap)
  if alg == 'g' then
    return g_check(st, now, cost, A, W, cap)
  elseif alg == 'f' then
    return f_check(st, now, cost, A, W)
  end
  return s_check(st, now, cost, A, W)
end

-- The new value of a field after a charge or refund of `delta`, and when
-- it is back to full.
local function cell_adjust(alg, st, now, delta, A, W)
  if alg == 'g' then
    return g_adjust(st, now, delta, A, W)
  elseif alg == 'f' then
    return f_adjust(st, now, delta, W)
  end
  return s_adjust(st, now, delta, W)
end

-- Writes `updates` (field -> value) into the scope's hash, drops the other
-- fields already back to full, and lets the hash expire when every field
-- is full.
local function write_scope(key, stored, updates, fulls, now)
  local fields, gone = {}, {}
  local full_at = now
  for field, value in pairs(stored) do
    if updates[field] == nil then
      local f = parse(value)[1] or 0
      if f <= now then
        gone[#gone + 1] = field
      else
        full_at = math.max(full_at, f)
      end
    end
  end
  for field, value in pairs(updates) do
    fields[#fields + 1] = field
    fields[#fields + 1] = value
    full_at = math.max(full_at, fulls[field])
  end
  if #gone > 0 then
    redis.call('HDEL', key, unpack(gone))
  end
  if #fields > 0 then
    redis.call('HSET', key, unpack(fields))
    redis.call('PEXPIRE', key, istr(math.max(0, math.ceil((full_at - now) / 1000)) + EXPIRY_MARGIN_MS))
  end
end

local function read_scope(key)
  local stored = {}
  local flat = redis.call('HGETALL', key)
  for i = 1, #flat, 2 do
    stored[flat[i]] = flat[i + 1]
  end
  return stored
end
