//! Redis as broker and result backend, in Celery's own wire format, so several nodes
//! share one queue and Python Celery clients call celeriac's tasks (and the reverse).
//!
//! - **Queue.** A pool's queue is a Redis list with kombu's keys (`celery`, and the
//!   priority keys `celery\x06\x163` ...). A submit checks the depth, writes the task's
//!   `PENDING` meta and pushes the message, in one script.
//! - **Taking work.** A node takes messages only for idle workers ([`crate::node::consumer`]). Taking
//!   a message, recording it in flight (kombu's `unacked` hash and `unacked_index` zset,
//!   so Python workers can restore it too) and marking it `STARTED` is one Lua script:
//!   no window where a message is in neither place.
//! - **Leases.** While a node holds a message it renews its `unacked_index` score every
//!   quarter of the visibility timeout; a node that died stops renewing, and any node
//!   puts its messages back in the queue once the timeout has passed.
//! - **Results.** Written as Celery's result backend does (`SETEX` + `PUBLISH` of
//!   `celery-task-meta-<id>`, exceptions as `{"exc_type", "exc_message", "exc_module"}`),
//!   acknowledged in the same script, and never over a `SUCCESS`.
//! - **Reading.** `GET` of the meta; long-polls wake on the `PUBLISH` (one pattern
//!   subscription per node), and re-read every second in case one was missed.

pub mod celery;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde_json::Value;
use tokio::sync::watch;

use crate::config::{BrokerConfig, secs};
use crate::store::{StoreError, TaskId, TaskState, TaskView};

/// Why a broker call did not do what was asked.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BrokerError {
    /// Redis could not be reached or answered with an error.
    #[error("broker unavailable: {0}")]
    Down(String),
    /// The queue holds `capacity` messages already.
    #[error("queue full")]
    QueueFull,
    /// Redis answered, with an error (a script error, a key of the wrong type, a value
    /// over its limits): retrying the same call will not help.
    #[error("broker refused the command: {0}")]
    Refused(String),
}

/// The kombu keys of the in-flight registry (shared with Python workers).
const UNACKED: &str = "unacked";
const UNACKED_INDEX: &str = "unacked_index";
const UNACKED_MUTEX: &str = "unacked_mutex";
const BINDINGS: &str = "_kombu.binding.celery";
/// The channel pattern of every result's `PUBLISH`.
const RESULTS_PATTERN: &str = "celery-task-meta-*";

/// Depth check, `PENDING` metas and pushes of one submit.
/// KEYS: the four priority keys, the binding set. ARGV: capacity, ttl, binding member,
/// then (meta key, meta, message) per task. Returns -1 when full, else the new depth.
const SUBMIT: &str = r#"
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
"#;

/// Takes up to ARGV[1] messages, highest priority first, records each in flight and
/// marks it `STARTED`, all at once. Messages whose task is already final (revoked while
/// queued, or a redelivery of a finished task) are dropped.
/// Messages that are not Celery task messages go to the dead-letter list (KEYS[7], the
/// newest 10,000 kept); a task id that is not a UUID gets a FAILURE meta.
/// KEYS: the four priority keys, `unacked`, `unacked_index`, the dead-letter list.
/// ARGV: max, now (epoch seconds), now (RFC 3339), node, queue, ttl, pid.
/// Returns per message `{kind, raw, ...}`: `run` (id, tag, submitted, retries,
/// redelivered), `done` (id, status) or `bad`.
const FETCH: &str = r#"
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
"#;

/// Writes results, never over a `SUCCESS`, and acknowledges them.
/// KEYS: `unacked`, `unacked_index`. ARGV: ttl, then (meta key, meta, tag or '', ack
/// '1'/'0') per result. Returns how many were written.
const FINISH: &str = r#"
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
"#;

