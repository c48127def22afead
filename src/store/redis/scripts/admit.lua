-- Admits a request against its rate limits and its budgets at once: checks
-- the limits, checks the budgets, and charges both or neither. One call
-- per admission of a request that has both (`acquire.lua` then
-- `reserve.lua` were two, one after the other).
--
-- KEYS     the acquire's keys, then the reservation's
-- ARGV     the acquire's key count, the acquire's argument count, whether
--          to reserve when the limits refuse ('1': the rate limit is in
--          shadow mode and admits anyway), then the acquire's arguments,
--          then the reservation's
-- Returns  { the acquire's reply, the reservation's reply, or 0 when the
--            budgets were not asked }
--
-- A request the budgets deny leaves the limits as they were (no count, no
-- concurrency slot); one the limits refuse holds nothing (unless shadow).

local nk, na = tonumber(ARGV[1]), tonumber(ARGV[2])
local reserve_anyway = ARGV[3] == '1'
local akeys, aargs, bkeys, bargs = {}, {}, {}, {}
for i = 1, #KEYS do
  if i <= nk then
    akeys[i] = KEYS[i]
  else
    bkeys[i - nk] = KEYS[i]
  end
end
for i = 4, #ARGV do
  if i < 4 + na then
    aargs[i - 3] = ARGV[i]
  else
    bargs[i - 3 - na] = ARGV[i]
  end
end

local limits, charge = rate_limit_acquire(akeys, aargs)
if not charge and not reserve_anyway then
  return { limits, 0 }
end
local denied, hold = ledger_reserve(bkeys, bargs)
if not hold then
  return { limits, denied }
end
if charge then
  charge()
end
return { limits, hold() }
