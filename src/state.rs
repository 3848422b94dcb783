//! What the HTTP handlers share: the config, the store, the registry, and each pool's
//! published status and actor. Built by [`crate::app`], read by [`crate::http`]; it
//! depends on neither, so the two do not import each other.

use std::sync::Arc;

use crate::actors::protocol::PoolActors;
use crate::backend::Backend;
use crate::config::Config;
use crate::outbox::Outbox;
use crate::pool_shared::PoolShared;
use crate::store::TaskStore;
use crate::task::Registry;

/// What a node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `celeriac serve`: the HTTP API and the pools.
    Serve,
    /// `celeriac worker`: the pools, taking work from the broker; HTTP serves only
    /// `/metrics`, `/health/*`, `/v1/admin/*` and `/openapi.json`.
    Worker,
}

/// What the HTTP handlers share.
pub struct AppState {
    /// What this node runs.
    pub role: Role,
    /// Where tasks go and are read from: this node's pools, or the broker (when
    /// `[broker] url` is set). Every door submits, reads, waits and revokes through it.
    pub backend: Backend,
    /// The validated configuration.
    pub config: Config,
    /// Task records.
    pub store: Arc<TaskStore>,
    /// The tasks taken from a broker and not finished (empty without one).
    pub outbox: Arc<Outbox>,
    /// Registered tasks.
    pub registry: Arc<Registry>,
    /// Every pool, by index (config order): settings and published status.
    pub pools: Vec<Arc<PoolShared>>,
    /// Every pool's actor, by the same index: where submits and resizes go (looked up
    /// at each use: the supervisor replaces a pool actor that failed).
    pub pool_actors: PoolActors,
}

impl AppState {
    /// Whether every queued and running task has finished.
    pub fn drained(&self) -> bool {
        self.pools.iter().all(|p| p.is_drained())
    }
}
