//! A pool actor: the one owner of a pool's queue, workers, size and autoscale bounds.
//!
//! - **Queue.** Jobs wait here in submit order. Work goes to a worker only after it said
//!   it is idle (pull, not push), so no job waits behind a busy worker while another sits
//!   idle. Jobs of a task that takes batches go out up to `max_batch_size` at a time; a
//!   short queue may wait up to `max_batch_delay_ms` to fill a batch while another worker
//!   is busy. Revoked jobs are skipped.
//! - **Workers.** Spawned linked to this actor, one per slot. The pool remembers what each
//!   worker holds until it reports `Ready` (acks-late). A worker that is lost (a crash, a
//!   child process that died, or a time limit that abandons its thread or kills its
//!   child) is replaced at once; what it held is re-queued as
//!   `RETRY` while `max_retries` allows, else failed with "worker lost". A task that
//!   panics never costs a worker: the worker fails that task and goes on.
//! - **Failed starts.** A slot whose worker fails to start tries again after an
//!   exponential back-off, inside a restart budget per pool; past the budget the slot is
//!   parked until the pool is resized. When every slot is parked, queued tasks fail with
//!   "no live worker" and submits get 503.
//! - **Size.** Grow starts workers on new slots (a CPU model is already loaded: this costs
//!   a thread and a task instance; a CUDA worker loads its own copy; for kind
//!   `processes`, a child process that builds its own). A `threads` worker whose tasks
//!   warm up does so on its own thread after it started, and takes work once it sends
//!   `Warmed`. Shrink removes parked and waiting slots first, then warming and idle
//!   workers, then busy ones, which finish what they hold and stop. Nothing queued or
//!   running is dropped. The autoscaler ([`super::autoscale`]) runs on the
//!   pool's tick whenever the pool has bounds, from the file or from the admin API.
//!
//! After every message the actor publishes a [`PoolStatus`] snapshot; the HTTP side,
//! readiness and the metrics read only that.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};

use super::autoscale::{Autoscaler, Load};
use super::batching::BatchRules;
use super::protocol::{
    Inbox, Job, PoolMessage, Resize, ResizeError, StartedJob, WorkerId, WorkerMessage,
};
use super::restarts::{RestartBudget, Retry};
use super::worker::{Worker, WorkerArgs};
use crate::config::{AutoscaleConfig, PoolKind, SupervisorConfig, secs};
use crate::outbox::Outbox;
use crate::pool_shared::{PoolShared, PoolStatus};
use crate::store::{Requeue, TaskStore};
use crate::task::{Registered, WorkerContext};

/// Worker ids, unique for the life of the process.
static NEXT_WORKER: AtomicU64 = AtomicU64::new(1);

/// The name a worker actor is registered under (`ractor::registry`), for operators'
/// tooling and tests.
pub fn worker_name(pool: &str, worker: WorkerId) -> String {
    format!("celeriac-worker/{pool}/{worker}")
}

/// The pool actor.
pub struct Pool;

/// What a pool actor starts with.
pub struct PoolArgs {
    /// The pool's settings and where its status is published.
    pub shared: Arc<PoolShared>,
    /// Back-off and budget for failed starts; the time-limit check interval (the
    /// `[supervisor]` settings).
    pub supervision: SupervisorConfig,
    /// The tasks routed to this pool.
    pub tasks: Vec<Registered>,
    /// Task records.
    pub store: Arc<TaskStore>,
    /// The tasks taken from a broker (given back when no worker can run them).
    pub outbox: Arc<Outbox>,
    /// The whole configuration, which `processes` workers hand to their children.
    pub config: Arc<crate::config::Config>,
}

struct Running {
    jobs: Vec<StartedJob>,
    since: Instant,
}

struct WorkerEntry {
    /// `None` once a shrink retired it (its slot is gone).
    slot: Option<usize>,
    inbox: Inbox,
    actor: ActorRef<WorkerMessage>,
    running: Option<Running>,
    /// Started and warming its tasks up (kind `threads`): it takes work once it sends
    /// `Warmed`.
    warming: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Running(WorkerId),
    /// Its worker failed to start; a `Restart` is scheduled.
    Waiting,
    /// Its worker failed to start and the budget is spent.
    Parked,
}

struct Slot {
    state: SlotState,
    /// Consecutive failed starts, for the back-off.
    failures: u32,
    /// The tag of the `Restart` it waits for.
    generation: u64,
}

