//! A node's side of the broker: per pool, a loop that takes messages only for idle
//! workers and hands them to the pool actor; one writer of results (in order, batched,
//! retried until Redis takes them); and housekeeping (lease renewal, restores of dead
//! nodes' messages, queue depths).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::control::Control;
use crate::actors::protocol::Job;
use crate::broker::{Broker, BrokerError, Fetched, celery};
use crate::outbox::Outbox;
use crate::state::AppState;
use crate::store::{TaskState, TaskView};

/// The running consumer tasks of a node.
pub struct Consumers {
    stop: watch::Sender<bool>,
    fetchers: Vec<JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
    pending: Arc<AtomicUsize>,
    control: Arc<Control>,
    broker: Arc<Broker>,
    outbox: Arc<Outbox>,
}

/// Starts taking work from `broker` for every pool of `state`, writing results, and
/// Celery's remote control and events ([`super::control`]).
pub fn start(state: Arc<AppState>, broker: Arc<Broker>) -> Consumers {
    let control = Control::new(state.clone(), broker.clone());
    let (stop, _) = watch::channel(false);
    let (tx, rx) = mpsc::unbounded_channel();
    let pending = Arc::new(AtomicUsize::new(0));
    state.outbox.write_to(tx, pending.clone());
    let fetchers = (0..state.pools.len())
        .map(|pool| {
            tokio::spawn(fetch_loop(
                state.clone(),
                broker.clone(),
                control.clone(),
                pool,
                stop.subscribe(),
            ))
        })
        .collect();
    let mut background = vec![
        tokio::spawn(writer(broker.clone(), control.clone(), rx, pending.clone())),
        tokio::spawn(housekeeping(broker.clone(), state.pools.clone())),
    ];
    background.extend(super::control::start(control.clone()));
    Consumers {
        stop,
        fetchers,
        background,
        pending,
        control,
        broker,
        outbox: state.outbox.clone(),
    }
}

impl Consumers {
    /// Stops taking new messages; returns once no fetch is in flight.
    pub async fn stop_taking(&mut self) {
        let _ = self.stop.send(true);
        for f in self.fetchers.drain(..) {
            let _ = f.await;
        }
    }