/// Sets a meta only if it still is what the caller read (revoke's compare-and-set; ''
/// expects no meta). KEYS: meta key. ARGV: expected, new, ttl. Returns 1 when written.
const REPLACE: &str = r#"
if (redis.call('GET', KEYS[1]) or '') ~= ARGV[1] then return 0 end
redis.call('SETEX', KEYS[1], ARGV[3], ARGV[2])
redis.call('PUBLISH', KEYS[1], ARGV[2])
return 1
"#;

/// Revokes a task queued for other workers (a mixed fleet's Python queue): removes its
/// message from the queue and, only if it was there, writes the REVOKED meta. A message
/// a worker already took cannot be revoked here. Scans up to 10,000 messages per
/// priority list, 100 at a time, and stops at the first match.
/// KEYS: the four priority keys, the meta key. ARGV: id, meta, ttl. Returns 1 when
/// revoked.
const REVOKE_QUEUED: &str = r#"
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
"#;

/// Pushes a remote-control reply, only while the client's reply queue is bound (a
/// client that stopped waiting unbinds and deletes it); the reply expires if never read.
/// KEYS: the binding set, the reply queue. ARGV: binding member, payload.
const REPLY: &str = r#"
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('LPUSH', KEYS[2], ARGV[2])
redis.call('EXPIRE', KEYS[2], 300)
return 1
"#;

/// Puts in-flight messages back at the head of their queue (the end consumers pop
/// next), as kombu's `restore_by_tag` does. ARGV[1] = 'expired': every tag whose lease
/// is older than ARGV[2], unless a Python worker holds kombu's restore mutex; else the
/// tags in ARGV[2..]. KEYS: `unacked`, `unacked_index`, `unacked_mutex`.
/// Returns how many were put back.
const RESTORE: &str = r#"
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
"#;

/// The last `PUBLISH` of a result key, for the long-polls waiting on it.
type Published = watch::Sender<Option<Arc<[u8]>>>;

/// A message this node holds: what acknowledging or putting it back needs.
#[derive(Debug, Clone)]
pub struct Held {
    /// kombu's `delivery_tag`.
    pub tag: String,
    /// The pool (index) whose queue it came from.
    pub pool: usize,
}

/// A message taken from a queue.
#[derive(Debug, Clone)]
pub enum Fetched {
    /// To run.
    Run {
        /// The raw message.
        raw: String,
        /// Its task id.
        id: TaskId,
        /// Its delivery tag.
        tag: String,
        /// When it was submitted (RFC 3339), or taken when the sender did not say.
        submitted: String,
        /// How often it was handed out before (a node died holding it).
        retries: u32,
        /// Whether a node held it before.
        redelivered: bool,
    },
    /// Already final (revoked while queued, or finished before a redelivery): dropped.
    Done {
        /// Its task id.
        id: String,
        /// Its final state.
        status: String,
    },
    /// Not a Celery message: dropped, logged.
    Bad {
        /// The raw message.
        raw: String,
    },
}

/// A pool's queue in Redis.
#[derive(Debug)]
pub struct Queue {
    /// Celery's queue name.
    pub name: String,
    /// kombu's priority keys, step 0 first.
    pub keys: [String; 4],
    /// Messages waiting, as last read from Redis (for metrics).
    pub depth: AtomicU64,
}

/// The Redis broker and result backend of one node.
pub struct Broker {
    client: redis::Client,
    conn: ConnectionManager,
    /// The URL without a password, for logs and readiness.
    pub url: String,
    /// This node's name (`celeriac@HOSTNAME`).
    pub node: String,
    /// Per pool, by index.
    pub queues: Vec<Queue>,
    visibility_timeout: Duration,
    restore_interval: Duration,
    result_ttl: u64,
    up: AtomicBool,
    last_error: Mutex<Option<String>>,
    /// Messages this node holds, by task id.
    held: Mutex<HashMap<TaskId, Held>>,
    /// Long-polls waiting for a result's `PUBLISH`, by key.
    waiters: Mutex<HashMap<String, Published>>,
    /// Messages taken that a node had held before.
    pub redeliveries: AtomicU64,
    /// Messages put back after a lease expired (by this node's restore scans).
    pub restored: AtomicU64,
    scripts: Scripts,
}