/// Why a worker left, for logs and the restart metric's `reason`.
#[derive(Debug, Clone, Copy)]
enum Loss {
    TimeLimit,
    Crash,
}

/// A pool actor's state.
pub struct PoolState {
    shared: Arc<PoolShared>,
    tasks: Vec<Registered>,
    store: Arc<TaskStore>,
    outbox: Arc<Outbox>,
    config: Arc<crate::config::Config>,
    myself: ActorRef<PoolMessage>,
    /// How batches are formed.
    batch_rules: BatchRules,
    /// Test hook: tasks whose jobs make this actor panic (`debug.panic_pool`).
    breakers: HashSet<Arc<str>>,
    queue: VecDeque<Job>,
    /// Idle workers; the most recently idle is used first (warm caches).
    idle: Vec<WorkerId>,
    workers: HashMap<WorkerId, WorkerEntry>,
    /// Linked worker actors not yet seen exiting.
    actors: HashMap<ActorId, WorkerId>,
    slots: BTreeMap<usize, Slot>,
    /// Failed starts within the budget window, and the back-off.
    restarts: RestartBudget,
    /// Bounds and tuning, when autoscaling.
    autoscale: Option<AutoscaleConfig>,
    autoscaler: Autoscaler,
    last_autoscale: Instant,
    flush_pending: bool,
    shutting_down: bool,
    /// Queue places to give back once the status is published ([`PoolState::settle`]).
    released: usize,
    /// Tags each scheduled `Restart`, so a stale one is ignored.
    next_generation: u64,
    oldest_wait_ms: u64,
    replaced: u64,
    panics: u64,
    failed_starts_total: u64,
}

impl Actor for Pool {
    type Msg = PoolMessage;
    type State = PoolState;
    type Arguments = PoolArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: PoolArgs,
    ) -> Result<PoolState, ActorProcessingErr> {
        let PoolArgs {
            shared,
            supervision,
            tasks,
            store,
            outbox,
            config,
        } = args;
        let size = shared.status().size;
        myself.send_interval(
            Duration::from_millis(supervision.time_limit_check_ms),
            || PoolMessage::Tick,
        );
        let mut state = PoolState {
            batch_rules: BatchRules::new(&shared.config, crate::task::batching(&tasks)),
            breakers: tasks
                .iter()
                .filter(|t| t.factory.breaks_pool())
                .map(|t| t.name.clone())
                .collect(),
            autoscale: shared.config.autoscale.clone(),
            shared,
            tasks,
            store,
            outbox,
            config,
            myself,
            queue: VecDeque::new(),
            idle: Vec::new(),
            workers: HashMap::new(),
            actors: HashMap::new(),
            slots: BTreeMap::new(),
            restarts: RestartBudget::new(&supervision),
            autoscaler: Autoscaler::default(),
            last_autoscale: Instant::now(),
            flush_pending: false,
            shutting_down: false,
            released: 0,
            next_generation: 0,
            oldest_wait_ms: 0,
            replaced: 0,
            panics: 0,
            failed_starts_total: 0,
        };
        let slots: Vec<usize> = (0..size).collect();
        for outcome in state.spawn_workers(&slots).await {
            outcome.map_err(|e| {
                format!("pool `{}`: worker failed to start: {e}", state.shared.name)
            })?;
        }
        state.settle();
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: PoolMessage,
        state: &mut PoolState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            PoolMessage::Submit(jobs) => {
                if let Some(job) = jobs.iter().find(|j| state.breakers.contains(&j.task)) {
                    let why = format!(
                        "debug.panic_pool: making pool `{}`'s actor panic as asked (a test hook)",
                        state.shared.name
                    );
                    // Its own job is final first, so that with a broker it is not handed
                    // back (and run again) with the pool's other tasks.
                    state.store.fail(&job.id, None, why.clone());
                    state.shared.release(1);
                    panic!("{why}");
                }
                // A dead pool's queue is failed in `settle`.
                state.queue.extend(jobs);
                state.dispatch();
            }
            PoolMessage::Ready { worker, panics } => state.ready(worker, panics),
            PoolMessage::Warmed { worker } => state.warmed(worker),
            PoolMessage::Resize { change, reply } => {
                let outcome = state.resize(change).await;
                // The caller reads the published status: publish before answering.
                state.settle();
                let _ = reply.send(outcome);
            }
            PoolMessage::Restart { slot, generation } => {
                let waiting = state
                    .slots
                    .get(&slot)
                    .is_some_and(|s| s.state == SlotState::Waiting && s.generation == generation);
                if waiting && !state.shutting_down {
                    state.start_or_retry(slot).await;
                    state.dispatch();
                }
            }
            PoolMessage::Tick => state.tick().await,
            PoolMessage::Flush => {
                state.flush_pending = false;
                state.dispatch();
            }
            PoolMessage::ShuttingDown => state.shutting_down = true,
        }
        state.settle();
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut PoolState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, why) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.unwrap_or_else(|| "stopped".into()))
            }
            _ => return Ok(()),
        };
        // Workers this pool let go itself (shrink, time limit) are no longer in
        // `workers`: their exit is expected.
        if let Some(worker) = state.actors.remove(&cell.get_id())
            && state.workers.contains_key(&worker)
        {
            state.lost(worker, Loss::Crash, &why).await;
            state.dispatch();
        }
        state.settle();
        Ok(())
    }
}

