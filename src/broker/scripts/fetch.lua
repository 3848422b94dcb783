-- FETCH: takes up to ARGV[1] messages, highest priority first, records each in flight
-- (kombu's `unacked` hash and `unacked_index` zset) and marks it STARTED, all at once.
-- Messages whose task is already final (revoked while queued, or a redelivery of a
-- finished task) are dropped. Messages that are not Celery task messages go to the
-- dead-letter list (the newest 10,000 kept); a task id that is not a UUID gets a
-- FAILURE meta. A task in Celery's revoked set (`celeriac-revoked-<id>`) gets a REVOKED
-- meta and is dropped.
--
-- KEYS[1..4]  the queue's four kombu priority keys, read in this order
-- KEYS[5]     `unacked` (delivery tag -> `[message, "", queue]`)
-- KEYS[6]     `unacked_index` (delivery tag -> lease time, epoch seconds)
-- KEYS[7]     the dead-letter list (`<queue>.celeriac-dead-letter`)
-- ARGV[1]     max: the most messages to take
-- ARGV[2]     now, epoch seconds (the lease's start)
-- ARGV[3]     now, RFC 3339 (`date_started`, `date_done`)
-- ARGV[4]     the node's name (`worker`, `hostname`)
-- ARGV[5]     the queue's name
-- ARGV[6]     the metas' TTL in seconds
-- ARGV[7]     the node's pid
--
-- Returns one row per message taken:
--   {'run', raw, id, tag, submitted, retries, redelivered '1'/'0'}  to run
--   {'done', raw, id, status}                                      already final: dropped
--   {'bad', the first 200 bytes of raw}                            not runnable: dropped
local out = {}
local want = tonumber(ARGV[1])
for i = 1, 4 do
  while #out < want do
    local raw = redis.call('RPOP', KEYS[i])
    if not raw then break end
    local ok, env = pcall(cjson.decode, raw)
    local id, tag, name
    if ok and type(env) == 'table' and type(env.headers) == 'table' and type(env.properties) == 'table' then
      id = env.headers.id
      name = env.headers.task
      tag = env.properties.delivery_tag
    end
    if type(id) ~= 'string' or type(tag) ~= 'string' or type(name) ~= 'string' then
      redis.call('LPUSH', KEYS[7], raw)
      redis.call('LTRIM', KEYS[7], 0, 9999)
      table.insert(out, {'bad', string.sub(raw, 1, 200)})
    elseif not string.match(id, '^%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$') then
      -- celeriac keys tasks by UUID (Celery's default ids): fail this one where its
      -- sender looks.
      local meta = '{"status":"FAILURE","result":{"exc_type":"TaskError","exc_message":['
        .. cjson.encode('celeriac needs UUID task ids (Celery\'s default), got ' .. id)
        .. '],"exc_module":"celeriac.errors"},"traceback":null,"children":[],"date_done":'
        .. cjson.encode(ARGV[3]) .. ',"task_id":' .. cjson.encode(id) .. ',"name":' .. cjson.encode(name) .. '}'
      redis.call('SETEX', 'celery-task-meta-' .. id, ARGV[6], meta)
      redis.call('PUBLISH', 'celery-task-meta-' .. id, meta)
      table.insert(out, {'bad', string.sub(raw, 1, 200)})
    else
      local key = 'celery-task-meta-' .. id
      local okg, prior = pcall(redis.call, 'GET', key)
      if not okg then prior = nil end
      if redis.call('EXISTS', 'celeriac-revoked-' .. id) == 1 then
        -- Revoked through Celery's remote control before any node took it.
        local meta = '{"status":"REVOKED","result":{"exc_type":"TaskRevokedError","exc_message":["revoked before it started"],"exc_module":"celery.exceptions"},"traceback":null,"children":[],"date_done":'
          .. cjson.encode(ARGV[3]) .. ',"task_id":' .. cjson.encode(id) .. ',"name":' .. cjson.encode(name) .. '}'
        redis.call('SETEX', key, ARGV[6], meta)
        redis.call('PUBLISH', key, meta)
        prior = meta
      end
      local status, submitted, retries = nil, ARGV[3], 0
      if prior then
        local ok2, m = pcall(cjson.decode, prior)
        if ok2 and type(m) == 'table' then
          status = m.status
          if type(m.date_submitted) == 'string' then submitted = m.date_submitted end
          if type(m.retries) == 'number' then retries = m.retries end
        end
      end
      if status == 'SUCCESS' or status == 'FAILURE' or status == 'REVOKED' then
        table.insert(out, {'done', raw, id, status})
      else
        local redelivered = status == 'STARTED' or status == 'RETRY'
        if redelivered then retries = retries + 1 end
        redis.call('ZADD', KEYS[6], ARGV[2], tag)
        redis.call('HSET', KEYS[5], tag, '[' .. raw .. ',"",' .. cjson.encode(ARGV[5]) .. ']')
        local meta = '{"status":"STARTED","result":{"pid":' .. ARGV[7] .. ',"hostname":' .. cjson.encode(ARGV[4])
          .. '},"traceback":null,"children":[],"date_done":null,"task_id":' .. cjson.encode(id)
          .. ',"name":' .. cjson.encode(name) .. ',"retries":' .. string.format('%d', retries)
          .. ',"queue":' .. cjson.encode(ARGV[5]) .. ',"worker":' .. cjson.encode(ARGV[4])
          .. ',"date_submitted":' .. cjson.encode(submitted) .. ',"date_started":' .. cjson.encode(ARGV[3]) .. '}'
        redis.call('SETEX', key, ARGV[6], meta)
        table.insert(out, {'run', raw, id, tag, submitted, string.format('%d', retries), redelivered and '1' or '0'})
      end
    end
  end
end
return out
