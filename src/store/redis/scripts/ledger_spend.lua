-- Reads spend aggregates (see ledger_settle.lua): the rows of one scope, or
-- of every scope of one kind, for days in [from, to], optionally one model.
--
-- KEYS     the set of scopes with spend
-- ARGV     spend key prefix, scope id ('' = every scope whose id starts with
--          the kind prefix), kind prefix ('key:', 'team:'...), model ('' =
--          every model), from day, to day
-- Returns  a flat list of rows: scope, model, day, cost, prompt, completion,
--          cached, requests

local prefix, scope_id, kind, model = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local from, to = ARGV[5], ARGV[6]
local scopes
if scope_id ~= '' then
  scopes = { scope_id }
else
  scopes = {}
  for _, s in ipairs(redis.call('SMEMBERS', KEYS[1])) do
    if string.sub(s, 1, #kind) == kind then
      scopes[#scopes + 1] = s
    end
  end
end
local reply = {}
for _, scope in ipairs(scopes) do
  for _, day in ipairs(redis.call('ZRANGEBYSCORE', prefix .. 'days:' .. scope, from, to)) do
    local fields = redis.call('HGETALL', prefix .. scope .. ':' .. day)
    local rows = {}
    for i = 1, #fields, 2 do
      local metric, name = string.sub(fields[i], 1, 1), string.sub(fields[i], 3)
      if model == '' or name == model then
        rows[name] = rows[name] or { c = '0', p = '0', o = '0', k = '0', n = '0' }
        rows[name][metric] = fields[i + 1]
      end
    end
    for name, r in pairs(rows) do
      for _, v in ipairs({ scope, name, day, r.c, r.p, r.o, r.k, r.n }) do
        reply[#reply + 1] = v
      end
    end
  end
end
return reply
