-- The list of tenant hash tags with spend aggregates (a ledger placed by
-- tenant on a Redis Cluster reads each for a report across tenants).
--
-- KEYS[1]  the list (a set, under the `ledger` tag)
-- ARGV     a tag to add, or '' to read the list
-- Returns  1 when added (or known), the tags when read

if ARGV[1] ~= '' then
  redis.call('SADD', KEYS[1], ARGV[1])
  return 1
end
return redis.call('SMEMBERS', KEYS[1])
