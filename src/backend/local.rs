//! Tasks on this node's pools: admission, the pool actors, the store.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::actors::protocol::{Job, PoolActors};
use crate::error::ApiError;
use crate::pool_shared::PoolShared;
use crate::store::{StoreError, TaskId, TaskStore, TaskView};
use crate::task::{Registered, TaskFactory};

/// Batches of up to this many inputs are prepared (tokenized) on the request's own
/// runtime thread; larger ones on a blocking thread (a 1,000-text batch tokenizes in
/// about 30 ms).
const PREPARE_INLINE: usize = 32;

/// This node's pools and task records.
pub struct Local {
    store: Arc<TaskStore>,
    actors: PoolActors,
}

impl Local {
    /// Over the store and the pools' actors (looked up at each submit: the supervisor
    /// replaces an actor that failed).
    pub fn new(store: Arc<TaskStore>, actors: PoolActors) -> Self {
        Local { store, actors }
    }

    /// Prepares, admits and hands validated `inputs` to the pool; all or none.
    pub(super) async fn submit(
        &self,
        reg: &Registered,
        pool: &PoolShared,
        inputs: Vec<Value>,
        accepting: &AtomicBool,
    ) -> Result<Vec<TaskId>, ApiError> {
        if pool.is_dead() {
            return Err(ApiError::NoLiveWorker(pool.name.clone()));
        }
        let (inputs, prepared) = prepare(reg, inputs).await?;
        if !pool.try_admit(inputs.len()) {
            return Err(ApiError::QueueFull(pool.name.clone()));
        }
        // A drain that started since the caller's check may already have seen the
        // queue empty: give the places back rather than accept work it will not wait
        // for.
        if !accepting.load(Ordering::SeqCst) {
            pool.release(inputs.len());
            return Err(ApiError::ShuttingDown);
        }
        let jobs: Vec<Job> = inputs
            .into_iter()
            .zip(prepared)
            .map(|(input, prepared)| Job {
                id: self.store.insert(reg.name.clone(), reg.pool),
                task: reg.name.clone(),
                prepared,
                input: Arc::new(input),
                enqueued: Instant::now(),
            })
            .collect();
        let ids: Vec<TaskId> = jobs.iter().map(|j| j.id).collect();
        if self
            .actors
            .submit(reg.pool, jobs, &self.store, pool)
            .is_err()
        {
            // The pool's actor is gone: the process is stopping, or the supervisor is
            // restarting the pool (a moment).
            return Err(if accepting.load(Ordering::SeqCst) {
                ApiError::NoLiveWorker(pool.name.clone())
            } else {
                ApiError::ShuttingDown
            });
        }
        crate::metrics::submitted(&pool.name, &reg.name, ids.len());
        Ok(ids)
    }

    pub(super) fn get(&self, id: &TaskId) -> Option<TaskView> {
        self.store.get(id)
    }

    pub(super) async fn wait(&self, id: &TaskId, wait: Duration) -> Option<TaskView> {
        self.store.wait_final(id, wait).await
    }

    pub(super) fn revoke(&self, id: &TaskId) -> Result<TaskView, ApiError> {
        match self.store.revoke(id) {
            Ok((view, _)) => Ok(view),
            Err(StoreError::NotFound) => Err(ApiError::TaskNotFound(id.to_string())),
            Err(StoreError::WrongState(s)) => Err(ApiError::NotRevocable(s)),
        }
    }
}

/// What the task's factory makes of each input before admission (its tokens); a large
/// batch on a blocking thread, so it does not hold up the runtime's other requests.
async fn prepare(
    reg: &Registered,
    inputs: Vec<Value>,
) -> Result<(Vec<Value>, Vec<Option<crate::task::Prepared>>), ApiError> {
    let run = |factory: Arc<dyn TaskFactory>, inputs: Vec<Value>| {
        let prepared: Vec<_> = inputs.iter().map(|i| factory.prepare(i)).collect();
        (inputs, prepared)
    };
    let factory = reg.factory.clone();
    if inputs.len() <= PREPARE_INLINE {
        return Ok(run(factory, inputs));
    }
    tokio::task::spawn_blocking(move || run(factory, inputs))
        .await
        .map_err(|e| {
            tracing::error!(task = %reg.name, "preparing a batch's inputs failed: {e}");
            ApiError::Internal
        })
}
