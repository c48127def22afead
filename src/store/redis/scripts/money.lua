-- Money: i64 nano-dollars as decimal strings in Redis, and as {h, l} with
-- value = h * 10^9 + l, 0 <= l < 10^9, in Lua: both halves stay far below
-- 2^53, so sums, differences and comparisons are exact over the whole i64
-- range (a double alone would round above $9,007,199).
local E9 = 1000000000

local function m_parse(s)
  if s == nil or s == false or s == '' then
    return { 0, 0 }
  end
  local neg = false
  if string.sub(s, 1, 1) == '-' then
    neg = true
    s = string.sub(s, 2)
  end
  local n = #s
  local h, l
  if n > 9 then
    h = tonumber(string.sub(s, 1, n - 9))
    l = tonumber(string.sub(s, n - 8))
  else
    h = 0
    l = tonumber(s)
  end
  if neg then
    h, l = -h, -l
    if l < 0 then
      l = l + E9
      h = h - 1
    end
  end
  return { h, l }
end

local M_ZERO = { 0, 0 }

local function m_add(a, b)
  local h, l = a[1] + b[1], a[2] + b[2]
  if l >= E9 then
    l = l - E9
    h = h + 1
  end
  return { h, l }
end

local function m_neg(a)
  if a[2] == 0 then
    return { -a[1], 0 }
  end
  return { -a[1] - 1, E9 - a[2] }
end

local function m_sub(a, b)
  return m_add(a, m_neg(b))
end

local function m_cmp(a, b)
  if a[1] ~= b[1] then
    return a[1] < b[1] and -1 or 1
  end
  if a[2] ~= b[2] then
    return a[2] < b[2] and -1 or 1
  end
  return 0
end

local function m_min(a, b)
  return m_cmp(a, b) <= 0 and a or b
end

local function m_max0(a)
  return a[1] < 0 and M_ZERO or a
end

local function m_positive(a)
  return m_cmp(a, M_ZERO) > 0
end

local function m_str(a)
  local neg = a[1] < 0
  if neg then
    a = m_neg(a)
  end
  local s
  if a[1] == 0 then
    s = string.format('%d', a[2])
  else
    s = istr(a[1]) .. string.format('%09d', a[2])
  end
  return neg and ('-' .. s) or s
end