impl PoolState {
    fn name(&self) -> &str {
        &self.shared.name
    }

    /// The state as the rest of the process sees it.
    fn status(&self) -> PoolStatus {
        let mut s = PoolStatus {
            size: self.slots.len(),
            idle: self.idle.len(),
            queued: self.queue.len(),
            oldest_wait_ms: self.oldest_wait_ms,
            autoscale: self.autoscale.as_ref().map(|a| (a.min, a.max)),
            replaced: self.replaced,
            panics: self.panics,
            failed_starts: self.failed_starts_total,
            ..PoolStatus::default()
        };
        for slot in self.slots.values() {
            match slot.state {
                SlotState::Running(_) => {}
                SlotState::Waiting => s.starting += 1,
                SlotState::Parked => s.parked += 1,
            }
        }
        for w in self.workers.values() {
            match (w.slot, &w.running) {
                (None, _) => s.stopping += 1,
                (Some(_), Some(_)) => s.busy += 1,
                (Some(_), None) if w.warming => s.warming += 1,
                (Some(_), None) => {}
            }
        }
        s
    }

    /// Ends every message: fails the queue of a pool that has become dead, publishes
    /// the status, and only then gives back the queue places of jobs that left the
    /// queue, so a reader never sees a job neither admitted nor busy (the drain check).
    fn settle(&mut self) {
        let mut status = self.status();
        if status.queued > 0 && status.is_dead() {
            self.fail_queued();
            status.queued = 0;
        }
        self.shared.publish(status);
        let released = std::mem::take(&mut self.released);
        if released > 0 {
            self.shared.release(released);
        }
    }

    /// Spawns a worker on `slot`, linked to this actor; it is idle at once.
    async fn spawn_worker(&mut self, slot: usize) -> Result<(), String> {
        self.spawn_workers(&[slot])
            .await
            .pop()
            .expect("one outcome per slot")
    }

