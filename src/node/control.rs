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
//!   `active_queues`, `conf`, `report`.
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

    /// Runs one command; the result as Celery shapes it.
    async fn run(&self, method: &str, args: &Value) -> Value {
        let n = args["n"].as_u64().unwrap_or(1).min(10_000) as usize;
        match method {
            "ping" => json!({"ok": "pong"}),
            "pool_grow" | "pool_shrink" => {
                let grow = method == "pool_grow";
                if self.state.pools.iter().any(|p| p.status().autoscale.is_some()) {
                    return json!({"error": format!("{method} is not supported with autoscale. Adjust autoscale range instead.")});
                }
                for (i, p) in self.state.pools.iter().enumerate() {
                    let size = p.status().size;
                    let target = if grow {
                        size.saturating_add(n)
                    } else {
                        size.saturating_sub(n).max(1)
                    };
                    if let Err(e) = self.resize(i, Resize::Concurrency(target)).await {
                        return json!({"error": e});
                    }
                }
                json!({"ok": if grow { "pool will grow" } else { "pool will shrink" }})
            }
            "autoscale" => {
                let (Some(max), min) = (args["max"].as_u64(), args["min"].as_u64().unwrap_or(1)) else {
                    return json!({"error": "autoscale needs max (and min)"});
                };
                for i in 0..self.state.pools.len() {
                    let change = Resize::Autoscale(Some(AutoscaleUpdate::bounds(min as usize, max as usize)));
                    if let Err(e) = self.resize(i, change).await {
                        return json!({"error": e});
                    }
                }
                json!({"ok": format!("autoscale now max={max} min={min}")})
            }
            "revoke" => {
                let ids: Vec<String> = match &args["task_id"] {
                    Value::String(s) => vec![s.clone()],
                    Value::Array(a) => a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
                    _ => Vec::new(),
                };
                for raw in &ids {
                    self.remember_revoked(raw);
                    let Ok(id) = raw.parse::<TaskId>() else { continue };
                    // Celery's revoked set, shared by the nodes: the node that takes the
                    // message drops it. A task this node holds and has not started is
                    // revoked here at once.
                    if let Err(e) = self.broker.mark_revoked(&id).await {
                        return json!({"error": e.to_string()});
                    }
                    let _ = self.state.store.revoke(&id);
                }
                let terminate = if args["terminate"].as_bool() == Some(true) {
                    " (running tasks are not terminated: the threads pool cannot stop a running task)"
                } else {
                    ""
                };
                json!({"ok": format!("tasks {} flagged as revoked{terminate}", ids.join(", "))})
            }
            "enable_events" => {
                self.task_events.store(true, Ordering::Relaxed);
                json!({"ok": "task events enabled"})
            }
            "disable_events" => {
                self.task_events.store(false, Ordering::Relaxed);
                json!({"ok": "task events disabled"})
            }
            "active" => Value::Array(self.requests(TaskState::Started)),
            "reserved" => Value::Array(self.requests(TaskState::Pending)),
            "scheduled" => json!([]),
            "revoked" => json!(self.revoked.lock().iter().collect::<Vec<_>>()),
            // Each task with its signature (`spam.predict(text)`), so a caller sees
            // what its positional arguments fill.
            "registered" => {
                let registry = &self.state.registry;
                let names: Vec<String> = registry
                    .names()
                    .into_iter()
                    .filter_map(|n| registry.get(n))
                    .map(|r| r.factory.params().signature(&r.name))
                    .collect();
                json!(names)
            }
            "active_queues" => Value::Array(
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
            ),
            "stats" => self.stats(),
            "conf" => json!({"broker_url": self.broker.url, "worker_send_task_events": self.task_events.load(Ordering::Relaxed)}),
            "report" => json!({"ok": format!("celeriac {} on {}", env!("CARGO_PKG_VERSION"), std::env::consts::OS)}),
            other => json!({"error": format!("No such control command: {other}")}),
        }
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
            .store
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
    use super::glob;

    #[test]
    fn node_patterns_match_as_kombu_globs() {
        assert!(glob("celeriac@*", "celeriac@vm"));
        assert!(glob("*@vm", "celeriac@vm"));
        assert!(glob("celeriac@v?", "celeriac@vm"));
        assert!(!glob("celery@*", "celeriac@vm"));
        assert!(!glob("celeriac@", "celeriac@vm"));
    }
}
