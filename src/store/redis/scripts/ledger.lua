-- Budget books (hash per budget) and holds (hash per reservation, indexed by
-- lease expiry in one sorted set), shared by the ledger scripts.
--
-- Budget hash: mode ('b' budget | 'p' prepaid balance), per (period code),
-- ws / we (current window start / end in µs, we = -1: never ends),
-- lim / sp / rs (limit, spent, reserved: nano-dollar strings),
-- pt (partial holds in flight: holds clamped below their request's worst
-- case, at most one admitted at a time, which bounds a Bounded overshoot).
-- Hold hash:   a (amount held), p (1: partial), n, k1..kn (its budgets).

local DAY_US = 86400 * 1000000

-- Howard Hinnant's day-count algorithms, as in `tollgate::time`.
local function days_from_civil(y, m, d)
  if m <= 2 then
    y = y - 1
  end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = m > 2 and m - 3 or m + 9
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

local function civil_from_days(z)
  z = z + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then
    y = y + 1
  end
  return y, m, d
end

-- The window (start µs, end µs or -1) of period `code` at `now` (µs):
-- 'd' daily, 'w' weekly (Monday), 'm' monthly, 'r<µs>' rolling from the
-- epoch, 'n' never; the same windows as `Period::window`.
local function window(code, now)
  local kind = string.sub(code, 1, 1)
  if kind == 'n' then
    return 0, -1
  end
  if kind == 'r' then
    local len = tonumber(string.sub(code, 2)) or 0
    if len <= 0 then
      return 0, -1
    end
    local start = idiv(now, len) * len
    return start, start + len
  end
  local day = idiv(now, DAY_US)
  local first, last
  if kind == 'd' then
    first, last = day, day + 1
  elseif kind == 'w' then
    -- 1970-01-01 was a Thursday: Monday is 3 days before it.
    first = day - (day + 3) % 7
    last = first + 7
  else
    local y, m = civil_from_days(day)
    local ny, nm = y, m + 1
    if nm == 13 then
      ny, nm = y + 1, 1
    end
    first, last = days_from_civil(y, m, 1), days_from_civil(ny, nm, 1)
  end
  return first * DAY_US, last * DAY_US
end

local function new_account(mode, lim, per, now)
  local ws, we = 0, -1
  if mode == 'b' then
    ws, we = window(per, now)
  else
    per = 'n'
  end
  return { mode = mode, per = per, ws = ws, we = we, lim = m_parse(lim), sp = M_ZERO, rs = M_ZERO, pt = 0 }
end

-- The books of `key` brought to `now` and to the caller's spec: a budget
-- takes the spec's limit and starts from zero in a new window; a balance
-- keeps its funding (opening balance + top-ups) and never resets; a scope
-- that changed from one mode to the other opens new books, keeping its holds.
local function load(key, mode, lim, per, now)
  local f = redis.call('HMGET', key, 'mode', 'per', 'ws', 'we', 'lim', 'sp', 'rs', 'pt')
  if f[1] == false then
    return new_account(mode, lim, per, now)
  end
  local acc = {
    mode = f[1], per = f[2], ws = tonumber(f[3]), we = tonumber(f[4]),
    lim = m_parse(f[5]), sp = m_parse(f[6]), rs = m_parse(f[7]), pt = tonumber(f[8]) or 0,
  }
  if acc.mode ~= mode then
    local rs, pt = acc.rs, acc.pt
    acc = new_account(mode, lim, per, now)
    acc.rs, acc.pt = rs, pt
  elseif mode == 'b' then
    acc.lim = m_parse(lim)
    if acc.per ~= per or (acc.we >= 0 and now >= acc.we) then
      local ws, we = window(per, now)
      if ws ~= acc.ws then
        acc.sp = M_ZERO
      end
      acc.ws, acc.we, acc.per = ws, we, per
    end
  end
  return acc
end

-- Writes the books back. A budget's books expire once its window has ended
-- and every hold made in it has outlived its lease (a new window starts from
-- zero anyway); balances and lifetime budgets are kept.
local function save(key, acc, now, lease_ms)
  redis.call('HSET', key, 'mode', acc.mode, 'per', acc.per, 'ws', istr(acc.ws), 'we', istr(acc.we),
    'lim', m_str(acc.lim), 'sp', m_str(acc.sp), 'rs', m_str(acc.rs), 'pt', istr(acc.pt))
  if acc.mode == 'b' and acc.we >= 0 then
    -- Relative to `now`, not PEXPIREAT: `now` may come from the caller's clock.
    redis.call('PEXPIRE', key, istr(math.max(0, math.ceil((acc.we - now) / 1000)) + lease_ms + 60000))
  else
    redis.call('PERSIST', key)
  end
end

local function status(acc)
  return { acc.mode, m_str(acc.lim), m_str(acc.sp), m_str(acc.rs), acc.ws, acc.we }
end

-- Gives a hold's amount back to the budgets it holds and forgets it.
local function unhold(hold_key)
  local h = redis.call('HGETALL', hold_key)
  if #h == 0 then
    return
  end
  local f = {}
  for i = 1, #h, 2 do
    f[h[i]] = h[i + 1]
  end
  local amount = m_parse(f.a)
  for i = 1, tonumber(f.n) or 0 do
    local key = f['k' .. i]
    local b = redis.call('HMGET', key, 'rs', 'pt')
    if b[1] then
      redis.call('HSET', key, 'rs', m_str(m_max0(m_sub(m_parse(b[1]), amount))))
      if f.p == '1' then
        redis.call('HSET', key, 'pt', istr(math.max(0, (tonumber(b[2]) or 0) - 1)))
      end
    end
  end
  redis.call('DEL', hold_key)
end

-- Releases up to `limit` holds whose lease has run out: the holds of a
-- gateway that crashed between reserve and settle.
local function sweep(holds_key, hold_prefix, now, limit)
  local expired = redis.call('ZRANGEBYSCORE', holds_key, '-inf', istr(math.floor(now / 1000)), 'LIMIT', 0, limit)
  for _, id in ipairs(expired) do
    unhold(hold_prefix .. id)
    redis.call('ZREM', holds_key, id)
  end
  return #expired
end