    /// Spawns a worker on each of `slots` (free ones), linked to this actor, all at once:
    /// their starts overlap (for kind `processes`, a start is a child process building
    /// and warming up its tasks). Each started worker is idle at once, except a
    /// `threads` worker whose tasks warm up: it warms up on its own thread, off this
    /// actor's path, and is idle once it sends `Warmed`. One outcome per slot, in order.
    async fn spawn_workers(&mut self, slots: &[usize]) -> Vec<Result<(), String>> {
        let config = &self.shared.config;
        let warms = config.kind == PoolKind::Threads
            && config.warm_up
            && self.tasks.iter().any(|t| t.factory.warms_up());
        let mut started = Vec::new();
        let mut spawns = Vec::new();
        for &slot in slots {
            let id = NEXT_WORKER.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = match config.kind {
                PoolKind::Threads | PoolKind::Processes => {
                    let (tx, rx) = mpsc::channel();
                    (Some(tx), Some(rx))
                }
                PoolKind::Solo => (None, None),
            };
            spawns.push(Actor::spawn_linked(
                Some(worker_name(self.name(), id)),
                Worker,
                WorkerArgs {
                    id,
                    shared: self.shared.clone(),
                    context: WorkerContext {
                        device: config.device_for(slot),
                        intra_op_threads: config.threads_per_worker(),
                        name: format!("{}-{id}", self.shared.name),
                        pool: self.shared.name.clone(),
                        nice: config.nice,
                        warm_up: config.warm_up,
                        max_batch_size: config.max_batch_size,
                        max_batch_tokens: config.max_batch_tokens,
                    },
                    tasks: self.tasks.clone(),
                    store: self.store.clone(),
                    pool: self.myself.clone(),
                    batches: rx,
                    config: self.config.clone(),
                },
                self.myself.get_cell(),
            ));
            started.push((slot, id, tx));
        }
        let spawned = futures_util::future::join_all(spawns).await;
        let mut outcomes = Vec::with_capacity(slots.len());
        for ((slot, id, tx), spawned) in started.into_iter().zip(spawned) {
            let actor = match spawned {
                Ok((actor, _)) => actor,
                Err(e) => {
                    self.failed_starts_total += 1;
                    outcomes.push(Err(e.to_string()));
                    continue;
                }
            };
            let inbox = match tx {
                Some(tx) => Inbox::Thread(tx),
                None => Inbox::Inline(actor.clone()),
            };
            self.actors.insert(actor.get_id(), id);
            self.workers.insert(
                id,
                WorkerEntry {
                    slot: Some(slot),
                    inbox,
                    actor,
                    running: None,
                    warming: warms,
                },
            );
            // A warming worker's start counts as failed if its warm-up fails: keep the
            // slot's failures until it is warm.
            let failures = match warms {
                true => self.slots.get(&slot).map_or(0, |s| s.failures),
                false => 0,
            };
            self.slots.insert(
                slot,
                Slot {
                    state: SlotState::Running(id),
                    failures,
                    generation: 0,
                },
            );
            if !warms {
                self.idle.push(id);
            }
            outcomes.push(Ok(()));
        }
        outcomes
    }

    /// Starts a worker on a slot that has none; on failure, schedules another try after
    /// the back-off, or parks the slot when the budget is spent.
    async fn start_or_retry(&mut self, slot: usize) {
        let failures = self.slots.get(&slot).map_or(0, |s| s.failures);
        if let Err(e) = self.spawn_worker(slot).await {
            tracing::error!(pool = %self.name(), slot, "worker failed to start: {e}");
            self.schedule_retry(slot, failures + 1);
        }
    }

    /// After the `failures`-th consecutive failed start of `slot`: another try after
    /// the back-off, or the slot parked when the pool's budget is spent.
    fn schedule_retry(&mut self, slot: usize, failures: u32) {
        match self.restarts.after_failure(failures, Instant::now()) {
            Retry::After(delay) => self.restart_after(slot, failures, delay),
            Retry::Park { failed, window } => {
                tracing::error!(
                    pool = %self.shared.name,
                    slot,
                    "restart budget spent ({failed} failed starts in {window:?}; supervisor.restart_budget): slot parked until the pool is resized",
                );
                self.slots.insert(
                    slot,
                    Slot {
                        state: SlotState::Parked,
                        failures,
                        generation: 0,
                    },
                );
            }
        }
    }

    /// Puts `slot` in `Waiting` and schedules its `Restart` after `delay`; any
    /// `Restart` scheduled for it before becomes stale.
    fn restart_after(&mut self, slot: usize, failures: u32, delay: Duration) {
        self.next_generation += 1;
        let generation = self.next_generation;
        self.slots.insert(
            slot,
            Slot {
                state: SlotState::Waiting,
                failures,
                generation,
            },
        );
        self.myself
            .send_after(delay, move || PoolMessage::Restart { slot, generation });
    }

    /// A warming worker is warm: it takes work from now on (or stops, if a shrink
    /// retired it meanwhile).
    fn warmed(&mut self, worker: WorkerId) {
        let Some(entry) = self.workers.get_mut(&worker) else {
            return;
        };
        if !std::mem::take(&mut entry.warming) {
            return;
        }
        match entry.slot {
            None => {
                let entry = self.workers.remove(&worker).expect("just found");
                entry.actor.stop(Some("scaled down".into()));
            }
            Some(slot) => {
                if let Some(s) = self.slots.get_mut(&slot) {
                    s.failures = 0;
                }
                self.idle.push(worker);
                self.dispatch();
            }
        }
    }

