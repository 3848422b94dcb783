//! The supervisor: owns the tree, rebuilds lost workers with back-off inside a budget.

use std::collections::{HashMap, VecDeque};
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
}

struct Child {
    worker: WorkerId,
    pool: usize,
    slot: usize,
    started: Instant,
}

#[derive(Default)]
struct Slot {
    /// Consecutive losses, for the back-off.
    failures: u32,
}

/// The supervisor's state.
pub struct SupervisorState {
    args: SupervisorArgs,
    dispatcher: ActorRef<DispatcherMessage>,
    children: HashMap<ActorId, Child>,
    slots: Vec<Vec<Slot>>,
    /// Restart times per pool within the budget window.
    restarts: Vec<VecDeque<Instant>>,
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
            },
            myself.get_cell(),
        )
        .await?;
        let mut state = SupervisorState {
            slots: args
                .pools
                .iter()
                .map(|p| (0..p.config.size()).map(|_| Slot::default()).collect())
                .collect(),
            restarts: args.pools.iter().map(|_| VecDeque::new()).collect(),
            args,
            dispatcher,
            children: HashMap::new(),
            next_worker: 1,
            shutting_down: false,
        };
        for pool in 0..state.args.pools.len() {
            for slot in 0..state.slots[pool].len() {
                state
                    .spawn_worker(myself.get_cell(), pool, slot)
                    .await
                    .map_err(|e| {
                        format!(
                            "pool `{}`: worker failed to start: {e}",
                            state.args.pools[pool].name
                        )
                    })?;
            }
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
                if state.shutting_down {
                    return Ok(());
                }
                state.args.pools[pool]
                    .restarts
                    .fetch_add(1, Ordering::AcqRel);
                if let Err(e) = state.spawn_worker(myself.get_cell(), pool, slot).await {
                    tracing::error!(pool = %state.args.pools[pool].name, slot, "worker failed to restart: {e}");
                    state.schedule_restart(&myself, pool, slot, None);
                }
            }
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
        let _ = state.dispatcher.cast(DispatcherMessage::WorkerLost {
            worker: child.worker,
            why: why.clone(),
        });
        if state.shutting_down {
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
        let shared = &self.args.pools[pool];
        let (actor, _) = Actor::spawn_linked(
            None,
            Worker,
            WorkerArgs {
                id,
                pool,
                pool_name: shared.name.clone(),
                kind: shared.config.kind,
                context: WorkerContext {
                    device: shared.config.device_for(slot),
                    intra_op_threads: shared.config.threads_per_worker(),
                    name: format!("{}-{id}", shared.name),
                },
                tasks: self.args.registry.for_pool(pool),
                store: self.args.store.clone(),
                dispatcher: self.dispatcher.clone(),
            },
            supervisor,
        )
        .await?;
        self.children.insert(
            actor.get_id(),
            Child {
                worker: id,
                pool,
                slot,
                started: Instant::now(),
            },
        );
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
        let s = &mut self.slots[pool][slot];
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
            let parked = shared.parked.fetch_add(1, Ordering::AcqRel) + 1;
            tracing::error!(
                pool = %shared.name,
                slot,
                "restart budget spent ({} restarts in {:?}; supervisor.restart_budget): slot parked, {parked}/{} down",
                log.len(),
                window,
                shared.config.size(),
            );
            if parked >= shared.config.size() {
                // Sent after this worker's `WorkerLost`, so the dispatcher sees both in order.
                let _ = self.dispatcher.cast(DispatcherMessage::PoolDead { pool });
            }
            return;
        }
        log.push_back(Instant::now());
        myself.send_after(delay, move || SupervisorMessage::Restart { pool, slot });
    }
}
