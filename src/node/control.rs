//! Celery's remote control (kombu's pidbox) and events, so `celery inspect`, `celery
//! control` and Flower work against celeriac nodes.
//!
//! - **Control.** Broadcasts arrive on the fanout channel `/{db}.celery.pidbox`. A node
//!   answers those addressed to it (`destination` null or naming it), as
//!   `celeriac@HOSTNAME`, by pushing a reply on `{oid}.reply.celery.pidbox`: `{node:
//!   result}` with the request's `ticket` in the headers. Commands: `ping`,
//!   `pool_grow`, `pool_shrink`, `autoscale` (every pool of the node, refused as Celery
//!   does while autoscaling), `revoke`, `enable_events`, `disable_events`, and the
//!   inspections `active`, `reserved`, `scheduled`, `revoked`, `stats`, `registered`,
//!   `active_queues`, `conf`, `report`. Each command is its own small type: a broadcast's
//!   `method` and `arguments` are parsed into a `Command` first (an unknown name or
//!   arguments that do not fit answer `{"error": ...}`), then applied to the node.
//! - **Events.** Published on `/{db}.celeryev/{routing key}` as Celery's Redis transport
//!   does: `worker-online` at start, `worker-heartbeat` every two seconds,
//!   `worker-offline` at shutdown; task events (`task-received`, `task-started`,
//!   `task-succeeded`, `task-failed`, `task-revoked`) while enabled
//!   (`broker.task_events`, or `enable_events` from Flower or `celery control`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::actors::protocol::{AutoscaleUpdate, Resize, ResizeError};
use crate::broker::{Broker, celery, epoch};
use crate::state::AppState;
use crate::store::{TaskId, TaskState, TaskView};

/// Seconds between heartbeats (Celery's default `freq`).
pub const HEARTBEAT_SECONDS: f64 = 2.0;

