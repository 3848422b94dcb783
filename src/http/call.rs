//! A synchronous call, as the client APIs (OpenAI, TEI) make them: the inputs of one
//! request go to a task as one batch submit (all or none admitted), the request waits
//! for every answer (at most `server.max_wait_seconds`), and a request that goes away
//! (the client disconnected, the wait ran out, one input failed) revokes its tasks that
//! have not started, so it leaves no work behind. The tasks are ordinary tasks: they
//! batch with everything else in the pool, count in the metrics, and drain refuses
//! them (503) as it refuses any submit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use warp::http::{HeaderValue, StatusCode, header};

use super::Reply;

use crate::config::{ApiRoute, secs};
use crate::error::ApiError;
use crate::state::{AppState, Role};
use crate::store::{TaskId, TaskState, TaskView};

/// The task that answers `route` on this node ([`crate::config::Config::api_task`]).
pub fn task_for(state: &AppState, route: ApiRoute) -> Result<String, ApiError> {
    if state.role == Role::Worker {
        return Err(ApiError::WorkerNode);
    }
    state
        .config
        .api_task(route)
        .map(str::to_string)
        .map_err(ApiError::NotServed)
}

/// Submits `inputs` to `task` as one batch and waits for every result, in input order.
/// A task that fails (or is revoked by someone else) fails the call with its error; a
/// call that outlives `server.max_wait_seconds` fails with [`ApiError::WaitTimeout`].
/// Dropping the returned future revokes every task of the call that has not finished.
pub async fn run(
    state: &Arc<AppState>,
    task: &str,
    inputs: Vec<Value>,
) -> Result<Vec<Value>, ApiError> {
    let ids = submit(state, task, inputs).await?;
    let mut outstanding = Outstanding {
        state: state.clone(),
        ids,
        finished: 0,
    };
    let max = state.config.server.max_wait_seconds;
    let deadline = Instant::now() + secs(max);
    let mut results = Vec::with_capacity(outstanding.ids.len());
    for i in 0..outstanding.ids.len() {
        let id = outstanding.ids[i];
        let left = deadline.saturating_duration_since(Instant::now());
        let view = wait(state, &id, left).await?.ok_or_else(|| {
            ApiError::TaskFailed(format!(
                "the record of task {id} is gone before it was read (results.ttl_seconds)"
            ))
        })?;
        match view.state {
            TaskState::Success => results.push(view.result.unwrap_or(Value::Null)),
            TaskState::Failure | TaskState::Revoked => {
                outstanding.finished = i + 1;
                return Err(ApiError::TaskFailed(view.error.unwrap_or_else(|| {
                    format!("task {id} is {}", view.state.as_str())
                })));
            }
            _ => return Err(ApiError::WaitTimeout(max)),
        }
        outstanding.finished = i + 1;
    }
    Ok(results)
}

/// The ids of a call; on drop, revokes those from `finished` on (the ones before it are
/// final). A task that already started cannot be revoked and runs to its end; its
/// result expires with the others'.
struct Outstanding {
    state: Arc<AppState>,
    ids: Vec<TaskId>,
    finished: usize,
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        let rest: Vec<TaskId> = self.ids[self.finished..].to_vec();
        if rest.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let state = self.state.clone();
        runtime.spawn(async move {
            for id in rest {
                match revoke(&state, &id).await {
                    Ok(_) | Err(ApiError::NotRevocable(_) | ApiError::TaskNotFound(_)) => {}
                    Err(e) => {
                        tracing::warn!(task_id = %id, "revoking an abandoned call's task: {e}")
                    }
                }
            }
        });
    }
}

// The task backend: submit, wait and revoke as the task routes do.

async fn submit(state: &AppState, task: &str, inputs: Vec<Value>) -> Result<Vec<TaskId>, ApiError> {
    state.backend.submit(task, inputs).await
}

async fn wait(state: &AppState, id: &TaskId, wait: Duration) -> Result<Option<TaskView>, ApiError> {
    state.backend.wait(id, wait).await
}

async fn revoke(state: &AppState, id: &TaskId) -> Result<TaskView, ApiError> {
    state.backend.revoke(id).await
}

/// The answer to a failed request of a client API: `body` in that API's shape with
/// `status`, the headers our own errors carry (`Retry-After`, `WWW-Authenticate`),
/// counted as a rejection with `err`'s code.
pub fn error_reply<T: serde::Serialize>(err: &ApiError, status: StatusCode, body: &T) -> Reply {
    crate::metrics::rejected(err.code());
    let mut res = super::json_reply(status, body);
    if let Some(secs) = err.retry_after() {
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    super::www_authenticate(err, &mut res);
    res
}
