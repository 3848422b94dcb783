-- REPLACE: sets a meta only if it still is what the caller read (revoke's
-- compare-and-set), and publishes it.
--
-- KEYS[1]     the meta key
-- ARGV[1]     the meta the caller read ('' expects no meta)
-- ARGV[2]     the new meta
-- ARGV[3]     its TTL in seconds
--
-- Returns 1 when written, 0 when the meta changed meanwhile.
if (redis.call('GET', KEYS[1]) or '') ~= ARGV[1] then return 0 end
redis.call('SETEX', KEYS[1], ARGV[3], ARGV[2])
redis.call('PUBLISH', KEYS[1], ARGV[2])
return 1