/// Events and control of one node.
pub struct Control {
    state: Arc<AppState>,
    broker: Arc<Broker>,
    clock: AtomicU64,
    started: SystemTime,
    /// Task events on (`broker.task_events`, or `enable_events`).
    pub task_events: AtomicBool,
    /// Tasks this node finished, by name (`stats.total`), and in all (heartbeats).
    processed: parking_lot::Mutex<std::collections::BTreeMap<String, u64>>,
    processed_total: AtomicU64,
    /// Ids revoked through remote control (the newest 10,000), for `inspect revoked`.
    revoked: parking_lot::Mutex<std::collections::VecDeque<String>>,
    /// The listener and heartbeat tasks, stopped before `worker-offline`.
    tasks: parking_lot::Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Control {
    /// Control for `state`'s node on `broker`; starts nothing.
    pub fn new(state: Arc<AppState>, broker: Arc<Broker>) -> Arc<Control> {
        Arc::new(Control {
            task_events: AtomicBool::new(state.config.broker.task_events),
            state,
            broker,
            clock: AtomicU64::new(0),
            started: SystemTime::now(),
            processed: parking_lot::Mutex::new(Default::default()),
            processed_total: AtomicU64::new(0),
            revoked: parking_lot::Mutex::new(Default::default()),
            tasks: parking_lot::Mutex::new(Vec::new()),
        })
    }

    fn remember_revoked(&self, id: &str) {
        let mut r = self.revoked.lock();
        if r.len() >= 10_000 {
            r.pop_front();
        }
        r.push_back(id.to_string());
    }

    /// Stops answering and heartbeating, then sends `worker-offline`.
    pub async fn offline(&self) {
        for t in std::mem::take(&mut *self.tasks.lock()) {
            t.abort();
        }
        self.worker_event("worker-offline").await;
    }

    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn node(&self) -> &str {
        &self.broker.node
    }

    /// Publishes one event (`type` as Celery names it, e.g. `worker-heartbeat`).
    pub async fn event(&self, kind: &str, mut fields: Value) {
        let routing_key = kind.replace('-', ".");
        if let Value::Object(m) = &mut fields {
            m.insert("type".into(), kind.into());
            m.insert("hostname".into(), self.node().into());
            m.insert("timestamp".into(), epoch().into());
            m.insert("utcoffset".into(), 0.into());
            m.insert("pid".into(), std::process::id().into());
            m.insert("clock".into(), self.tick().into());
        }
        let msg = celery::envelope(
            &fields,
            json!({"hostname": self.node()}),
            "celeryev",
            &routing_key,
        );
        let channel = format!("/{}.celeryev/{routing_key}", self.broker.db());
        let _ = self.broker.publish(&channel, &msg).await;
    }

    /// A worker event: `worker-online`, `worker-heartbeat` or `worker-offline`.
    pub async fn worker_event(&self, kind: &str) {
        let active: usize = self.state.pools.iter().map(|p| p.status().busy).sum();
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let loadavg: Vec<f64> = load
            .split_whitespace()
            .take(3)
            .filter_map(|x| x.parse().ok())
            .collect();
        self.event(
            kind,
            json!({
                "freq": HEARTBEAT_SECONDS,
                "active": active,
                "processed": self.processed_total.load(Ordering::Relaxed),
                "loadavg": loadavg,
                "sw_ident": "celeriac",
                "sw_ver": env!("CARGO_PKG_VERSION"),
                "sw_sys": std::env::consts::OS,
            }),
        )
        .await;
    }

    /// Task events for tasks taken from the broker (when enabled): `task-received` and
    /// `task-started`.
    pub async fn task_taken(&self, id: &TaskId, name: &str, input: Option<&Value>) {
        if !self.task_events.load(Ordering::Relaxed) {
            return;
        }
        let (args, kwargs) = input.map_or((json!([]), json!({})), celery::to_arguments);
        self.event(
            "task-received",
            json!({"uuid": id.to_string(), "name": name, "args": args.to_string(),
                   "kwargs": kwargs.to_string(), "retries": 0, "eta": null, "expires": null,
                   "root_id": id.to_string(), "parent_id": null}),
        )
        .await;
        self.event("task-started", json!({"uuid": id.to_string()}))
            .await;
    }

    /// Counts the final views of tasks this node ran (`stats.total`, heartbeats).
    pub fn count_finished(&self, views: &[TaskView]) {
        let mut processed = self.processed.lock();
        for view in views.iter().filter(|v| v.state.is_final()) {
            *processed.entry(view.task.to_string()).or_default() += 1;
            self.processed_total.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether task events are on.
    pub fn task_events_on(&self) -> bool {
        self.task_events.load(Ordering::Relaxed)
    }

    /// The event of a task this node ran that reached a final state (or `RETRY`).
    pub async fn task_finished(&self, view: &TaskView) {
        let runtime = match (&view.started_at, &view.finished_at) {
            (Some(s), Some(f)) => match (
                humantime::parse_rfc3339_weak(s),
                humantime::parse_rfc3339_weak(f),
            ) {
                (Ok(s), Ok(f)) => f.duration_since(s).unwrap_or_default().as_secs_f64(),
                _ => 0.0,
            },
            _ => 0.0,
        };
        let id = view.task_id.to_string();
        let error = view.error.clone().unwrap_or_default();
        match view.state {
            TaskState::Success => {
                let result = view.result.clone().unwrap_or(Value::Null).to_string();
                self.event("task-succeeded", json!({"uuid": id, "result": result, "runtime": runtime}))
                    .await
            }
            TaskState::Failure => {
                self.event("task-failed", json!({"uuid": id, "exception": format!("TaskError('{error}')"), "traceback": null}))
                    .await
            }
            TaskState::Revoked => {
                self.event("task-revoked", json!({"uuid": id, "terminated": false, "signum": null, "expired": error.starts_with("expired")}))
                    .await
            }
            TaskState::Retry => {
                self.event("task-retried", json!({"uuid": id, "exception": error, "traceback": null}))
                    .await
            }
            TaskState::Pending | TaskState::Started => {}
        }
    }

    /// Handles one pidbox broadcast (a kombu envelope); answers when asked to.
    async fn handle(&self, raw: &[u8]) {
        let Ok(env) = serde_json::from_slice::<Value>(raw) else {
            return;
        };
        let Some(body) = celery::body(&env).ok() else {
            return;
        };
        // kombu's rules: a non-empty destination lists the nodes; else a pattern (glob)
        // selects them; else every node answers.
        let for_us = match (&body["destination"], body["pattern"].as_str()) {
            (Value::Array(names), _) if !names.is_empty() => {
                names.iter().any(|n| n.as_str() == Some(self.node()))
            }
            (Value::String(n), _) if !n.is_empty() => n == self.node(),
            (_, Some(pattern)) if !pattern.is_empty() => {
                body["matcher"].as_str().is_none_or(|m| m == "glob") && glob(pattern, self.node())
            }
            _ => true,
        };
        if !for_us {
            return;
        }
        let method = body["method"].as_str().unwrap_or_default().to_string();
        let result = self.run(&method, &body["arguments"]).await;
        let reply_to = &body["reply_to"];
        let (Some(exchange), Some(oid)) = (
            reply_to["exchange"].as_str(),
            reply_to["routing_key"].as_str(),
        ) else {
            return;
        };
        let reply = celery::envelope(
            &json!({ self.node(): result }),
            json!({"ticket": body["ticket"], "clock": self.tick()}),
            exchange,
            oid,
        );
        // kombu's reply queue for the client `oid`, bound to `reply.celery.pidbox`; a
        // client that stopped waiting deleted it (then nothing is pushed).
        let _ = self.broker.reply(exchange, oid, &reply).await;
    }

    /// Runs one command; the result as Celery shapes it (`{"error": ...}` for a
    /// command it does not know or whose arguments do not fit).
    async fn run(&self, method: &str, args: &Value) -> Value {
        match Command::parse(method, args) {
            Ok(command) => command.apply(self).await,
            Err(e) => json!({ "error": e }),
        }
    }

    /// The tasks this node runs, each with its signature (`spam.predict(text)`), so a
    /// caller sees what its positional arguments fill.
    fn registered(&self) -> Value {
        let registry = &self.state.registry;
        let names: Vec<String> = registry
            .names()
            .into_iter()
            .filter_map(|n| registry.get(n))
            .map(|r| r.factory.params().signature(&r.name))
            .collect();
        json!(names)
    }

    /// The queues this node consumes, as kombu describes a queue.
    fn active_queues(&self) -> Value {
        Value::Array(
            self.broker
                .queues
                .iter()
                .map(|q| {
                    json!({"name": q.name, "exchange": {"name": q.name, "type": "direct", "arguments": null, "durable": true, "passive": false, "auto_delete": false, "delivery_mode": null, "no_declare": false},
                           "routing_key": q.name, "queue_arguments": null, "binding_arguments": null, "consumer_arguments": null,
                           "durable": true, "exclusive": false, "auto_delete": false, "no_ack": false, "alias": null,
                           "bindings": [], "no_declare": null, "expires": null, "message_ttl": null, "max_length": null,
                           "max_length_bytes": null, "max_priority": null})
                })
                .collect(),
        )
    }

    async fn resize(&self, pool: usize, change: Resize) -> Result<(), String> {
        let outcome = self
            .state
            .pool_actors
            .resize(pool, change)
            .await
            .map_err(|e| format!("pool `{}` did not answer: {e}", self.state.pools[pool].name))?;
        outcome.map_err(|e| match e {
            ResizeError::Invalid(m) => m,
            other => other.to_string(),
        })
    }

    /// Celery's request info of the tasks in `state` this node holds.
    fn requests(&self, state: TaskState) -> Vec<Value> {
        let by_name: std::collections::HashMap<&str, &str> = self
            .state
            .registry
            .names()
            .into_iter()
            .filter_map(|n| {
                self.state
                    .registry
                    .get(n)
                    .map(|r| (n, self.broker.queues[r.pool].name.as_str()))
            })
            .collect();
        self.state
            .outbox
            .taken()
            .into_iter()
            .filter(|t| t.state == state)
            .map(|t| {
                let name = t.task;
                let (args, kwargs) = t.input.as_deref().map_or((json!([]), json!({})), celery::to_arguments);
                let time_start = t
                    .started_at
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map(|d| d.as_secs_f64());
                json!({
                    "id": t.id.to_string(), "name": &*name, "args": args, "kwargs": kwargs,
                    "type": &*name, "hostname": self.node(), "time_start": time_start,
                    "acknowledged": false,
                    "delivery_info": {"exchange": "", "routing_key": by_name.get(&*name).copied().unwrap_or(""), "priority": 0, "redelivered": false},
                    "worker_pid": std::process::id(),
                })
            })
            .collect()
    }

    fn stats(&self) -> Value {
        let statuses: Vec<_> = self.state.pools.iter().map(|p| p.status()).collect();
        let size: usize = statuses.iter().map(|s| s.size).sum();
        let uptime = self.started.elapsed().unwrap_or_default().as_secs();
        json!({
            "total": &*self.processed.lock(),
            "pid": std::process::id(),
            "clock": self.clock.load(Ordering::Relaxed).to_string(),
            "uptime": uptime,
            "pool": {
                "implementation": "celeriac threads",
                "max-concurrency": size,
                "processes": [std::process::id()],
                "max-tasks-per-child": null,
                "put-guarded-by-semaphore": false,
                "timeouts": [0, 0],
                "pools": self.state.pools.iter().zip(&statuses).map(|(p, s)| json!({
                    "name": p.name, "kind": p.config.kind.as_str(), "size": s.size,
                    "idle": s.idle, "busy": s.busy, "autoscale": s.autoscale,
                })).collect::<Vec<_>>(),
            },
            "broker": {"hostname": self.broker.url, "transport": "redis", "virtual_host": self.broker.db().to_string()},
            "prefetch_count": 0,
            "rusage": {},
            "sw_ident": "celeriac",
        })
    }
}

/// One remote-control command and its arguments, parsed from a broadcast's `method` and
/// `arguments` (Celery's names); [`Command::apply`] runs it on a node.
#[derive(Debug, Clone, PartialEq)]
enum Command {
    /// `ping`: answers `pong`.
    Ping,
    /// `pool_grow` / `pool_shrink`.
    Resize(PoolResize),
    /// `autoscale`.
    Autoscale(Autoscale),
    /// `revoke`.
    Revoke(Revoke),
    /// `enable_events` (true) / `disable_events` (false): task events on or off.
    Events(bool),
    /// A read-only inspection (`celery inspect ...`).
    Inspect(Inspect),
}

impl Command {
    /// The command `method` names, with its `arguments`; the error answer's text for a
    /// command this node does not know or arguments that do not fit.
    fn parse(method: &str, args: &Value) -> Result<Command, String> {
        Ok(match method {
            "ping" => Command::Ping,
            "pool_grow" => Command::Resize(PoolResize::parse(true, args)),
            "pool_shrink" => Command::Resize(PoolResize::parse(false, args)),
            "autoscale" => Command::Autoscale(Autoscale::parse(args)?),
            "revoke" => Command::Revoke(Revoke::parse(args)),
            "enable_events" => Command::Events(true),
            "disable_events" => Command::Events(false),
            other => Command::Inspect(
                Inspect::parse(other).ok_or_else(|| format!("No such control command: {other}"))?,
            ),
        })
    }

    /// Runs the command on `control`'s node; the answer as Celery shapes it.
    async fn apply(self, control: &Control) -> Value {
        match self {
            Command::Ping => json!({"ok": "pong"}),
            Command::Resize(c) => c.apply(control).await,
            Command::Autoscale(c) => c.apply(control).await,
            Command::Revoke(c) => c.apply(control).await,
            Command::Events(on) => {
                control.task_events.store(on, Ordering::Relaxed);
                json!({"ok": if on { "task events enabled" } else { "task events disabled" }})
            }
            Command::Inspect(c) => c.answer(control),
        }
    }
}

/// `pool_grow n` / `pool_shrink n`: every pool of the node by `n` workers (a shrink
/// keeps one); refused, as Celery does, while a pool autoscales.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PoolResize {
    grow: bool,
    /// Celery's `n`: 1 when missing or not a count, at most 10,000.
    n: usize,
}

impl PoolResize {
    fn parse(grow: bool, args: &Value) -> PoolResize {
        let n = args["n"].as_u64().unwrap_or(1).min(10_000) as usize;
        PoolResize { grow, n }
    }

    fn method(&self) -> &'static str {
        if self.grow {
            "pool_grow"
        } else {
            "pool_shrink"
        }
    }

    async fn apply(self, control: &Control) -> Value {
        let pools = &control.state.pools;
        if pools.iter().any(|p| p.status().autoscale.is_some()) {
            return json!({"error": format!("{} is not supported with autoscale. Adjust autoscale range instead.", self.method())});
        }
        for (i, p) in pools.iter().enumerate() {
            let size = p.status().size;
            let target = if self.grow {
                size.saturating_add(self.n)
            } else {
                size.saturating_sub(self.n).max(1)
            };
            if let Err(e) = control.resize(i, Resize::Concurrency(target)).await {
                return json!({ "error": e });
            }
        }
        json!({"ok": if self.grow { "pool will grow" } else { "pool will shrink" }})
    }
}

/// `autoscale max min`: every pool of the node autoscales between `min` and `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Autoscale {
    max: u64,
    /// 1 when missing.
    min: u64,
}