struct Scripts {
    submit: redis::Script,
    fetch: redis::Script,
    finish: redis::Script,
    replace: redis::Script,
    restore: redis::Script,
    revoke_queued: redis::Script,
    reply: redis::Script,
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_micros(SystemTime::now()).to_string()
}

/// Seconds since the Unix epoch, as kombu and Celery stamp times.
pub(crate) fn epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

impl Broker {
    /// Connects to `config.url` for pools whose queues are `queues` (by pool index).
    /// Fails when Redis cannot be reached now; once connected, the node reconnects by
    /// itself.
    pub async fn connect(
        config: &BrokerConfig,
        result_ttl: Duration,
        queues: Vec<String>,
    ) -> anyhow::Result<Arc<Broker>> {
        let raw = config
            .url
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("no broker.url"))?;
        let parsed = crate::config::broker_url::BrokerUrl::parse(raw)
            .map_err(|e| anyhow::anyhow!("broker.url {e}"))?;
        let shown = parsed.shown.clone();
        let client = parsed
            .client()
            .map_err(|e| anyhow::anyhow!("broker.url {e}"))?;
        let conn = ConnectionManager::new_with_config(
            client.clone(),
            ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(2)))
                .set_response_timeout(Some(Duration::from_secs(10)))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_secs(1)),
        )
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot reach the broker at {shown}: {}",
                parsed.explain(&e.to_string())
            )
        })?;
        let broker = Arc::new(Broker {
            client,
            conn,
            url: shown,
            node: config.node(),
            queues: queues
                .into_iter()
                .map(|name| Queue {
                    keys: celery::priority_keys(&name),
                    name,
                    depth: AtomicU64::new(0),
                })
                .collect(),
            visibility_timeout: secs(config.visibility_timeout_seconds),
            restore_interval: secs(config.restore_interval_seconds),
            result_ttl: result_ttl.as_secs().max(1),
            up: AtomicBool::new(true),
            last_error: Mutex::new(None),
            held: Mutex::new(HashMap::new()),
            waiters: Mutex::new(HashMap::new()),
            redeliveries: AtomicU64::new(0),
            restored: AtomicU64::new(0),
            scripts: Scripts {
                submit: redis::Script::new(SUBMIT),
                fetch: redis::Script::new(FETCH),
                finish: redis::Script::new(FINISH),
                replace: redis::Script::new(REPLACE),
                restore: redis::Script::new(RESTORE),
                revoke_queued: redis::Script::new(REVOKE_QUEUED),
                reply: redis::Script::new(REPLY),
            },
        });
        tokio::spawn(results_listener(broker.clone()));
        Ok(broker)
    }

    /// Whether the last call reached Redis.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Why the last failing call failed, while Redis is unreachable.
    pub fn down_reason(&self) -> Option<String> {
        if self.is_up() {
            None
        } else {
            self.last_error.lock().clone()
        }
    }

    /// The Redis database number of the URL (`/N`), for kombu's fanout channel names.
    pub fn db(&self) -> i64 {
        self.client.get_connection_info().redis_settings().db()
    }

    /// The client, for connections of other parts of the node (pub/sub).
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// `PUBLISH channel payload`.
    pub async fn publish(&self, channel: &str, payload: &str) -> Result<(), BrokerError> {
        let _: i64 = self.seen(
            redis::cmd("PUBLISH")
                .arg(channel)
                .arg(payload)
                .query_async(&mut self.conn.clone())
                .await,
        )?;
        Ok(())
    }

    /// Pushes a remote-control reply to client `oid` through `exchange` (kombu's
    /// `{oid}.{exchange}` queue), if the client still waits; true when pushed.
    pub async fn reply(
        &self,
        exchange: &str,
        oid: &str,
        payload: &str,
    ) -> Result<bool, BrokerError> {
        let queue = format!("{oid}.{exchange}");
        let pushed: i64 = self.seen(
            self.scripts
                .reply
                .key(format!("_kombu.binding.{exchange}"))
                .key(&queue)
                .arg(format!("{oid}\x06\x16\x06\x16{queue}"))
                .arg(payload)
                .invoke_async(&mut self.conn.clone())
                .await,
        )?;
        Ok(pushed == 1)
    }

    /// The visibility timeout (lease length).
    pub fn visibility_timeout(&self) -> Duration {
        self.visibility_timeout
    }

    /// How often to scan for expired leases.
    pub fn restore_interval(&self) -> Duration {
        self.restore_interval
    }

    /// A second connection for blocking commands (no response timeout; the caller
    /// bounds each call).
    pub async fn blocking_connection(
        &self,
    ) -> Result<redis::aio::MultiplexedConnection, BrokerError> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(None);
        let r = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await;
        self.seen(r)
    }

    /// Records whether a call reached Redis, and turns its error into a [`BrokerError`].
    fn seen<T>(&self, r: redis::RedisResult<T>) -> Result<T, BrokerError> {
        match r {
            Ok(v) => {
                if !self.up.swap(true, Ordering::Relaxed) {
                    tracing::info!(broker = %self.url, "broker reachable again");
                }
                Ok(v)
            }
            Err(e)
                if !(e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()) =>
            {
                tracing::error!(broker = %self.url, "broker refused a command: {e}");
                Err(BrokerError::Refused(e.to_string()))
            }
            Err(e) => {
                let why = e.to_string();
                if self.up.swap(false, Ordering::Relaxed) {
                    tracing::error!(broker = %self.url, "broker unreachable: {why}");
                }
                *self.last_error.lock() = Some(why.clone());
                Err(BrokerError::Down(why))
            }
        }
    }

    /// Queues `tasks` (id, name, input) on pool `pool`'s queue, all or none: `QueueFull`
    /// when the queue would pass `capacity`. Each gets a `PENDING` meta, so any node
    /// answers for it at once.
    pub async fn submit(
        &self,
        pool: usize,
        tasks: &[(TaskId, Arc<str>, Arc<Value>)],
        capacity: usize,
        time_limit: f64,
    ) -> Result<(), BrokerError> {
        let q = &self.queues[pool];
        let depth = self
            .submit_to(&q.name, tasks, capacity, Some(time_limit))
            .await?;
        q.depth.store(depth, Ordering::Relaxed);
        Ok(())
    }

    /// [`Broker::submit`] to any queue by name (a mixed fleet's queue, served by Python
    /// workers); `time_limit` None leaves the workers' own. Returns the new depth.
    pub async fn submit_to(
        &self,
        queue: &str,
        tasks: &[(TaskId, Arc<str>, Arc<Value>)],
        capacity: usize,
        time_limit: Option<f64>,
    ) -> Result<u64, BrokerError> {
        let submitted = now_rfc3339();
        let mut inv = self.scripts.submit.prepare_invoke();
        for k in &celery::priority_keys(queue) {
            inv.key(k);
        }
        inv.key(BINDINGS)
            .arg(capacity)
            .arg(self.result_ttl)
            .arg(celery::binding_member(queue));
        for (id, task, input) in tasks {
            let view = TaskView {
                task_id: *id,
                task: task.clone(),
                state: TaskState::Pending,
                result: None,
                error: None,
                submitted_at: submitted.clone(),
                started_at: None,
                finished_at: None,
                retries: 0,
            };
            inv.arg(celery::meta_key(id))
                .arg(celery::meta(&view, queue, &self.node))
                .arg(celery::task_message(
                    id, task, input, queue, time_limit, &self.node,
                ));
        }
        let depth: i64 = self.seen(inv.invoke_async(&mut self.conn.clone()).await)?;
        if depth < 0 {
            return Err(BrokerError::QueueFull);
        }
        Ok(depth as u64)
    }

    /// Celery's revoked set, in Redis: the node that takes `id`'s message drops it and
    /// records it REVOKED (kept for the result TTL).
    pub async fn mark_revoked(&self, id: &TaskId) -> Result<(), BrokerError> {
        let _: () = self.seen(
            redis::cmd("SETEX")
                .arg(format!("celeriac-revoked-{id}"))
                .arg(self.result_ttl)
                .arg(1)
                .query_async(&mut self.conn.clone())
                .await,
        )?;
        Ok(())
    }

    /// Revokes a task queued on `queue` for other workers (a mixed fleet): tells Python
    /// workers first (a revoke broadcast, for one that already took it), then removes
    /// its message and records it REVOKED if it was still queued. `WrongState(Started)`
    /// when a worker already holds it (it was told; whether it skips it is its call).
    pub async fn revoke_queued(
        &self,
        id: &TaskId,
        queue: &str,
    ) -> Result<Result<TaskView, StoreError>, BrokerError> {
        let Some(mut view) = self.get(id).await? else {
            return Ok(Err(StoreError::NotFound));
        };
        if view.state != TaskState::Pending {
            return Ok(Err(StoreError::WrongState(view.state)));
        }
        self.broadcast_revoke(id).await?;
        view.state = TaskState::Revoked;
        view.error = Some("revoked before it started".into());
        view.finished_at = Some(now_rfc3339());
        let mut inv = self.scripts.revoke_queued.prepare_invoke();
        for k in &celery::priority_keys(queue) {
            inv.key(k);
        }
        inv.key(celery::meta_key(id))
            .arg(id.to_string())
            .arg(celery::meta(&view, queue, &self.node))
            .arg(self.result_ttl);
        let removed: i64 = self.seen(inv.invoke_async(&mut self.conn.clone()).await)?;
        Ok(if removed == 1 {
            Ok(view)
        } else {
            Err(StoreError::WrongState(TaskState::Started))
        })
    }

    /// Broadcasts Celery's `revoke` for `id` on the pidbox, so Python workers that took
    /// or will take its message skip it (they keep a revoked set; they do not read the
    /// meta).
    pub async fn broadcast_revoke(&self, id: &TaskId) -> Result<(), BrokerError> {
        let body = serde_json::json!({
            "method": "revoke",
            "arguments": {"task_id": id.to_string(), "terminate": false, "signal": "SIGTERM"},
            "destination": null, "pattern": null, "matcher": null,
            "ticket": uuid::Uuid::new_v4().to_string(),
            "reply_to": null,
        });
        let msg = celery::envelope(
            &body,
            serde_json::json!({"clock": 1, "expires": epoch() + 60.0}),
            "celery.pidbox",
            "",
        );
        self.publish(&format!("/{}.celery.pidbox", self.db()), &msg)
            .await
    }

    /// Takes up to `max` messages from pool `pool`'s queue for this node (see [`FETCH`]).
    pub async fn fetch(&self, pool: usize, max: usize) -> Result<Vec<Fetched>, BrokerError> {
        let q = &self.queues[pool];
        let mut inv = self.scripts.fetch.prepare_invoke();
        for k in &q.keys {
            inv.key(k);
        }
        inv.key(UNACKED)
            .key(UNACKED_INDEX)
            .key(format!("{}.celeriac-dead-letter", q.name))
            .arg(max)
            .arg(epoch())
            .arg(now_rfc3339())
            .arg(&self.node)
            .arg(&q.name)
            .arg(self.result_ttl)
            .arg(std::process::id());
        // Bytes, not strings: a message that is not UTF-8 must not fail the whole batch.
        let rows: Vec<Vec<Vec<u8>>> = self.seen(inv.invoke_async(&mut self.conn.clone()).await)?;
        let rows = rows.into_iter().map(|row| {
            row.into_iter()
                .map(|b| {
                    String::from_utf8(b)
                        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
                })
                .collect::<Vec<String>>()
        });
        let mut out = Vec::with_capacity(rows.len());
        let mut held = self.held.lock();
        for mut row in rows {
            let kind = row.first().cloned().unwrap_or_default();
            match (kind.as_str(), row.len()) {
                ("run", 7) => {
                    let redelivered = row[6] == "1";
                    let retries = row[5].parse().unwrap_or(0);
                    let submitted = std::mem::take(&mut row[4]);
                    let tag = std::mem::take(&mut row[3]);
                    let raw = std::mem::take(&mut row[1]);
                    let Ok(id) = row[2].parse::<TaskId>() else {
                        // FETCH only takes UUID-shaped ids: unreachable short of a bug.
                        tracing::error!(queue = %q.name, id = %row[2], "task id is not a UUID; it returns after the visibility timeout");
                        continue;
                    };
                    if let Some(old) = held.get(&id) {
                        tracing::warn!(queue = %q.name, %id, old_tag = %old.tag, "a second message with the same task id; the first is acknowledged with it");
                    }
                    if redelivered {
                        self.redeliveries.fetch_add(1, Ordering::Relaxed);
                    }
                    held.insert(
                        id,
                        Held {
                            tag: tag.clone(),
                            pool,
                        },
                    );
                    out.push(Fetched::Run {
                        raw,
                        id,
                        tag,
                        submitted,
                        retries,
                        redelivered,
                    });
                }
                ("done", 4) => out.push(Fetched::Done {
                    id: std::mem::take(&mut row[2]),
                    status: std::mem::take(&mut row[3]),
                }),
                _ => out.push(Fetched::Bad {
                    raw: row.get(1).cloned().unwrap_or_default(),
                }),
            }
        }
        Ok(out)
    }

    /// Waits (at most about a second) until pool `pool`'s queue has a message, on a
    /// blocking connection: `BLMOVE q q RIGHT RIGHT` takes the oldest message and puts
    /// it back where it was.
    pub async fn wait_for_work(
        &self,
        conn: &mut redis::aio::MultiplexedConnection,
        pool: usize,
    ) -> Result<(), BrokerError> {
        let key = &self.queues[pool].keys[0];
        let cmd = redis::cmd("BLMOVE")
            .arg(key)
            .arg(key)
            .arg("RIGHT")
            .arg("RIGHT")
            .arg(1.0)
            .to_owned();
        match tokio::time::timeout(
            Duration::from_secs(3),
            cmd.query_async::<Option<Vec<u8>>>(conn),
        )
        .await
        {
            Ok(r) => self.seen(r).map(|_| ()),
            Err(_) => Err(BrokerError::Down("no answer to BLMOVE within 3 s".into())),
        }
    }

    /// Writes each task's meta from its view (never over a `SUCCESS`) and acknowledges
    /// the final ones this node held.
    pub async fn finish(&self, views: &[TaskView]) -> Result<(), BrokerError> {
        let mut inv = self.scripts.finish.prepare_invoke();
        inv.key(UNACKED).key(UNACKED_INDEX).arg(self.result_ttl);
        let mut acked = Vec::new();
        {
            let held = self.held.lock();
            for view in views {
                let h = held.get(&view.task_id);
                let queue = h.map_or("", |h| self.queues[h.pool].name.as_str());
                let ack = view.state.is_final();
                inv.arg(celery::meta_key(&view.task_id))
                    .arg(celery::meta(view, queue, &self.node))
                    .arg(h.map_or("", |h| h.tag.as_str()))
                    .arg(if ack { "1" } else { "0" });
                if ack {
                    acked.push(view.task_id);
                }
            }
        }
        let _: i64 = self.seen(inv.invoke_async(&mut self.conn.clone()).await)?;
        let mut held = self.held.lock();
        for id in acked {
            held.remove(&id);
        }
        Ok(())
    }

    /// Renews the lease of every message this node holds.
    pub async fn renew(&self) -> Result<(), BrokerError> {
        let tags: Vec<String> = self.held.lock().values().map(|h| h.tag.clone()).collect();
        if tags.is_empty() {
            return Ok(());
        }
        let now = epoch();
        for chunk in tags.chunks(500) {
            let mut cmd = redis::cmd("ZADD");
            cmd.arg(UNACKED_INDEX).arg("XX");
            for tag in chunk {
                cmd.arg(now).arg(tag);
            }
            let _: i64 = self.seen(cmd.query_async(&mut self.conn.clone()).await)?;
        }
        Ok(())
    }

    /// Puts back in their queues the messages whose lease expired (their node died).
    pub async fn restore_expired(&self) -> Result<u64, BrokerError> {
        let cutoff = epoch() - self.visibility_timeout.as_secs_f64();
        let n: u64 = self.seen(
            self.scripts
                .restore
                .key(UNACKED)
                .key(UNACKED_INDEX)
                .key(UNACKED_MUTEX)
                .arg("expired")
                .arg(cutoff)
                .invoke_async(&mut self.conn.clone())
                .await,
        )?;
        if n > 0 {
            self.restored.fetch_add(n, Ordering::Relaxed);
            tracing::warn!(
                restored = n,
                "messages whose node stopped renewing their lease were put back in their queues"
            );
        }
        Ok(n)
    }

    /// Puts back in their queues the messages of `ids` this node holds (a shutdown that
    /// could not finish them); returns how many.
    pub async fn requeue(&self, ids: &[TaskId]) -> Result<u64, BrokerError> {
        let tags: Vec<String> = {
            let held = self.held.lock();
            ids.iter()
                .filter_map(|id| held.get(id).map(|h| h.tag.clone()))
                .collect()
        };
        if tags.is_empty() {
            return Ok(0);
        }
        let mut inv = self.scripts.restore.prepare_invoke();
        inv.key(UNACKED)
            .key(UNACKED_INDEX)
            .key(UNACKED_MUTEX)
            .arg("tags");
        for t in &tags {
            inv.arg(t);
        }
        let n: u64 = self.seen(inv.invoke_async(&mut self.conn.clone()).await)?;
        let mut held = self.held.lock();
        for id in ids {
            held.remove(id);
        }
        Ok(n)
    }

    /// Ids of the messages this node holds.
    pub fn held(&self) -> Vec<TaskId> {
        self.held.lock().keys().copied().collect()
    }

    /// Forgets a held message that was acknowledged some other way (tests, drops).
    pub fn release_held(&self, id: &TaskId) {
        self.held.lock().remove(id);
    }

    /// Messages waiting in pool `pool`'s queue, read from Redis.
    pub async fn depth(&self, pool: usize) -> Result<u64, BrokerError> {
        let mut pipe = redis::pipe();
        for k in &self.queues[pool].keys {
            pipe.llen(k);
        }
        let lens: Vec<u64> = self.seen(pipe.query_async(&mut self.conn.clone()).await)?;
        let depth = lens.iter().sum();
        self.queues[pool].depth.store(depth, Ordering::Relaxed);
        Ok(depth)
    }

    async fn raw_meta(&self, id: &TaskId) -> Result<Option<Vec<u8>>, BrokerError> {
        self.seen(
            redis::cmd("GET")
                .arg(celery::meta_key(id))
                .query_async(&mut self.conn.clone())
                .await,
        )
    }

    /// A task's view from its meta, written by any node or by Python Celery.
    pub async fn get(&self, id: &TaskId) -> Result<Option<TaskView>, BrokerError> {
        Ok(self
            .raw_meta(id)
            .await?
            .and_then(|raw| celery::view_from_meta(*id, &raw)))
    }

    /// Waits until the task is final or `timeout` passes, then returns its view.
    /// Wakes on the result's `PUBLISH`; re-reads every second in case one was missed
    /// (a reconnect).
    pub async fn wait_final(
        &self,
        id: &TaskId,
        timeout: Duration,
    ) -> Result<Option<TaskView>, BrokerError> {
        /// Removes the entry when the last waiter leaves, even when the request is
        /// dropped mid-wait (the client went away).
        struct Leave<'a>(&'a Broker, &'a str);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                let mut waiters = self.0.waiters.lock();
                if waiters.get(self.1).is_some_and(|w| w.receiver_count() == 0) {
                    waiters.remove(self.1);
                }
            }
        }
        let key = celery::meta_key(id);
        // Declared before the receiver, so dropped after it.
        let _leave = Leave(self, &key);
        let mut rx = {
            let mut waiters = self.waiters.lock();
            waiters
                .entry(key.clone())
                .or_insert_with(|| watch::channel(None).0)
                .subscribe()
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let out = loop {
            let view = match self.get(id).await {
                Ok(v) => v,
                Err(e) => break Err(e),
            };
            match view {
                Some(v) if !v.state.is_final() && tokio::time::Instant::now() < deadline => {}
                other => break Ok(other),
            }
            let tick = (tokio::time::Instant::now() + Duration::from_secs(1)).min(deadline);
            let published = tokio::time::timeout_at(tick, rx.changed()).await;
            if let Ok(Ok(())) = published
                && let Some(raw) = rx.borrow_and_update().clone()
                && let Some(v) = celery::view_from_meta(*id, &raw)
                && v.state.is_final()
            {
                break Ok(Some(v));
            }
        };
        drop(rx);
        out
    }

    /// Revokes a task that has not started, wherever it is queued: its meta becomes
    /// `REVOKED` and the node that takes its message drops it.
    pub async fn revoke(&self, id: &TaskId) -> Result<Result<TaskView, StoreError>, BrokerError> {
        let key = celery::meta_key(id);
        loop {
            let Some(raw) = self.raw_meta(id).await? else {
                return Ok(Err(StoreError::NotFound));
            };
            let view = celery::view_from_meta(*id, &raw);
            let Some(mut view) = view else {
                return Ok(Err(StoreError::NotFound));
            };
            // RETRY here means a node took it and re-queued it locally: it may be
            // running again. Only a task no node has taken can be revoked.
            if view.state != TaskState::Pending {
                return Ok(Err(StoreError::WrongState(view.state)));
            }
            view.state = TaskState::Revoked;
            view.error = Some("revoked before it started".into());
            view.finished_at = Some(now_rfc3339());
            let queue: Value = serde_json::from_slice(&raw).unwrap_or_default();
            let meta = celery::meta(
                &view,
                queue["queue"].as_str().unwrap_or_default(),
                &self.node,
            );
            let written: i64 = self.seen(
                self.scripts
                    .replace
                    .key(&key)
                    .arg(raw)
                    .arg(meta)
                    .arg(self.result_ttl)
                    .invoke_async(&mut self.conn.clone())
                    .await,
            )?;
            if written == 1 {
                return Ok(Ok(view));
            }
        }
    }
}

/// Follows every result's `PUBLISH` (one pattern subscription) and wakes the long-polls
/// waiting on it; reconnects after a second when the connection drops.
async fn results_listener(broker: Arc<Broker>) {
    let weak = Arc::downgrade(&broker);
    let client = broker.client.clone();
    drop(broker);
    loop {
        let subscribed = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.psubscribe(RESULTS_PATTERN).await?;
            redis::RedisResult::Ok(pubsub)
        }
        .await;
        match subscribed {
            Ok(pubsub) => {
                let mut messages = pubsub.into_on_message();
                while let Some(msg) = messages.next().await {
                    let Some(broker) = weak.upgrade() else { return };
                    let waiters = broker.waiters.lock();
                    if let Some(w) = waiters.get(msg.get_channel_name()) {
                        let payload: Arc<[u8]> = msg.get_payload_bytes().into();
                        w.send_replace(Some(payload));
                    }
                }
            }
            Err(e) => tracing::debug!("result subscription: {e}"),
        }
        if weak.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
