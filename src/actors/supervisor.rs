//! The supervisor: owns the tree, rebuilds lost workers with back-off inside a budget,
//! applies resizes (admin API and autoscaler).
//!
//! Each pool has numbered slots; a slot is running a worker, waiting out a restart
//! back-off, or parked (budget spent). The pool's size is its number of slots. Grow adds
//! slots and starts workers on them (the model is already loaded: this costs a thread
//! and a task instance). Shrink removes parked and restarting slots first, then asks the
//! dispatcher to retire running workers, idle ones first; a retired worker finishes what
//! it holds, takes nothing new, then stops. Nothing queued or running is dropped.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent,
};

use super::WorkerId;
use super::dispatcher::{Dispatcher, DispatcherArgs, DispatcherMessage};
use super::worker::{Worker, WorkerArgs};
use crate::config::{SupervisorConfig, secs};
use crate::pool::PoolShared;
use crate::store::TaskStore;
use crate::task::{Registry, WorkerContext};

/// The supervisor actor.
pub struct Supervisor;

/// What the supervisor starts with.
pub struct SupervisorArgs {
    /// Restart policy.
    pub config: SupervisorConfig,
    /// Every pool, by index.
    pub pools: Vec<Arc<PoolShared>>,
    /// Registered tasks.
    pub registry: Arc<Registry>,
    /// Task records.
    pub store: Arc<TaskStore>,
}

/// A change of a pool's size or autoscale bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resize {
    /// Set the size; within the autoscale bounds when autoscaling.
    Concurrency(usize),
    /// Autoscale between bounds (the size is clamped into them at once), or stop
    /// autoscaling (`None`) at the current size.
    Autoscale(Option<(usize, usize)>),
}

/// Why a resize was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ResizeError {
    /// The request is out of range; the message says which bound.
    #[error("{0}")]
    Invalid(String),
    /// A new worker failed to start.
    #[error("a new worker failed to start: {0}")]
    Spawn(String),
}

/// Messages to the supervisor.
pub enum SupervisorMessage {
    /// Rebuild a lost worker's slot (sent to itself after the back-off).
    Restart {
        /// Pool index.
        pool: usize,
        /// Slot within the pool.
        slot: usize,
    },
    /// Stop restarting workers: the process is shutting down.
    ShuttingDown,
    /// Asks for the dispatcher, which submits go to.
    Dispatcher(RpcReplyPort<ActorRef<DispatcherMessage>>),
    /// Change a pool's size or bounds; answers once new workers run and retired ones
    /// were told to stop.
    Resize {
        /// Pool index.
        pool: usize,
        /// The change.
        change: Resize,
        /// The outcome.
        reply: RpcReplyPort<Result<(), ResizeError>>,
    },
    /// Periodic: let the autoscaler look at the pools.
    Autoscale,
}

struct Child {
    worker: WorkerId,
    pool: usize,
    slot: usize,
    started: Instant,
    /// Chosen by a shrink: its exit is expected and not restarted.
    retiring: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Running(WorkerId),
    Restarting,
    Parked,
}

struct Slot {
    state: SlotState,
    /// Consecutive losses, for the back-off.
    failures: u32,
}

/// Autoscaler memory per pool.
#[derive(Default)]
struct ScaleState {
    last_grow: Option<Instant>,
    /// Since when the pool has had an idle worker and an empty queue, unbroken.
    idle_since: Option<Instant>,
}

/// The supervisor's state.
pub struct SupervisorState {
    args: SupervisorArgs,
    dispatcher: ActorRef<DispatcherMessage>,
    children: HashMap<ActorId, Child>,
    slots: Vec<BTreeMap<usize, Slot>>,
    /// Restart times per pool within the budget window.
    restarts: Vec<VecDeque<Instant>>,
    scale: Vec<ScaleState>,
    next_worker: WorkerId,
    shutting_down: bool,
}

