-- `rate_limit_acquire`'s call alone: one call per admission of a rate
-- limit without a budget.

local reply, commit = rate_limit_acquire(KEYS, ARGV)
if commit then
  commit()
end
return reply