impl Autoscale {
    fn parse(args: &Value) -> Result<Autoscale, String> {
        let max = args["max"]
            .as_u64()
            .ok_or("autoscale needs max (and min)")?;
        let min = args["min"].as_u64().unwrap_or(1);
        Ok(Autoscale { max, min })
    }

    async fn apply(self, control: &Control) -> Value {
        let Autoscale { max, min } = self;
        for i in 0..control.state.pools.len() {
            let change =
                Resize::Autoscale(Some(AutoscaleUpdate::bounds(min as usize, max as usize)));
            if let Err(e) = control.resize(i, change).await {
                return json!({ "error": e });
            }
        }
        json!({"ok": format!("autoscale now max={max} min={min}")})
    }
}

/// `revoke task_id...`: Celery's revoked set, shared by the nodes in Redis (the node that
/// takes a revoked message drops it); a task this node holds and has not started is
/// revoked here at once.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Revoke {
    /// `task_id`: one id or a list of them, as sent (ids that are not UUIDs are
    /// remembered for `inspect revoked`, nothing more).
    task_ids: Vec<String>,
    /// `terminate`: cannot be honoured (the threads pool cannot stop a running task);
    /// the answer says so.
    terminate: bool,
}

impl Revoke {
    fn parse(args: &Value) -> Revoke {
        let task_ids = match &args["task_id"] {
            Value::String(s) => vec![s.clone()],
            Value::Array(a) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        };
        Revoke {
            task_ids,
            terminate: args["terminate"].as_bool() == Some(true),
        }
    }

