//! Tasks through the broker: queued on Redis in Celery's protocol, for whichever node
//! has an idle worker; results read from the Redis result backend.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use serde_json::Value;

use crate::broker::{Broker, BrokerError};
use crate::error::ApiError;
use crate::pool_shared::PoolShared;
use crate::store::{Finished, StoreError, TaskId, TaskState, TaskView};
use crate::task::{Registered, Registry};

/// Most tasks waiting in the queue of a task other workers run (`[tasks.NAME] queue`)
/// before submits get 429, as a pool's default `queue_capacity`.
const REMOTE_QUEUE_CAPACITY: usize = 1000;

/// The broker, and the tasks other workers run (a mixed fleet).
pub struct Remote {
    broker: Arc<Broker>,
    /// Task name → the queue of the (Python) workers that run it.
    remote_tasks: HashMap<String, String>,
}

impl Remote {
    /// Over `broker`; `remote_tasks` maps the tasks other workers run to their queues
    /// (`Config::remote_tasks`).
    pub fn new<'a>(
        broker: Arc<Broker>,
        remote_tasks: impl Iterator<Item = (&'a str, &'a str)>,
    ) -> Self {
        Remote {
            broker,
            remote_tasks: remote_tasks
                .map(|(t, q)| (t.to_string(), q.to_string()))
                .collect(),
        }
    }

    pub(super) fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    pub(super) fn queue_of_remote(&self, task: &str) -> Option<&str> {
        self.remote_tasks.get(task).map(String::as_str)
    }

    pub(super) fn remote_task_names(&self) -> impl Iterator<Item = &str> {
        self.remote_tasks.keys().map(String::as_str)
    }

    /// Queues a task that other workers run on their `queue`.
    pub(super) async fn submit_remote(
        &self,
        task: &str,
        queue: &str,
        inputs: Vec<Value>,
    ) -> Result<Vec<TaskId>, ApiError> {
        let tasks: Vec<_> = inputs
            .into_iter()
            .map(|input| (uuid::Uuid::new_v4(), Arc::from(task), Arc::new(input)))
            .collect();
        self.broker
            .submit_to(queue, &tasks, REMOTE_QUEUE_CAPACITY, None)
            .await
            .map_err(|e| api_error(e, queue))?;
        crate::metrics::submitted(queue, task, tasks.len());
        Ok(tasks.into_iter().map(|(id, _, _)| id).collect())
    }

    /// Queues validated `inputs` on the pool's queue; all or none.
    pub(super) async fn submit(
        &self,
        reg: &Registered,
        pool: &PoolShared,
        inputs: Vec<Value>,
    ) -> Result<Vec<TaskId>, ApiError> {
        let tasks: Vec<_> = inputs
            .into_iter()
            .map(|input| (uuid::Uuid::new_v4(), reg.name.clone(), Arc::new(input)))
            .collect();
        self.broker
            .submit(
                reg.pool,
                &tasks,
                pool.config.queue_capacity,
                pool.config.time_limit_seconds,
            )
            .await
            .map_err(|e| api_error(e, &pool.name))?;
        crate::metrics::submitted(&pool.name, &reg.name, tasks.len());
        Ok(tasks.into_iter().map(|(id, _, _)| id).collect())
    }

    pub(super) async fn get(&self, id: &TaskId) -> Result<Option<TaskView>, ApiError> {
        self.broker.get(id).await.map_err(|e| api_error(e, ""))
    }

    pub(super) async fn wait(
        &self,
        id: &TaskId,
        wait: Duration,
    ) -> Result<Option<TaskView>, ApiError> {
        self.broker
            .wait_final(id, wait)
            .await
            .map_err(|e| api_error(e, ""))
    }

    /// A task queued for Python workers (a mixed fleet) is revoked by taking its
    /// message out of their queue; celeriac's own nodes read the meta.
    pub(super) async fn revoke(
        &self,
        id: &TaskId,
        registry: &Registry,
        pools: &[Arc<PoolShared>],
    ) -> Result<TaskView, ApiError> {
        let view = self
            .get(id)
            .await?
            .ok_or_else(|| ApiError::TaskNotFound(id.to_string()))?;
        let outcome = match self.queue_of_remote(&view.task) {
            Some(queue) => self.broker.revoke_queued(id, queue).await,
            None => self.broker.revoke(id).await,
        };
        match outcome.map_err(|e| api_error(e, ""))? {
            Ok(view) => {
                if let Some(reg) = registry.get(&view.task) {
                    let latency = humantime::parse_rfc3339_weak(&view.submitted_at)
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .unwrap_or_default();
                    let finished = Finished {
                        task: view.task.clone(),
                        pool: reg.pool,
                        state: TaskState::Revoked,
                        latency,
                    };
                    crate::metrics::finished(&pools[reg.pool].name, &finished);
                }
                Ok(view)
            }
            Err(StoreError::NotFound) => Err(ApiError::TaskNotFound(id.to_string())),
            Err(StoreError::WrongState(s)) => Err(ApiError::NotRevocable(s)),
        }
    }

    pub(super) fn down_reason(&self) -> Option<String> {
        self.broker
            .down_reason()
            .map(|why| format!("broker {} unreachable: {why}", self.broker.url))
    }

    pub(super) fn render_metrics(&self, pools: &[Arc<PoolShared>]) -> String {
        let b = &self.broker;
        crate::metrics::render_broker(&crate::metrics::BrokerSeries {
            up: b.is_up(),
            queues: pools
                .iter()
                .zip(&b.queues)
                .map(|(p, q)| (p.name.as_str(), q.name.as_str(), q.depth.load(Relaxed)))
                .collect(),
            redeliveries: b.redeliveries.load(Relaxed),
            restored: b.restored.load(Relaxed),
            held: b.held().len(),
        })
    }
}

/// The API error for a broker error; a full queue names `queue` (the pool, or the
/// queue of a task other workers run).
fn api_error(e: BrokerError, queue: &str) -> ApiError {
    match e {
        BrokerError::QueueFull => ApiError::QueueFull(queue.to_string()),
        BrokerError::Down(why) | BrokerError::Refused(why) => ApiError::BrokerUnavailable(why),
    }
}
