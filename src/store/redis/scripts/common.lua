-- tollgate: helpers shared by every script (prepended at compile time).
--
-- Redis runs Lua 5.1, whose only number type is a double: integers are
-- exact below 2^53 and nowhere above. Every value these scripts compute with
-- is kept below that bound (the Rust side clamps its inputs), products that
-- could exceed it go through `mul_div`, and money, whose range is i64
-- nano-dollars, is held as two exact halves (see `m_parse`).

-- The server's clock decides (one clock for every gateway instance), unless
-- the caller passed its own time (a test clock).
if redis.replicate_commands then
  redis.replicate_commands()
end

local MAX = 9007199254740992 -- 2^53

local function now_us(arg)
  if arg ~= nil and arg ~= '' then
    return tonumber(arg)
  end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- An integer as a decimal string: `tostring` would give "1e+15".
local function istr(n)
  return string.format('%.0f', n)
end

-- floor(a / d) for integers 0 <= a < 2^53, 0 < d.
local function idiv(a, d)
  local q = math.floor(a / d)
  if q * d > a then
    q = q - 1
  elseif (q + 1) * d <= a then
    q = q + 1
  end
  return q
end

-- floor(a * b / d) and whether the division is exact, for integers
-- 0 <= a, b < 2^53 and 0 < d < 2^52; saturates at 2^53.
local function mul_div(a, b, d)
  if a == 0 or b == 0 then
    return 0, true
  end
  local p = a * b
  if p < MAX then
    -- Rounding is monotonic: a double product below 2^53 is the exact one.
    local q = idiv(p, d)
    return q, q * d == p
  end
  local qa = idiv(a, d)
  local ra = a - qa * d
  local qb = idiv(b, d)
  local rb = b - qb * d
  -- a*b/d = qa*qb*d + qa*rb + ra*qb + ra*rb/d, with ra, rb < d.
  local q = qa * qb * d + qa * rb + ra * qb
  if q >= MAX then
    return MAX, false
  end
  -- ra*rb/d by long division in base B = 2^k, with B*d <= 2^52 so that
  -- every intermediate stays exact: a step or two for realistic windows,
  -- at most 52 for the largest.
  -- (log2 may be off by one either way: one bit of margin.)
  local k = math.max(1, 50 - math.floor(math.log(d) / math.log(2)))
  local B = 2 ^ k
  local P = 1
  while P * B <= ra do
    P = P * B
  end
  local q2, r, x = 0, 0, ra
  while P >= 1 do
    -- Division by a power of two is exact.
    local digit = math.floor(x / P)
    x = x - digit * P
    local t = r * B + digit * rb
    local step = idiv(t, d)
    q2 = q2 * B + step
    r = t - step * d
    P = P / B
  end
  q = q + q2
  if q >= MAX then
    return MAX, false
  end
  return q, r == 0
end