    async fn apply(self, control: &Control) -> Value {
        for raw in &self.task_ids {
            control.remember_revoked(raw);
            let Ok(id) = raw.parse::<TaskId>() else {
                continue;
            };
            if let Err(e) = control.broker.mark_revoked(&id).await {
                return json!({"error": e.to_string()});
            }
            let _ = control.state.store.revoke(&id);
        }
        let terminate = if self.terminate {
            " (running tasks are not terminated: the threads pool cannot stop a running task)"
        } else {
            ""
        };
        json!({"ok": format!("tasks {} flagged as revoked{terminate}", self.task_ids.join(", "))})
    }
}

/// The read-only inspections (`celery inspect NAME`); none takes arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Inspect {
    /// `active`: the tasks this node runs.
    Active,
    /// `reserved`: the tasks this node took and has not started.
    Reserved,
    /// `scheduled`: always empty (no ETA tasks).
    Scheduled,
    /// `revoked`: ids revoked through remote control.
    Revoked,
    /// `registered`: task names with their signatures.
    Registered,
    /// `active_queues`: the queues this node consumes.
    ActiveQueues,
    /// `stats`: counts, pools, broker.
    Stats,
    /// `conf`: the settings Flower reads.
    Conf,
    /// `report`: version and system.
    Report,
}

