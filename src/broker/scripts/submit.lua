-- SUBMIT: the depth check, the PENDING metas and the pushes of one submit, all or none.
--
-- KEYS[1..4]  the queue's four kombu priority keys (`q`, `q\x06\x163`, `q\x06\x166`,
--             `q\x06\x169`); messages are pushed on KEYS[1]
-- KEYS[5]     the binding set `_kombu.binding.celery`
-- ARGV[1]     capacity: the most messages the four lists may hold together
-- ARGV[2]     the metas' TTL in seconds
-- ARGV[3]     the binding member that routes the queue's name to it
-- ARGV[4..]   per task, three: meta key, PENDING meta, message
--
-- Returns -1 when the tasks would take the queue past capacity (nothing written), else
-- the new depth.
local depth = 0
for i = 1, 4 do depth = depth + redis.call('LLEN', KEYS[i]) end
local n = (#ARGV - 3) / 3
if depth + n > tonumber(ARGV[1]) then return -1 end
redis.call('SADD', KEYS[5], ARGV[3])
for i = 4, #ARGV, 3 do
  redis.call('SETEX', ARGV[i], ARGV[2], ARGV[i + 1])
  redis.call('LPUSH', KEYS[1], ARGV[i + 2])
end
return depth + n
