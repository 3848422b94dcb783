-- REPLY: pushes a remote-control reply, only while the client's reply queue is bound (a
-- client that stopped waiting unbinds and deletes it); the reply expires after 300 s if
-- never read.
--
-- KEYS[1]     the binding set (`_kombu.binding.reply.celery.pidbox`)
-- KEYS[2]     the reply queue (`<oid>.reply.celery.pidbox`)
-- ARGV[1]     the binding member of the reply queue
-- ARGV[2]     the reply (a kombu envelope)
--
-- Returns 1 when pushed, 0 when nobody waits.
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('LPUSH', KEYS[2], ARGV[2])
redis.call('EXPIRE', KEYS[2], 300)
return 1
