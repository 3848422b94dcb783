-- RESTORE: puts in-flight messages back at the head of their queue (the end consumers
-- pop next), as kombu's `restore_by_tag` does, and forgets them in `unacked` and
-- `unacked_index`. The message goes back byte for byte when the `unacked` entry is
-- kombu's `[message, "", queue]`.
--
-- KEYS[1]     `unacked`
-- KEYS[2]     `unacked_index`
-- KEYS[3]     `unacked_mutex` (held by a Python worker that is restoring)
-- ARGV[1]     'expired': every tag whose lease is older than ARGV[2] (epoch seconds),
--             at most 1,000, and none while a Python worker holds the mutex;
--             anything else: the tags in ARGV[2..]
--
-- Returns how many messages were put back.
local tags
if ARGV[1] == 'expired' then
  if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
  tags = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[2], 'LIMIT', 0, 1000)
else
  tags = {}
  for i = 2, #ARGV do table.insert(tags, ARGV[i]) end
end
local n = 0
for _, tag in ipairs(tags) do
  local v = redis.call('HGET', KEYS[1], tag)
  redis.call('ZREM', KEYS[2], tag)
  redis.call('HDEL', KEYS[1], tag)
  if v then
    local ok, e = pcall(cjson.decode, v)
    if ok and type(e) == 'table' and type(e[3]) == 'string' then
      local raw = string.match(v, '^%[(.*),%s*"[^"]*"%s*,%s*"[^"]*"%s*%]$') or cjson.encode(e[1])
      redis.call('RPUSH', e[3], raw)
      n = n + 1
    end
  end
end
return n
