-- Checks a request against every limit of every scope it belongs to and
-- charges them all, or none. One call per admission.
--
-- KEYS     per scope: its state (hash: one field per limit), its
--          concurrency slots (sorted set: token -> lease expiry ms)
-- ARGV     now_us ('' = server TIME), slot token, slot lease ms, scopes,
--          then per scope: max_concurrent (-1: none), limits, then per
--          limit: field, algorithm (g, f, s), amount, window_us, burst, cost
-- Returns  { verdict (0 admitted, 1 limited, 2 concurrency), busy scope
--            (0-based, -1 none), per limit (remaining, reset_us,
--            retry_after_us or -1) }
--
-- A function, `rate_limit_acquire(KEYS, ARGV)`, returning the reply and,
-- when the request is admitted, `commit`: the writes that charge it, made
-- only when called. `acquire.lua` calls it at once; `admit.lua` only once
-- the budgets have admitted the request too.

local function rate_limit_acquire(KEYS, ARGV)
  local now = now_us(ARGV[1])
  local scopes = tonumber(ARGV[4])
  local now_ms = math.floor(now / 1000)

  local reply = { 0, -1 }
  local plan = {}
  local admitted, busy = true, -1
  local at = 5
  for s = 1, scopes do
    local max_concurrent, n = tonumber(ARGV[at]), tonumber(ARGV[at + 1])
    at = at + 2
    local stored = read_scope(KEYS[2 * s - 1])
    local limits = {}
    for i = 1, n do
      local field, alg = ARGV[at], ARGV[at + 1]
      local A, W, cap, cost = tonumber(ARGV[at + 2]), tonumber(ARGV[at + 3]), tonumber(ARGV[at + 4]), tonumber(ARGV[at + 5])
      at = at + 6
      local st = parse(stored[field])
      local ok, remaining, reset, retry = cell_check(alg, st, now, cost, A, W, cap)
      admitted = admitted and ok
      limits[i] = { field = field, alg = alg, st = st, A = A, W = W, cap = cap, cost = cost, ok = ok, slot = #reply + 1 }
      reply[#reply + 1] = remaining
      reply[#reply + 1] = reset
      reply[#reply + 1] = retry
    end
    if max_concurrent >= 0 then
      redis.call('ZREMRANGEBYSCORE', KEYS[2 * s], '-inf', istr(now_ms))
      if busy < 0 and redis.call('ZCARD', KEYS[2 * s]) >= max_concurrent then
        busy = s - 1
      end
    end
    plan[s] = { stored = stored, limits = limits, max_concurrent = max_concurrent }
  end

  if not admitted or busy >= 0 then
    if admitted then
      reply[1] = 2
      reply[2] = busy
    else
      reply[1] = 1
    end
    -- Nothing is charged: the limits that would have admitted the request
    -- report their state as it is, not as the charge would have left it.
    for _, scope in ipairs(plan) do
      for _, l in ipairs(scope.limits) do
        if l.ok then
          local _, remaining, reset = cell_check(l.alg, l.st, now, 0, l.A, l.W, l.cap)
          reply[l.slot] = remaining
          reply[l.slot + 1] = reset
        end
      end
    end
    return reply, nil
  end

  local function commit()
    local lease = tonumber(ARGV[3])
    for s, scope in ipairs(plan) do
      local updates, fulls = {}, {}
      for _, l in ipairs(scope.limits) do
        if l.cost > 0 then
          updates[l.field], fulls[l.field] = cell_adjust(l.alg, l.st, now, l.cost, l.A, l.W)
        end
      end
      write_scope(KEYS[2 * s - 1], scope.stored, updates, fulls, now)
      if scope.max_concurrent >= 0 then
        redis.call('ZADD', KEYS[2 * s], istr(now_ms + lease), ARGV[2])
        redis.call('PEXPIRE', KEYS[2 * s], istr(lease + 1000))
      end
    end
  end
  return reply, commit
end