impl Inspect {
    fn parse(method: &str) -> Option<Inspect> {
        Some(match method {
            "active" => Inspect::Active,
            "reserved" => Inspect::Reserved,
            "scheduled" => Inspect::Scheduled,
            "revoked" => Inspect::Revoked,
            "registered" => Inspect::Registered,
            "active_queues" => Inspect::ActiveQueues,
            "stats" => Inspect::Stats,
            "conf" => Inspect::Conf,
            "report" => Inspect::Report,
            _ => return None,
        })
    }

    fn answer(self, control: &Control) -> Value {
        match self {
            Inspect::Active => Value::Array(control.requests(TaskState::Started)),
            Inspect::Reserved => Value::Array(control.requests(TaskState::Pending)),
            Inspect::Scheduled => json!([]),
            Inspect::Revoked => json!(control.revoked.lock().iter().collect::<Vec<_>>()),
            Inspect::Registered => control.registered(),
            Inspect::ActiveQueues => control.active_queues(),
            Inspect::Stats => control.stats(),
            Inspect::Conf => {
                json!({"broker_url": control.broker.url, "worker_send_task_events": control.task_events.load(Ordering::Relaxed)})
            }
            Inspect::Report => {
                json!({"ok": format!("celeriac {} on {}", env!("CARGO_PKG_VERSION"), std::env::consts::OS)})
            }
        }
    }
}

