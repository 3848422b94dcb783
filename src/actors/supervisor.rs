//! The supervisor: the root of the tree. It starts one [`Pool`] actor per pool, linked;
//! each pool actor owns its queue and workers and replaces its own workers.
//!
//! A pool actor that exits while the node serves is a bug we have not found yet; it
//! must not leave a node that is alive but never ready again. The supervisor contains
//! it to that pool:
//!
//! 1. the dead actor's workers are stopped (a `processes` worker's child is killed);
//! 2. every task of the pool that is not final gets a final answer: a task taken from
//!    a broker goes back to the broker's queue (through the pool's hand-back list, which
//!    the broker consumer drains), any other fails with a reason that says what
//!    happened, so nothing the node accepted is left without a final state;
//! 3. a new pool actor starts with the pool's settings and takes the old one's place
//!    in [`PoolActors`], where submits and resizes look it up; the other pools never
//!    notice.
//!
//! A pool whose actor fails [`RESTARTS_PER_MINUTE`] times within a minute is not
//! restarted again: the supervisor itself fails, and the app exits non-zero so that an
//! orchestrator restarts the process.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent,
};

use super::pool::{Pool, PoolArgs};
use super::protocol::{PoolActors, PoolMessage};
use crate::config::SupervisorConfig;
use crate::outbox::Outbox;
use crate::pool_shared::PoolShared;
use crate::store::{TaskState, TaskStore};
use crate::task::Registry;

/// Pool actor failures within a minute after which the process gives up and exits.
pub const RESTARTS_PER_MINUTE: usize = 5;

/// The supervisor actor.
pub struct Supervisor;

/// What the supervisor starts with.
pub struct SupervisorArgs {
    /// Restart policy and time-limit checks, for every pool.
    pub config: SupervisorConfig,
    /// Every pool, by index.
    pub pools: Vec<Arc<PoolShared>>,
    /// Registered tasks.
    pub registry: Arc<Registry>,
    /// Task records.
    pub store: Arc<TaskStore>,
    /// The tasks taken from a broker (given back when their pool cannot run them).
    pub outbox: Arc<Outbox>,
    /// The whole configuration, which `processes` workers hand to their children.
    pub app_config: Arc<crate::config::Config>,
}

/// Messages to the supervisor.
pub enum SupervisorMessage {
    /// Asks for the pool actors, by pool index, which submits and resizes go to.
    Pools(RpcReplyPort<PoolActors>),
    /// Stop replacing workers and pools: the process is shutting down.
    ShuttingDown,
}

/// The supervisor's state.
pub struct SupervisorState {
    args: SupervisorArgs,
    actors: PoolActors,
    /// Live pool actors' ids → pool index.
    by_actor: HashMap<ActorId, usize>,
    /// Each pool's recent actor failures, for the give-up rule.
    failures: Vec<VecDeque<Instant>>,
    shutting_down: bool,
}

impl SupervisorState {
    /// Starts pool `index`'s actor, linked to the supervisor.
    async fn spawn_pool(
        &mut self,
        index: usize,
        supervisor: ActorCell,
    ) -> Result<ActorRef<PoolMessage>, ActorProcessingErr> {
        let a = &self.args;
        let (pool, _) = Actor::spawn_linked(
            None,
            Pool,
            PoolArgs {
                shared: a.pools[index].clone(),
                supervision: a.config.clone(),
                tasks: a.registry.for_pool(index),
                store: a.store.clone(),
                outbox: a.outbox.clone(),
                config: a.app_config.clone(),
            },
            supervisor,
        )
        .await?;
        self.by_actor.insert(pool.get_id(), index);
        Ok(pool)
    }

    /// Settles every task of pool `index` that is not final after its actor died; see
    /// the module doc. Returns (given back to the broker, failed).
    fn settle_orphans(&self, index: usize, why: &str) -> (usize, usize) {
        let shared = &self.args.pools[index];
        let names: HashSet<Arc<str>> = self
            .args
            .registry
            .for_pool(index)
            .into_iter()
            .map(|t| t.name)
            .collect();
        let (mut back, mut failed, mut queued) = (0, 0, 0);
        for (id, task_state) in self.args.store.unfinished(|task| names.contains(task)) {
            if matches!(task_state, TaskState::Pending | TaskState::Retry) {
                // It held a queue place.
                queued += 1;
            }
            if self.args.outbox.give_back(&id) {
                shared.give_back(id);
                back += 1;
            } else if self.args.store.fail(&id, None, why.to_string()).is_some() {
                failed += 1;
            }
        }
        shared.release(queued);
        (back, failed)
    }

    /// Pool `index`'s actor exited: contain it, or give up (see the module doc).
    async fn restart_pool(
        &mut self,
        index: usize,
        dead: ActorCell,
        reason: String,
        supervisor: ActorCell,
    ) -> Result<(), ActorProcessingErr> {
        let name = self.args.pools[index].name.clone();
        tracing::error!(pool = %name, "pool actor exited: {reason}; restarting the pool");
        dead.stop_children(Some("its pool actor exited".into()));
        let why = format!(
            "pool `{name}` was restarted after its actor failed ({reason}); this task was queued or running there: submit it again"
        );
        let (back, failed) = self.settle_orphans(index, &why);
        if back + failed > 0 {
            tracing::warn!(pool = %name, given_back = back, failed, "settled the dead pool actor's tasks");
        }
        let failures = &mut self.failures[index];
        let now = Instant::now();
        while failures
            .front()
            .is_some_and(|t| now.duration_since(*t) > Duration::from_secs(60))
        {
            failures.pop_front();
        }
        failures.push_back(now);
        if failures.len() >= RESTARTS_PER_MINUTE {
            return Err(format!(
                "pool `{name}`'s actor failed {} times within a minute (last: {reason}); giving up so that the process exits and is restarted",
                failures.len()
            )
            .into());
        }
        let pool = self.spawn_pool(index, supervisor).await.map_err(|e| {
            format!("pool `{name}` could not be restarted after its actor failed: {e}")
        })?;
        self.actors.set(index, pool);
        self.args.pools[index].count_actor_restart();
        crate::metrics::pool_restarted(&name);
        tracing::warn!(pool = %name, "pool restarted");
        Ok(())
    }
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
        let n = args.pools.len();
        let mut state = SupervisorState {
            args,
            actors: PoolActors::default(),
            by_actor: HashMap::new(),
            failures: vec![VecDeque::new(); n],
            shutting_down: false,
        };
        let mut pools = Vec::with_capacity(n);
        for index in 0..n {
            pools.push(state.spawn_pool(index, myself.get_cell()).await?);
        }
        state.actors = PoolActors::new(pools);
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: SupervisorMessage,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMessage::Pools(reply) => {
                let _ = reply.send(state.actors.clone());
            }
            SupervisorMessage::ShuttingDown => {
                state.shutting_down = true;
                for index in 0..state.actors.len() {
                    let _ = state.actors.get(index).cast(PoolMessage::ShuttingDown);
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
        let (cell, reason) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, format!("failed: {err}")),
            SupervisionEvent::ActorTerminated(cell, _, reason) => (
                cell,
                format!("exited: {}", reason.unwrap_or_else(|| "stopped".into())),
            ),
            _ => return Ok(()),
        };
        let Some(index) = state.by_actor.remove(&cell.get_id()) else {
            return Ok(());
        };
        if state.shutting_down {
            return Ok(());
        }
        state
            .restart_pool(index, cell, reason, myself.get_cell())
            .await
    }
}
