-- FINISH: writes results (SETEX + PUBLISH, as Celery's result backend does), never over
-- a SUCCESS, and acknowledges the messages they came from.
--
-- KEYS[1]     `unacked`
-- KEYS[2]     `unacked_index`
-- ARGV[1]     the metas' TTL in seconds
-- ARGV[2..]   per result, four: meta key, meta, delivery tag (or ''), ack '1'/'0'
--
-- Returns how many metas were written.
local wrote = 0
for i = 2, #ARGV, 4 do
  local key, meta, tag = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local okg, prior = pcall(redis.call, 'GET', key)
  if not okg then prior = nil end
  local done = false
  if prior then
    local ok, m = pcall(cjson.decode, prior)
    done = ok and type(m) == 'table' and m.status == 'SUCCESS'
  end
  if not done then
    redis.call('SETEX', key, ARGV[1], meta)
    redis.call('PUBLISH', key, meta)
    wrote = wrote + 1
  end
  if ARGV[i + 3] == '1' and tag ~= '' then
    redis.call('ZREM', KEYS[2], tag)
    redis.call('HDEL', KEYS[1], tag)
  end
end
return wrote
