-- REVOKE_QUEUED: revokes a task queued for other workers (a mixed fleet's Python queue):
-- removes its message from the queue and, only if it was there, writes (and publishes)
-- the REVOKED meta. A message a worker already took cannot be revoked here. Scans up
-- to 10,000 messages per priority list, 100 at a time, and stops at the first match.
--
-- KEYS[1..4]  the queue's four kombu priority keys
-- KEYS[5]     the task's meta key
-- ARGV[1]     the task id
-- ARGV[2]     the REVOKED meta
-- ARGV[3]     its TTL in seconds
--
-- Returns 1 when revoked, 0 when the message was not in the queue.
for i = 1, 4 do
  local start = 0
  while start < 10000 do
    local items = redis.call('LRANGE', KEYS[i], start, start + 99)
    if #items == 0 then break end
    for _, raw in ipairs(items) do
      if string.find(raw, ARGV[1], 1, true) then
        local ok, env = pcall(cjson.decode, raw)
        if ok and type(env) == 'table' and type(env.headers) == 'table' and env.headers.id == ARGV[1] then
          if redis.call('LREM', KEYS[i], 1, raw) == 1 then
            redis.call('SETEX', KEYS[5], ARGV[3], ARGV[2])
            redis.call('PUBLISH', KEYS[5], ARGV[2])
            return 1
          end
        end
      end
    end
    start = start + 100
  end
end
return 0