    /// A worker finished its batch.
    fn ready(&mut self, worker: WorkerId, panics: u32) {
        if panics > 0 {
            self.panics += u64::from(panics);
            crate::metrics::restarted(&self.shared.name, crate::metrics::Restart::Panic, panics);
        }
        // Unknown ids are workers already written off (time limit): ignore them.
        let Some(entry) = self.workers.get_mut(&worker) else {
            return;
        };
        if entry.running.take().is_none() {
            return;
        }
        if entry.slot.is_none() {
            let entry = self.workers.remove(&worker).expect("just found");
            entry.actor.stop(Some("scaled down".into()));
        } else {
            self.idle.push(worker);
            self.dispatch();
        }
    }

    /// A worker is gone while the pool still counted on it: settle what it held and,
    /// unless it was retiring, replace it at once.
    async fn lost(&mut self, worker: WorkerId, loss: Loss, why: &str) {
        let Some(entry) = self.workers.remove(&worker) else {
            return;
        };
        self.idle.retain(|w| *w != worker);
        if let Some(running) = entry.running {
            match loss {
                Loss::TimeLimit => {
                    for started in &running.jobs {
                        self.store
                            .fail(&started.job.id, Some(started.attempt), why.to_string());
                    }
                }
                Loss::Crash => self.requeue_or_fail(running.jobs, why),
            }
        }
        let Some(slot) = entry.slot else {
            tracing::warn!(pool = %self.shared.name, worker, ?loss, "worker lost: {why}");
            return;
        };
        if self.shutting_down {
            self.slots.remove(&slot);
            return;
        }
        if entry.warming {
            // Its warm-up failed: a failed start, under the back-off and the budget.
            tracing::error!(pool = %self.name(), slot, "worker failed to start: {why}");
            self.failed_starts_total += 1;
            let failures = self.slots.get(&slot).map_or(0, |s| s.failures);
            self.schedule_retry(slot, failures + 1);
            return;
        }
        tracing::warn!(pool = %self.shared.name, worker, ?loss, "worker lost: {why}");
        self.replaced += 1;
        let reason = match loss {
            Loss::TimeLimit => crate::metrics::Restart::TimeLimit,
            Loss::Crash => crate::metrics::Restart::Lost,
        };
        crate::metrics::restarted(&self.shared.name, reason, 1);
        self.start_or_retry(slot).await;
    }

    /// Jobs whose worker was lost: back to the front of the queue as `RETRY` while
    /// `max_retries` allows, else `FAILURE` with "worker lost".
    fn requeue_or_fail(&mut self, jobs: Vec<StartedJob>, why: &str) {
        let max_retries = self.shared.config.max_retries;
        for started in jobs.into_iter().rev() {
            let (outcome, _) =
                self.store
                    .requeue_or_fail(&started.job.id, started.attempt, max_retries, why);
            if outcome == Requeue::Retry {
                self.shared.readmit();
                self.queue.push_front(started.job);
            }
        }
    }

    /// Hands queued jobs to idle workers until one side runs out. A job of a task that
    /// takes batches goes out with up to `max_batch_size - 1` more jobs of the same task
    /// from the front of the queue, as long as their tokens stay within
    /// `max_batch_tokens` (when set; the first job always goes). While the queue is
    /// shorter than a batch and another worker is busy, it waits up to
    /// `max_batch_delay_ms` for the batch to fill.
    fn dispatch(&mut self) {
        while !self.queue.is_empty() {
            let Some(&worker) = self.idle.last() else {
                break;
            };
            let busy = self.workers.values().any(|w| w.running.is_some());
            if let Some(wait) = self.batch_rules.hold(&self.queue, busy, Instant::now()) {
                if !self.flush_pending {
                    self.flush_pending = true;
                    self.myself.send_after(wait, || PoolMessage::Flush);
                }
                break;
            }
            let mut batch: Vec<StartedJob> = Vec::new();
            let mut tokens = 0usize;
            while let Some(job) = self.queue.front() {
                let first = batch.first().map(|s| &*s.job.task);
                if !self.batch_rules.fits(first, batch.len(), tokens, job) {
                    break;
                }
                let job = self.queue.pop_front().expect("peeked");
                self.released += 1;
                // Revoked (or expired) while queued: skip it.
                if let Some((attempt, waited)) = self.store.start(&job.id) {
                    crate::metrics::started(&self.shared.name, &job.task, waited);
                    tokens = tokens.saturating_add(job.tokens());
                    batch.push(StartedJob { job, attempt });
                }
            }
            if batch.is_empty() {
                continue;
            }
            self.idle.pop();
            let entry = self
                .workers
                .get_mut(&worker)
                .expect("idle workers are registered. This is a bug.");
            entry.running = Some(Running {
                jobs: batch.clone(),
                since: Instant::now(),
            });
            if entry.inbox.send(batch).is_err() {
                // Its thread is gone. Settle what it was handed now; stopping the actor
                // brings its exit through `lost`, which replaces it.
                if let Some(running) = entry.running.take() {
                    entry.actor.stop(Some("worker thread exited".into()));
                    self.requeue_or_fail(running.jobs, "worker thread exited");
                }
            }
        }
    }

