//! The supervisor: the root of the tree. It starts one [`Pool`] actor per pool, linked;
//! each pool actor owns its queue and workers and replaces its own workers. A pool actor
//! that exits is a bug that would strand its queue, so the supervisor escalates it: it
//! fails, and the process's readiness and submits report the loss.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use super::pool::{Pool, PoolArgs};
use super::protocol::PoolMessage;
use crate::config::SupervisorConfig;
use crate::pool::PoolShared;
use crate::store::TaskStore;
use crate::task::Registry;

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
    /// The whole configuration, which `processes` workers hand to their children.
    pub app_config: Arc<crate::config::Config>,
}

/// Messages to the supervisor.
pub enum SupervisorMessage {
    /// Asks for the pool actors, by pool index, which submits and resizes go to.
    Pools(RpcReplyPort<Vec<ActorRef<PoolMessage>>>),
    /// Stop replacing workers: the process is shutting down.
    ShuttingDown,
}

/// The supervisor's state.
pub struct SupervisorState {
    pools: Vec<ActorRef<PoolMessage>>,
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
        let mut pools = Vec::with_capacity(args.pools.len());
        for (index, shared) in args.pools.iter().enumerate() {
            let (pool, _) = Actor::spawn_linked(
                None,
                Pool,
                PoolArgs {
                    shared: shared.clone(),
                    supervisor: args.config.clone(),
                    tasks: args.registry.for_pool(index),
                    store: args.store.clone(),
                    config: args.app_config.clone(),
                },
                myself.get_cell(),
            )
            .await?;
            pools.push(pool);
        }
        Ok(SupervisorState { pools })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: SupervisorMessage,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMessage::Pools(reply) => {
                let _ = reply.send(state.pools.clone());
            }
            SupervisorMessage::ShuttingDown => {
                for p in &state.pools {
                    let _ = p.cast(PoolMessage::ShuttingDown);
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        _state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(cell, err) => {
                Err(format!("pool actor {} failed: {err}", cell.get_id()).into())
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => Err(format!(
                "pool actor {} exited: {}",
                cell.get_id(),
                reason.unwrap_or_else(|| "stopped".into())
            )
            .into()),
            _ => Ok(()),
        }
    }
}
