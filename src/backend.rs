//! The task backend: the one way every door (the task routes, the client-API routes,
//! readiness, `/metrics`) submits tasks, reads them, waits for them and revokes them.
//!
//! Chosen once, in [`crate::app`]: [`Local`] runs tasks on this node's pools and keeps
//! their records in its store; [`Remote`] queues them on the broker (Celery's protocol
//! on Redis), for whichever node has an idle worker, and reads results from the result
//! backend. The doors never ask which one they hold.
//!
//! ```text
//!  http ──▶ Backend ──┬─ Local:  admission ─▶ pool actors, TaskStore
//!                     └─ Remote: broker queue (Redis), result backend
//! ```

mod local;
mod remote;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;

pub use local::Local;
pub use remote::Remote;

use crate::error::ApiError;
use crate::pool_shared::PoolShared;
use crate::store::{TaskId, TaskView};
use crate::task::{Registered, Registry};

/// Where tasks go: this node's pools, or the broker.
pub enum Via {
    /// This node's pools and store.
    Local(Local),
    /// The broker and its result backend.
    Remote(Remote),
}

/// The task backend every door uses (see the module doc).
pub struct Backend {
    registry: Arc<Registry>,
    pools: Vec<Arc<PoolShared>>,
    /// Cleared when shutdown starts: submits then get 503.
    accepting: AtomicBool,
    via: Via,
}

impl Backend {
    /// A backend over `registry`'s tasks and their `pools`, accepting submits.
    pub fn new(registry: Arc<Registry>, pools: Vec<Arc<PoolShared>>, via: Via) -> Self {
        Backend {
            registry,
            pools,
            accepting: AtomicBool::new(true),
            via,
        }
    }

    /// Whether submits are accepted (until shutdown starts).
    pub fn accepting(&self) -> bool {
        self.accepting.load(Ordering::SeqCst)
    }

    /// Refuses submits from now on (503 `shutting_down`). Sequentially consistent, like
    /// a pool's admission, so a submit racing the start of a drain is either refused or
    /// seen by the drain.
    pub fn stop_accepting(&self) {
        self.accepting.store(false, Ordering::SeqCst);
    }

    /// Validates and queues `inputs` for `task`; all or none are accepted. Ids come
    /// back in input order.
    pub async fn submit(&self, task: &str, inputs: Vec<Value>) -> Result<Vec<TaskId>, ApiError> {
        if !self.accepting() {
            return Err(ApiError::ShuttingDown);
        }
        if let Via::Remote(r) = &self.via
            && let Some(queue) = r.queue_of_remote(task)
        {
            // A mixed fleet: Python Celery workers on `queue` run it.
            return r.submit_remote(task, queue, inputs).await;
        }
        let reg = self.registered(task)?;
        validate(reg, &inputs)?;
        let pool = &self.pools[reg.pool];
        match &self.via {
            Via::Local(l) => l.submit(reg, pool, inputs, &self.accepting).await,
            Via::Remote(r) => r.submit(reg, pool, inputs).await,
        }
    }

    /// The task now; `None` for an unknown (or expired) id.
    pub async fn get(&self, id: &TaskId) -> Result<Option<TaskView>, ApiError> {
        match &self.via {
            Via::Local(l) => Ok(l.get(id)),
            Via::Remote(r) => r.get(id).await,
        }
    }

    /// Waits until the task is final or `wait` runs out, and answers its view then;
    /// `None` for an unknown id.
    pub async fn wait(&self, id: &TaskId, wait: Duration) -> Result<Option<TaskView>, ApiError> {
        match &self.via {
            Via::Local(l) => Ok(l.wait(id, wait).await),
            Via::Remote(r) => r.wait(id, wait).await,
        }
    }

    /// Revokes a task that has not started: its view, now `REVOKED`. A task that
    /// started or finished is `NotRevocable`; an unknown id `TaskNotFound`.
    pub async fn revoke(&self, id: &TaskId) -> Result<TaskView, ApiError> {
        match &self.via {
            Via::Local(l) => l.revoke(id),
            Via::Remote(r) => r.revoke(id, &self.registry, &self.pools).await,
        }
    }

    /// Why the backend cannot serve now (the broker unreachable), if so.
    pub fn down_reason(&self) -> Option<String> {
        match &self.via {
            Via::Local(_) => None,
            Via::Remote(r) => r.down_reason(),
        }
    }

    /// The backend's own Prometheus series (the broker's queues), appended to
    /// `/metrics`.
    pub fn render_metrics(&self) -> String {
        match &self.via {
            Via::Local(_) => String::new(),
            Via::Remote(r) => r.render_metrics(&self.pools),
        }
    }

    /// The broker behind a [`Remote`] backend: for what watches the node from outside
    /// (tests, diagnostics); the doors use the operations above.
    pub fn broker(&self) -> Option<&Arc<crate::broker::Broker>> {
        match &self.via {
            Via::Local(_) => None,
            Via::Remote(r) => Some(r.broker()),
        }
    }

    fn registered(&self, task: &str) -> Result<&Registered, ApiError> {
        self.registry.get(task).ok_or_else(|| {
            let mut known = self.registry.names();
            if let Via::Remote(r) = &self.via {
                known.extend(r.remote_task_names());
            }
            known.sort_unstable();
            ApiError::UnknownTask {
                name: task.to_string(),
                known: known.join(", "),
            }
        })
    }
}

/// Checks every input with the task's own validation; the first refusal names its
/// input when there are several.
fn validate(reg: &Registered, inputs: &[Value]) -> Result<(), ApiError> {
    let batch = inputs.len() > 1;
    for (i, input) in inputs.iter().enumerate() {
        reg.factory
            .validate(input)
            .map_err(|message| ApiError::InvalidInput {
                task: reg.name.to_string(),
                message: if batch {
                    format!("inputs[{i}]: {message}")
                } else {
                    message
                },
            })?;
    }
    Ok(())
}