impl Actor for Supervisor {
    type Msg = SupervisorMessage;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let (dispatcher, _) = Actor::spawn_linked(
            None,
            Dispatcher,
            DispatcherArgs {
                pools: args.pools.clone(),
                store: args.store.clone(),
                time_limit_check: Duration::from_millis(args.config.time_limit_check_ms),
                batching: (0..args.pools.len())
                    .map(|p| args.registry.batching_tasks(p))
                    .collect(),
            },
            myself.get_cell(),
        )
        .await?;
        let mut state = SupervisorState {
            slots: args.pools.iter().map(|_| BTreeMap::new()).collect(),
            restarts: args.pools.iter().map(|_| VecDeque::new()).collect(),
            scale: args.pools.iter().map(|_| ScaleState::default()).collect(),
            args,
            dispatcher,
            children: HashMap::new(),
            next_worker: 1,
            shutting_down: false,
        };
        let mut autoscale_every: Option<u64> = None;
        for pool in 0..state.args.pools.len() {
            let shared = state.args.pools[pool].clone();
            if let Some(a) = &shared.config.autoscale {
                autoscale_every = Some(
                    autoscale_every.map_or(a.check_interval_ms, |m| m.min(a.check_interval_ms)),
                );
            }
            for slot in 0..shared.target.load(Ordering::Acquire) {
                state
                    .spawn_worker(myself.get_cell(), pool, slot)
                    .await
                    .map_err(|e| format!("pool `{}`: worker failed to start: {e}", shared.name))?;
            }
        }
        if let Some(ms) = autoscale_every {
            myself.send_interval(Duration::from_millis(ms), || SupervisorMessage::Autoscale);
        }
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: SupervisorMessage,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMessage::ShuttingDown => state.shutting_down = true,
            SupervisorMessage::Dispatcher(reply) => {
                let _ = reply.send(state.dispatcher.clone());
            }
            SupervisorMessage::Restart { pool, slot } => {
                // A shrink may have removed the slot meanwhile.
                let waiting = state.slots[pool]
                    .get(&slot)
                    .is_some_and(|s| s.state == SlotState::Restarting);
                if state.shutting_down || !waiting {
                    return Ok(());
                }
                let shared = &state.args.pools[pool];
                shared.restarts.fetch_add(1, Ordering::AcqRel);
                crate::metrics::restarted(&shared.name);
                if let Err(e) = state.spawn_worker(myself.get_cell(), pool, slot).await {
                    tracing::error!(pool = %state.args.pools[pool].name, slot, "worker failed to restart: {e}");
                    state.schedule_restart(&myself, pool, slot, None);
                }
            }
            SupervisorMessage::Resize {
                pool,
                change,
                reply,
            } => {
                let outcome = state.resize(myself.get_cell(), pool, change).await;
                let _ = reply.send(outcome);
            }
            SupervisorMessage::Autoscale => state.autoscale(myself.get_cell()).await,
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, why) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.unwrap_or_else(|| "stopped".into()))
            }
            _ => return Ok(()),
        };
        if cell.get_id() == state.dispatcher.get_id() {
            return Err(format!("dispatcher exited: {why}").into());
        }
        let Some(child) = state.children.remove(&cell.get_id()) else {
            return Ok(());
        };
        // Re-queue (or fail) whatever it held. A no-op for a worker the dispatcher
        // already let go (shrink, time limit).
        let _ = state.dispatcher.cast(DispatcherMessage::WorkerLost {
            worker: child.worker,
            why: why.clone(),
        });
        if state.shutting_down || child.retiring {
            return Ok(());
        }
        tracing::warn!(
            pool = %state.args.pools[child.pool].name,
            worker = child.worker,
            "worker lost: {why}"
        );
        state.schedule_restart(&myself, child.pool, child.slot, Some(child.started));
        Ok(())
    }
}