/// Starts the pidbox listener and the heartbeats of `control`'s node.
pub fn start(control: Arc<Control>) -> Vec<tokio::task::JoinHandle<()>> {
    let control_tasks = control.clone();
    let listener = {
        let c = control.clone();
        tokio::spawn(async move {
            let channel = format!("/{}.celery.pidbox*", c.broker.db());
            loop {
                let subscribed = async {
                    let mut pubsub = c.broker.client().get_async_pubsub().await?;
                    pubsub.psubscribe(&channel).await?;
                    redis::RedisResult::Ok(pubsub)
                }
                .await;
                if let Ok(pubsub) = subscribed {
                    let mut messages = pubsub.into_on_message();
                    // A connection that died without closing shows as silence: after a
                    // minute without a broadcast, subscribe again.
                    while let Ok(Some(msg)) =
                        tokio::time::timeout(Duration::from_secs(60), messages.next()).await
                    {
                        // One command at a time would let a slow resize hold up pings.
                        let (c, payload) = (c.clone(), msg.get_payload_bytes().to_vec());
                        tokio::spawn(async move { c.handle(&payload).await });
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };
    let heart = tokio::spawn(async move {
        control.worker_event("worker-online").await;
        let mut every = tokio::time::interval(Duration::from_secs_f64(HEARTBEAT_SECONDS));
        every.tick().await;
        loop {
            every.tick().await;
            control.worker_event("worker-heartbeat").await;
        }
    });
    *control_tasks.tasks.lock() = vec![listener.abort_handle(), heart.abort_handle()];
    vec![listener, heart]
}

/// Glob matching of node names (`*` and `?`), as kombu's `glob` matcher.
fn glob(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], n) || (!n.is_empty() && go(p, &n[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::{Autoscale, Command, Inspect, PoolResize, Revoke, glob};

    fn parse(method: &str, args: Value) -> Result<Command, String> {
        Command::parse(method, &args)
    }

    #[test]
    fn grow_and_shrink_take_n_default_one_at_most_ten_thousand() {
        let resize = |grow, n| Ok(Command::Resize(PoolResize { grow, n }));
        assert_eq!(parse("pool_grow", json!({"n": 3})), resize(true, 3));
        assert_eq!(parse("pool_shrink", json!({"n": 2})), resize(false, 2));
        // Celery's client sends `n` even when it is 1; a missing or odd one counts as 1.
        assert_eq!(parse("pool_grow", json!({})), resize(true, 1));
        assert_eq!(parse("pool_shrink", Value::Null), resize(false, 1));
        assert_eq!(parse("pool_grow", json!({"n": -2})), resize(true, 1));
        assert_eq!(parse("pool_grow", json!({"n": "4"})), resize(true, 1));
        assert_eq!(parse("pool_grow", json!({"n": 2.5})), resize(true, 1));
        assert_eq!(
            parse("pool_grow", json!({"n": 1_000_000})),
            resize(true, 10_000)
        );
        assert_eq!(PoolResize::parse(false, &json!({})).method(), "pool_shrink");
        assert_eq!(PoolResize::parse(true, &json!({})).method(), "pool_grow");
    }

    #[test]
    fn autoscale_needs_max_and_defaults_min_to_one() {
        assert_eq!(
            parse("autoscale", json!({"max": 8, "min": 2})),
            Ok(Command::Autoscale(Autoscale { max: 8, min: 2 }))
        );
        assert_eq!(
            parse("autoscale", json!({"max": 8})),
            Ok(Command::Autoscale(Autoscale { max: 8, min: 1 }))
        );
        let needs = Err("autoscale needs max (and min)".to_string());
        assert_eq!(parse("autoscale", json!({"min": 2})), needs);
        assert_eq!(parse("autoscale", json!({"max": "8"})), needs);
        assert_eq!(parse("autoscale", Value::Null), needs);
    }

    #[test]
    fn revoke_takes_one_id_or_a_list() {
        let revoke = |ids: &[&str], terminate| {
            Ok(Command::Revoke(Revoke {
                task_ids: ids.iter().map(|s| s.to_string()).collect(),
                terminate,
            }))
        };
        assert_eq!(
            parse("revoke", json!({"task_id": "a"})),
            revoke(&["a"], false)
        );
        assert_eq!(
            parse("revoke", json!({"task_id": ["a", "b"], "terminate": true})),
            revoke(&["a", "b"], true)
        );
        // What is not a string is left out; no id is an empty revoke.
        assert_eq!(
            parse(
                "revoke",
                json!({"task_id": ["a", 7, null], "terminate": "yes"})
            ),
            revoke(&["a"], false)
        );
        assert_eq!(parse("revoke", json!({})), revoke(&[], false));
        assert_eq!(parse("revoke", json!({"task_id": 7})), revoke(&[], false));
    }

    #[test]
    fn every_command_the_module_lists_parses_and_others_are_refused() {
        let docs: String = include_str!("control.rs")
            .lines()
            .take_while(|l| l.starts_with("//!"))
            .collect();
        let no_args = [
            ("ping", Command::Ping),
            ("enable_events", Command::Events(true)),
            ("disable_events", Command::Events(false)),
            ("active", Command::Inspect(Inspect::Active)),
            ("reserved", Command::Inspect(Inspect::Reserved)),
            ("scheduled", Command::Inspect(Inspect::Scheduled)),
            ("revoked", Command::Inspect(Inspect::Revoked)),
            ("registered", Command::Inspect(Inspect::Registered)),
            ("active_queues", Command::Inspect(Inspect::ActiveQueues)),
            ("stats", Command::Inspect(Inspect::Stats)),
            ("conf", Command::Inspect(Inspect::Conf)),
            ("report", Command::Inspect(Inspect::Report)),
        ];
        for (name, command) in &no_args {
            assert_eq!(parse(name, json!({})), Ok(command.clone()), "{name}");
        }
        let with_args = ["pool_grow", "pool_shrink", "autoscale", "revoke"];
        for name in no_args.iter().map(|(n, _)| *n).chain(with_args) {
            assert!(
                docs.contains(&format!("`{name}`")),
                "`{name}` is in the module docs"
            );
        }
        // Celery's own answer to a command a worker does not have.
        assert_eq!(
            parse("shutdown", json!({})),
            Err("No such control command: shutdown".to_string())
        );
        assert_eq!(
            parse("", json!({})),
            Err("No such control command: ".to_string())
        );
        assert_eq!(
            parse("Ping", json!({})),
            Err("No such control command: Ping".to_string())
        );
    }

    #[test]
    fn node_patterns_match_as_kombu_globs() {
        assert!(glob("celeriac@*", "celeriac@vm"));
        assert!(glob("*@vm", "celeriac@vm"));
        assert!(glob("celeriac@v?", "celeriac@vm"));
        assert!(!glob("celery@*", "celeriac@vm"));
        assert!(!glob("celeriac@", "celeriac@vm"));
    }
}
