-- `ledger_reserve`'s call alone: one call per reservation of a budget
-- without a rate limit.

local denied, commit = ledger_reserve(KEYS, ARGV)
if commit then
  return commit()
end
return denied