    fn fail_queued(&mut self) {
        let why = format!(
            "no live worker in pool `{}`: its workers fail to start and the restart budget is spent",
            self.shared.name
        );
        for job in self.queue.drain(..) {
            self.released += 1;
            // A broker's task goes back to its queue, for a node that can run it.
            if self.outbox.give_back(&job.id) {
                self.shared.give_back(job.id);
                continue;
            }
            self.store.fail(&job.id, None, why.clone());
        }
    }

    /// Periodic: time limits, the oldest job's age, the autoscaler.
    async fn tick(&mut self) {
        let now = Instant::now();
        let limit = secs(self.shared.config.time_limit_seconds);
        let over: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|(_, e)| e.running.as_ref().is_some_and(|r| now - r.since > limit))
            .map(|(w, _)| *w)
            .collect();
        for worker in over {
            let why = format!(
                "time limit exceeded: ran longer than {limit:?} (pools.{}.time_limit_seconds)",
                self.shared.name
            );
            if let Some(entry) = self.workers.get(&worker) {
                entry.actor.stop(Some("time limit exceeded".into()));
            }
            self.lost(worker, Loss::TimeLimit, &why).await;
        }
        self.oldest_wait_ms = self
            .queue
            .front()
            .map_or(0, |j| j.enqueued.elapsed().as_millis() as u64);
        if let Some(tuning) = self.autoscale.clone()
            && now - self.last_autoscale >= Duration::from_millis(tuning.check_interval_ms)
            && !self.shutting_down
        {
            self.last_autoscale = now;
            let status = self.status();
            let target = self.autoscaler.decide(
                (tuning.min, tuning.max),
                &tuning,
                Load {
                    size: status.size,
                    // With a broker the work waits in Redis, not here.
                    queued: status.queued + self.shared.backlog(),
                    oldest_wait: Duration::from_millis(status.oldest_wait_ms),
                    idle: status.idle,
                },
                now,
            );
            if target != status.size {
                tracing::info!(pool = %self.shared.name, from = status.size, to = target, queued = status.queued, "autoscaling");
                if let Err(e) = self.set_size(target).await {
                    tracing::error!(pool = %self.shared.name, "autoscale failed: {e}");
                }
            }
        }
        self.dispatch();
    }

    async fn resize(&mut self, change: Resize) -> Result<(), ResizeError> {
        let ceiling = self.shared.config.ceiling();
        let current = self.slots.len();
        let name = &self.shared.name;
        let target = match change {
            Resize::Concurrency(n) => {
                if n == 0 || n > ceiling {
                    return Err(ResizeError::Invalid(format!(
                        "concurrency must be between 1 and {ceiling} (pools.{name}.max_concurrency), got {n}"
                    )));
                }
                if let Some(a) = &self.autoscale
                    && !(a.min..=a.max).contains(&n)
                {
                    return Err(ResizeError::Invalid(format!(
                        "pool `{name}` autoscales between {} and {}: set a concurrency within them, or change the bounds first",
                        a.min, a.max
                    )));
                }
                n
            }
            Resize::Autoscale(Some(update)) => {
                let (min, max) = (update.min, update.max);
                if min == 0 || min > max || max > ceiling {
                    return Err(ResizeError::Invalid(format!(
                        "autoscale needs 1 <= min <= max <= {ceiling} (pools.{name}.max_concurrency), got min {min} max {max}"
                    )));
                }
                // The file's tuning when it has some, else the defaults; then the
                // request's.
                let mut a = self
                    .shared
                    .config
                    .autoscale
                    .clone()
                    .unwrap_or_else(|| AutoscaleConfig::with_bounds(min, max));
                (a.min, a.max) = (min, max);
                if let Some(v) = update.scale_up_queue_depth {
                    a.scale_up_queue_depth = v;
                }
                if let Some(v) = update.scale_up_wait_ms {
                    a.scale_up_wait_ms = v;
                }
                if let Some(v) = update.scale_up_cooldown_seconds {
                    a.scale_up_cooldown_seconds = v;
                }
                if let Some(v) = update.scale_down_idle_seconds {
                    a.scale_down_idle_seconds = v;
                }
                if let Some(v) = update.check_interval_ms {
                    a.check_interval_ms = v;
                }
                a.check("autoscale", ceiling)
                    .map_err(|e| ResizeError::Invalid(e.to_string()))?;
                self.autoscale = Some(a);
                self.autoscaler = Autoscaler::default();
                current.clamp(min, max)
            }
            Resize::Autoscale(None) => {
                self.autoscale = None;
                current
            }
        };
        let outcome = self.set_size(target).await;
        self.unpark();
        outcome
    }

    /// After an operator's resize: parked slots that remain get a fresh start, and the
    /// budget a fresh window (the operator's word that the cause is fixed). The
    /// autoscaler never does this, so it cannot defeat the budget.
    fn unpark(&mut self) {
        let parked: Vec<usize> = self
            .slots
            .iter()
            .filter(|(_, s)| s.state == SlotState::Parked)
            .map(|(k, _)| *k)
            .collect();
        if parked.is_empty() {
            return;
        }
        self.restarts.reset();
        for slot in parked {
            self.restart_after(slot, 0, Duration::ZERO);
        }
    }

    /// Grows or shrinks the pool to `target` slots.
    async fn set_size(&mut self, target: usize) -> Result<(), ResizeError> {
        let current = self.slots.len();
        if target > current {
            let free: Vec<usize> = (0..)
                .filter(|s| !self.slots.contains_key(s))
                .take(target - current)
                .collect();
            let outcomes = self.spawn_workers(&free).await;
            self.dispatch();
            if let Some(Err(e)) = outcomes.into_iter().find(Result::is_err) {
                return Err(ResizeError::Spawn(e));
            }
        } else if target < current {
            let mut excess = current - target;
            // Parked and waiting slots go first: nothing runs on them.
            for wanted in [SlotState::Parked, SlotState::Waiting] {
                let drop: Vec<usize> = self
                    .slots
                    .iter()
                    .rev()
                    .filter(|(_, s)| s.state == wanted)
                    .map(|(k, _)| *k)
                    .take(excess)
                    .collect();
                for k in drop {
                    self.slots.remove(&k);
                    excess -= 1;
                }
            }
            // Then warming workers, which take no work yet and stop at once.
            let warming: Vec<WorkerId> = self
                .workers
                .iter()
                .filter(|(_, e)| e.warming && e.slot.is_some())
                .map(|(w, _)| *w)
                .take(excess)
                .collect();
            for w in warming {
                let entry = self.workers.remove(&w).expect("listed above");
                if let Some(slot) = entry.slot {
                    self.slots.remove(&slot);
                }
                entry.actor.stop(Some("scaled down".into()));
                excess -= 1;
            }
            // Then idle workers, which stop at once.
            while excess > 0 {
                let Some(w) = self.idle.pop() else { break };
                let entry = self
                    .workers
                    .remove(&w)
                    .expect("idle workers are registered. This is a bug.");
                if let Some(slot) = entry.slot {
                    self.slots.remove(&slot);
                }
                entry.actor.stop(Some("scaled down".into()));
                excess -= 1;
            }
            // Then busy ones, newest first: they stop once they report what they hold.
            let mut busy: Vec<WorkerId> = self
                .workers
                .iter()
                .filter(|(_, e)| e.slot.is_some() && e.running.is_some())
                .map(|(w, _)| *w)
                .collect();
            busy.sort_unstable_by(|a, b| b.cmp(a));
            for w in busy.into_iter().take(excess) {
                let e = self.workers.get_mut(&w).expect("listed above");
                if let Some(slot) = e.slot.take() {
                    self.slots.remove(&slot);
                }
            }
        }
        tracing::info!(pool = %self.shared.name, size = self.slots.len(), "pool resized");
        Ok(())
    }
}
