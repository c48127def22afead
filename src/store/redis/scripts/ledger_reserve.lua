-- Holds an amount against every budget of a request, or against none.
--
-- KEYS     n budget hashes (distinct), the holds index, the id sequence
-- ARGV     now_us ('' = server TIME), amount, policy ('s' strict |
--          'b' bounded), lease ms, hold key prefix, n,
--          then n x (mode, limit, period code)
-- Returns  { 0, index, status } denied by budget `index` (1-based), or
--          { 1, id, held, index (0: no budgets), status }
--
-- A function, `ledger_reserve(KEYS, ARGV)`, returning the denial's reply,
-- or nil and `commit`: the writes that hold the amount, made only when
-- called, which return the reply. `reserve.lua` calls it at once;
-- `admit.lua` only once the rate limits have admitted the request too.

local function ledger_reserve(KEYS, ARGV)
  local now = now_us(ARGV[1])
  local amount = m_parse(ARGV[2])
  local strict = ARGV[3] == 's'
  local lease_ms = tonumber(ARGV[4])
  local hold_prefix = ARGV[5]
  local n = tonumber(ARGV[6])
  local holds_key, seq_key = KEYS[n + 1], KEYS[n + 2]

  sweep(holds_key, hold_prefix, now, 32)

  local accounts = {}
  local tightest, tightest_rem = 0, nil
  -- The first budget with a partial hold in flight.
  local blocking = 0
  for i = 1, n do
    local base = 4 + 3 * i
    local acc = load(KEYS[i], ARGV[base], ARGV[base + 1], ARGV[base + 2], now)
    accounts[i] = acc
    local rem = m_sub(m_sub(acc.lim, acc.sp), acc.rs)
    if not m_positive(rem) or (strict and m_cmp(amount, rem) > 0) then
      local reply = { 0, i }
      for _, v in ipairs(status(acc)) do
        reply[#reply + 1] = v
      end
      return reply, nil
    end
    if acc.pt > 0 and blocking == 0 then
      blocking = i
    end
    if tightest_rem == nil or m_cmp(rem, tightest_rem) < 0 then
      tightest, tightest_rem = i, rem
    end
  end

  local held = amount
  if not strict and tightest_rem ~= nil then
    held = m_min(amount, tightest_rem)
  end
  -- A hold clamped below the worst case may cost more than it holds: one at
  -- a time per budget.
  local partial = m_cmp(held, amount) < 0
  if partial and blocking > 0 then
    local reply = { 0, blocking }
    for _, v in ipairs(status(accounts[blocking])) do
      reply[#reply + 1] = v
    end
    return reply, nil
  end

  local function commit()
    -- Ids stay unique across a Redis restart that lost the sequence: a new
    -- sequence starts at the current time in µs.
    redis.call('SET', seq_key, istr(now), 'NX')
    local id = redis.call('INCR', seq_key)
    local id_str = istr(id)

    local hold_key = hold_prefix .. id_str
    local fields = { 'a', m_str(held), 'p', partial and '1' or '0', 'n', n }
    for i = 1, n do
      local acc = accounts[i]
      acc.rs = m_add(acc.rs, held)
      if partial then
        acc.pt = acc.pt + 1
      end
      save(KEYS[i], acc, now, lease_ms)
      fields[#fields + 1] = 'k' .. i
      fields[#fields + 1] = KEYS[i]
    end
    redis.call('HSET', hold_key, unpack(fields))
    redis.call('ZADD', holds_key, istr(math.floor(now / 1000) + lease_ms), id_str)

    local reply = { 1, id, m_str(held), tightest }
    if tightest > 0 then
      -- The tightest budget's status before this hold.
      local acc = accounts[tightest]
      local before = { acc.mode, m_str(acc.lim), m_str(acc.sp), m_str(m_sub(acc.rs, held)), acc.ws, acc.we }
      for _, v in ipairs(before) do
        reply[#reply + 1] = v
      end
    end
    return reply
  end
  return nil, commit
end