impl SupervisorState {
    async fn spawn_worker(
        &mut self,
        supervisor: ActorCell,
        pool: usize,
        slot: usize,
    ) -> Result<(), ActorProcessingErr> {
        let id = self.next_worker;
        self.next_worker += 1;
        let shared = self.args.pools[pool].clone();
        shared.starting.fetch_add(1, Ordering::AcqRel);
        let spawned = Actor::spawn_linked(
            None,
            Worker,
            WorkerArgs {
                id,
                pool,
                shared: shared.clone(),
                kind: shared.config.kind,
                context: WorkerContext {
                    device: shared.config.device_for(slot),
                    intra_op_threads: shared.config.threads_per_worker(),
                    name: format!("{}-{id}", shared.name),
                    nice: shared.config.nice,
                },
                tasks: self.args.registry.for_pool(pool),
                store: self.args.store.clone(),
                dispatcher: self.dispatcher.clone(),
            },
            supervisor,
        )
        .await;
        shared.starting.fetch_sub(1, Ordering::AcqRel);
        let (actor, _) = spawned?;
        self.children.insert(
            actor.get_id(),
            Child {
                worker: id,
                pool,
                slot,
                started: Instant::now(),
                retiring: false,
            },
        );
        let entry = self.slots[pool].entry(slot).or_insert(Slot {
            state: SlotState::Running(id),
            failures: 0,
        });
        entry.state = SlotState::Running(id);
        Ok(())
    }

    /// Restarts a slot after an exponential back-off, unless the pool's restart budget
    /// is spent, in which case the slot is parked.
    fn schedule_restart(
        &mut self,
        myself: &ActorRef<SupervisorMessage>,
        pool: usize,
        slot: usize,
        lived_since: Option<Instant>,
    ) {
        let cfg = &self.args.config;
        let max = Duration::from_millis(cfg.backoff_max_ms);
        let Some(s) = self.slots[pool].get_mut(&slot) else {
            return;
        };
        // A worker that stayed up longer than the longest back-off starts afresh.
        if lived_since.is_some_and(|t| t.elapsed() > max) {
            s.failures = 0;
        }
        s.failures += 1;
        let delay = Duration::from_millis(cfg.backoff_initial_ms)
            .saturating_mul(1u32 << (s.failures - 1).min(20))
            .min(max);
        let window = secs(cfg.restart_window_seconds);
        let log = &mut self.restarts[pool];
        while log.front().is_some_and(|t| t.elapsed() > window) {
            log.pop_front();
        }
        let shared = &self.args.pools[pool];
        if log.len() >= cfg.restart_budget as usize {
            s.state = SlotState::Parked;
            let parked = shared.parked.fetch_add(1, Ordering::AcqRel) + 1;
            tracing::error!(
                pool = %shared.name,
                slot,
                "restart budget spent ({} restarts in {:?}; supervisor.restart_budget): slot parked, {parked}/{} down",
                log.len(),
                window,
                self.slots[pool].len(),
            );
            if parked >= self.slots[pool].len() {
                // Sent after this worker's `WorkerLost`, so the dispatcher sees both in order.
                let _ = self.dispatcher.cast(DispatcherMessage::PoolDead { pool });
            }
            return;
        }
        s.state = SlotState::Restarting;
        log.push_back(Instant::now());
        myself.send_after(delay, move || SupervisorMessage::Restart { pool, slot });
    }

    async fn resize(
        &mut self,
        supervisor: ActorCell,
        pool: usize,
        change: Resize,
    ) -> Result<(), ResizeError> {
        let shared = self.args.pools[pool].clone();
        let ceiling = shared.config.ceiling();
        let current = self.slots[pool].len();
        let target = match change {
            Resize::Concurrency(n) => {
                if n == 0 || n > ceiling {
                    return Err(ResizeError::Invalid(format!(
                        "concurrency must be between 1 and {ceiling} (pools.{}.max_concurrency), got {n}",
                        shared.name
                    )));
                }
                if let Some((min, max)) = shared.autoscale()
                    && !(min..=max).contains(&n)
                {
                    return Err(ResizeError::Invalid(format!(
                        "pool `{}` autoscales between {min} and {max}: set a concurrency within them, or change the bounds first",
                        shared.name
                    )));
                }
                n
            }
            Resize::Autoscale(Some((min, max))) => {
                if min == 0 || min > max || max > ceiling {
                    return Err(ResizeError::Invalid(format!(
                        "autoscale needs 1 <= min <= max <= {ceiling} (pools.{}.max_concurrency), got min {min} max {max}",
                        shared.name
                    )));
                }
                *shared.autoscale.lock() = Some((min, max));
                current.clamp(min, max)
            }
            Resize::Autoscale(None) => {
                *shared.autoscale.lock() = None;
                current
            }
        };
        self.set_size(supervisor, pool, target).await
    }