    /// At shutdown, after the drain: writes the results already computed (up to 5 s),
    /// then puts every message still held back in its queue, for another node.
    pub async fn hand_back(&self) {
        self.flush(Duration::from_secs(5)).await;
        let held = self.broker.held();
        self.outbox.detach(&held);
        match self.broker.requeue(&held).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(requeued = n, "put unfinished messages back in their queues"),
            Err(e) => tracing::error!(
                "could not put unfinished messages back ({e}): they return after the visibility timeout"
            ),
        }
    }

    /// Tells Celery's tooling the node is going away (`worker-offline`).
    pub async fn offline(&self) {
        self.control.offline().await;
    }

    /// Waits up to `limit` for every result handed to the writer to be in Redis.
    pub async fn flush(&self, limit: Duration) -> bool {
        tokio::time::timeout(limit, async {
            while self.pending.load(Ordering::SeqCst) > 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .is_ok()
    }
}

impl Drop for Consumers {
    fn drop(&mut self) {
        for t in self.fetchers.iter().chain(&self.background) {
            t.abort();
        }
    }
}

/// Sleeps `d` unless `stop` is raised first.
async fn pause(stop: &mut watch::Receiver<bool>, d: Duration) {
    let _ = tokio::time::timeout(d, stop.changed()).await;
}

/// Takes messages for pool `pool` while it has idle workers: as many as they can run
/// at once (a batch each, for a pool whose tasks all take batches), never more.
async fn fetch_loop(
    state: Arc<AppState>,
    broker: Arc<Broker>,
    control: Arc<Control>,
    pool: usize,
    mut stop: watch::Receiver<bool>,
) {
    let shared = state.pools[pool].clone();
    let mut status = shared.subscribe();
    let per_worker = if state.registry.pool_batches(pool) {
        shared.config.max_batch_size
    } else {
        1
    };
    let mut blocking = None;
    loop {
        if *stop.borrow() {
            return;
        }
        let s = shared.status();
        // Jobs taken and not yet with a worker count against the idle ones.
        let free = (s.idle * per_worker).saturating_sub(shared.admitted());
        if free == 0 {
            let wait = if shared.admitted() > 0 {
                Duration::from_millis(2)
            } else {
                Duration::from_secs(1)
            };
            tokio::select! {
                _ = status.changed() => {}
                _ = stop.changed() => {}
                _ = tokio::time::sleep(wait) => {}
            }
            continue;
        }
        match broker.fetch(pool, free).await {
            Err(_) => pause(&mut stop, Duration::from_millis(500)).await,
            Ok(taken) if taken.is_empty() => {
                if blocking.is_none() {
                    blocking = broker.blocking_connection().await.ok();
                }
                let waited = match blocking.as_mut() {
                    Some(conn) => broker.wait_for_work(conn, pool).await,
                    None => Err(BrokerError::Down("no connection".into())),
                };
                if waited.is_err() {
                    blocking = None;
                    pause(&mut stop, Duration::from_millis(500)).await;
                }
            }
            Ok(taken) => hand_over(&state, &broker, &control, pool, taken).await,
        }
    }
}

/// Turns taken messages into jobs for the pool actor. A message celeriac cannot run
/// (unknown task, bad input) fails at once, with the reason in its result.
async fn hand_over(
    state: &AppState,
    broker: &Broker,
    control: &Arc<Control>,
    pool: usize,
    taken: Vec<Fetched>,
) {
    let shared = &state.pools[pool];
    let queue = &broker.queues[pool].name;
    let mut jobs = Vec::new();
    let mut events = Vec::new();
    for f in taken {
        let (raw, id, submitted, retries) = match f {
            Fetched::Run {
                raw,
                id,
                submitted,
                retries,
                ..
            } => (raw, id, submitted, retries),
            Fetched::Done { id, status } => {
                tracing::debug!(%queue, %id, %status, "dropped a message whose task is already final");
                continue;
            }
            Fetched::Bad { raw } => {
                let shown: String = raw.chars().take(200).collect();
                tracing::error!(%queue, "dropped a message that is not a Celery task message: {shown}");
                continue;
            }
        };
        let submitted_at =
            humantime::parse_rfc3339_weak(&submitted).unwrap_or_else(|_| SystemTime::now());
        let parsed = celery::parse_message(&raw);
        let (name, arguments, refusal) = match parsed {
            Ok(m) => (m.task, m.arguments, m.refusal),
            Err(e) => ("(unreadable)".to_string(), Err(e), None),
        };
        let reg = state.registry.get(&name).filter(|r| r.pool == pool);
        let task: Arc<str> = reg.map_or_else(|| name.as_str().into(), |r| r.name.clone());
        state
            .outbox
            .take(id, task.clone(), pool, submitted_at, retries);
        let input = bind_input(state, broker, pool, &name, reg, arguments);
        if let Some((TaskState::Revoked, why)) = &refusal {
            tracing::info!(%queue, %id, "{why}");
            let _ = state.store.revoke_with(&id, why.clone());
            continue;
        }
        let input = match refusal {
            Some((_, why)) if input.is_ok() => Err(why),
            _ => input,
        };
        match input {
            Ok(input) => {
                let prepared = reg.and_then(|r| r.factory.prepare(&input));
                let input = Arc::new(input);
                state.outbox.set_input(&id, input.clone());
                events.push((id, task.clone(), input.clone()));
                shared.readmit();
                jobs.push(Job {
                    id,
                    task,
                    input,
                    enqueued: std::time::Instant::now(),
                    prepared,
                });
            }
            Err(why) => {
                tracing::warn!(%queue, %id, "{why}");
                state.store.fail(&id, None, why);
            }
        }
    }
    if !events.is_empty() && control.task_events_on() {
        // In order, off the path to the workers.
        let control = control.clone();
        tokio::spawn(async move {
            for (id, task, input) in events {
                control.task_taken(&id, &task, Some(&input)).await;
            }
        });
    }
    if jobs.is_empty() {
        return;
    }
    if let Err(ids) = state.pool_actors.submit(pool, jobs, &state.store, shared) {
        // The pool is gone (shutting down): give the messages back to the queue.
        state.outbox.detach(&ids);
        if let Err(e) = broker.requeue(&ids).await {
            tracing::error!(
                "could not put {} messages back: {e}; they return after the visibility timeout",
                ids.len()
            );
        }
    }
}

/// The input a taken message asks task `name` to run, bound from its positional and
/// keyword arguments and validated; or why it cannot run here (not registered, served
/// from another queue, unreadable, refused), in Celery's wording where it has one.
fn bind_input(
    state: &AppState,
    broker: &Broker,
    pool: usize,
    name: &str,
    reg: Option<&crate::task::Registered>,
    arguments: Result<celery::Arguments, String>,
) -> Result<serde_json::Value, String> {
    let queue = &broker.queues[pool].name;
    let Some(r) = reg else {
        return Err(match state.registry.get(name) {
            Some(r) => format!(
                "task `{name}` is served from queue `{}` on node {}, not `{queue}`: send it there (send_task(..., queue='{}'))",
                broker.queues[r.pool].name, broker.node, broker.queues[r.pool].name
            ),
            None => format!(
                "{}task `{name}` is not registered on node {}; registered here: {}",
                celery::NOT_REGISTERED,
                broker.node,
                state.registry.names().join(", ")
            ),
        });
    };
    let (args, kwargs) = arguments.map_err(|e| format!("invalid message for `{name}`: {e}"))?;
    let input = r.factory.params().bind(name, &args, &kwargs)?;
    r.factory
        .validate(&input)
        .map_err(|m| format!("invalid input for `{name}`: {m}"))?;
    Ok(input)
}

/// Writes results in the order the store reported them, up to 256 per round trip,
/// retrying (the same batch, in order) until Redis takes them.
async fn writer(
    broker: Arc<Broker>,
    control: Arc<Control>,
    mut rx: mpsc::UnboundedReceiver<TaskView>,
    pending: Arc<AtomicUsize>,
) {
    let mut batch: Vec<TaskView> = Vec::new();
    loop {
        if rx.recv_many(&mut batch, 256).await == 0 {
            return;
        }
        write(&broker, &batch).await;
        control.count_finished(&batch);
        if control.task_events_on() {
            let (control, views) = (control.clone(), batch.clone());
            tokio::spawn(async move {
                for view in &views {
                    control.task_finished(view).await;
                }
            });
        }
        pending.fetch_sub(batch.len(), Ordering::SeqCst);
        batch.clear();
    }
}

/// Writes `batch`, retrying while Redis is unreachable. When Redis refuses it (a value
/// over its limits, a key of the wrong type), each result is tried alone and one that
/// is still refused is logged and left: its message returns after the visibility
/// timeout rather than stopping every later result.
async fn write(broker: &Broker, batch: &[TaskView]) {
    let mut delay = Duration::from_millis(100);
    loop {
        match broker.finish(batch).await {
            Ok(()) => return,
            Err(BrokerError::Refused(e)) if batch.len() == 1 => {
                tracing::error!(task_id = %batch[0].task_id, "result not written, refused by Redis: {e}");
                broker.release_held(&batch[0].task_id);
                return;
            }
            Err(BrokerError::Refused(_)) => {
                for one in batch.chunks(1) {
                    Box::pin(write(broker, one)).await;
                }
                return;
            }
            Err(e) => {
                tracing::warn!(
                    results = batch.len(),
                    "results not written yet ({e}); retrying in {delay:?}"
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Renews leases every quarter of the visibility timeout, restores expired ones every
/// `restore_interval_seconds`, and reads queue depths every second.
async fn housekeeping(broker: Arc<Broker>, pools: Vec<Arc<crate::pool_shared::PoolShared>>) {
    let vt = broker.visibility_timeout();
    let renew_every = (vt / 4).max(Duration::from_millis(50));
    let restore_every = broker.restore_interval();
    let tick = renew_every.min(restore_every).min(Duration::from_secs(1));
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let start = tokio::time::Instant::now();
    // One restore scan at start, as kombu does.
    let (mut renewed, mut restored, mut measured) = (
        start,
        start.checked_sub(restore_every).unwrap_or(start),
        start,
    );
    let mut was_up = true;
    loop {
        interval.tick().await;
        let now = tokio::time::Instant::now();
        // Back from an outage: renew at once, before another node's restore scan sees
        // leases that aged while Redis was away.
        let up = broker.is_up();
        if (up && !was_up) || now - renewed >= renew_every {
            renewed = now;
            let _ = broker.renew().await;
        }
        was_up = up;
        for shared in &pools {
            let back = shared.take_given_back();
            if back.is_empty() {
                continue;
            }
            match broker.requeue(&back).await {
                Ok(n) => {
                    tracing::warn!(pool = %shared.name, requeued = n, "pool has no live worker: its tasks went back to the broker's queue")
                }
                Err(e) => {
                    tracing::error!(pool = %shared.name, "could not put {} tasks back yet ({e}); trying again", back.len());
                    for id in back {
                        shared.give_back(id);
                    }
                }
            }
        }
        if now - restored >= restore_every {
            restored = now;
            let _ = broker.restore_expired().await;
        }
        if now - measured >= Duration::from_secs(1) {
            measured = now;
            for (pool, shared) in pools.iter().enumerate() {
                if let Ok(depth) = broker.depth(pool).await {
                    shared.set_backlog(depth as usize);
                }
            }
        }
    }
}