    /// Grows or shrinks a pool to `target` slots.
    async fn set_size(
        &mut self,
        supervisor: ActorCell,
        pool: usize,
        target: usize,
    ) -> Result<(), ResizeError> {
        let shared = self.args.pools[pool].clone();
        let current = self.slots[pool].len();
        if target > current {
            for _ in current..target {
                let slot = (0..)
                    .find(|s| !self.slots[pool].contains_key(s))
                    .expect("unbounded");
                if let Err(e) = self.spawn_worker(supervisor.clone(), pool, slot).await {
                    shared
                        .target
                        .store(self.slots[pool].len(), Ordering::Release);
                    return Err(ResizeError::Spawn(e.to_string()));
                }
            }
        } else if target < current {
            let mut excess = current - target;
            // Parked and restarting slots go first: nothing runs on them.
            for wanted in [SlotState::Parked, SlotState::Restarting] {
                let drop: Vec<usize> = self.slots[pool]
                    .iter()
                    .rev()
                    .filter(|(_, s)| s.state == wanted)
                    .map(|(k, _)| *k)
                    .take(excess)
                    .collect();
                for k in drop {
                    self.slots[pool].remove(&k);
                    if wanted == SlotState::Parked {
                        shared.parked.fetch_sub(1, Ordering::AcqRel);
                    }
                    excess -= 1;
                }
            }
            if excess > 0 {
                let chosen = ractor::call_t!(
                    self.dispatcher,
                    |reply| DispatcherMessage::Retire {
                        pool,
                        count: excess,
                        reply
                    },
                    10_000
                )
                .map_err(|e| ResizeError::Spawn(format!("dispatcher did not answer: {e}")))?;
                for worker in chosen {
                    if let Some(child) = self.children.values_mut().find(|c| c.worker == worker) {
                        child.retiring = true;
                        self.slots[pool].remove(&child.slot);
                    }
                }
            }
        }
        shared
            .target
            .store(self.slots[pool].len(), Ordering::Release);
        // New workers registered themselves before they finished starting; make sure
        // the dispatcher has counted them before answering.
        let _ = ractor::call_t!(self.dispatcher, DispatcherMessage::Sync, 10_000);
        tracing::info!(pool = %shared.name, size = self.slots[pool].len(), "pool resized");
        Ok(())
    }

    /// Grows pools whose queue holds waiting work; shrinks pools that stayed idle past
    /// their cool-down. Never crosses the bounds.
    async fn autoscale(&mut self, supervisor: ActorCell) {
        if self.shutting_down {
            return;
        }
        for pool in 0..self.args.pools.len() {
            let shared = self.args.pools[pool].clone();
            let (Some((min, max)), Some(cfg)) =
                (shared.autoscale(), shared.config.autoscale.clone())
            else {
                continue;
            };
            let now = Instant::now();
            let size = self.slots[pool].len();
            let queued = shared.queued.load(Ordering::Acquire);
            let waited = Duration::from_millis(shared.oldest_wait_ms.load(Ordering::Acquire));
            let st = &mut self.scale[pool];
            let cooled = st
                .last_grow
                .is_none_or(|t| now - t >= secs(cfg.scale_up_cooldown_seconds));
            let pressure = queued >= cfg.scale_up_queue_depth
                || (queued > 0 && waited >= Duration::from_millis(cfg.scale_up_wait_ms));
            let mut target = size.clamp(min, max);
            if pressure && cooled && size < max {
                let step = (queued / cfg.scale_up_queue_depth).max(1);
                target = (size + step).min(max);
                st.last_grow = Some(now);
                st.idle_since = None;
            } else if queued == 0 && shared.idle() > 0 {
                let since = *st.idle_since.get_or_insert(now);
                if now - since >= secs(cfg.scale_down_idle_seconds) && size > min {
                    target = target.min(size - 1);
                    // The next shrink needs another full idle period.
                    st.idle_since = Some(now);
                }
            } else {
                st.idle_since = None;
            }
            if target != size {
                tracing::info!(pool = %shared.name, from = size, to = target, queued, "autoscaling");
                if let Err(e) = self.set_size(supervisor.clone(), pool, target).await {
                    tracing::error!(pool = %shared.name, "autoscale failed: {e}");
                }
            }
        }
    }
}
