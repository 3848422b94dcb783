//! Task routes: submit, batch submit, poll (long-poll) and revoke.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use warp::http::{HeaderValue, StatusCode, header};
use warp::{Filter, Rejection};

use super::openapi::{
    BadRequest, LengthRequired, PayloadTooLarge, QueueFull, TaskNotFound, Unavailable,
};
use super::{Reply, WaitQuery, json_body, json_reply, no_query, wait_param, with_state};
use crate::actors::protocol::{Job, PoolMessage};
use crate::broker::BrokerError;
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;
use crate::store::{StoreError, TaskId, TaskState, TaskView};
use crate::task::TaskFactory;

fn reject(e: ApiError) -> Rejection {
    warp::reject::custom(e)
}

/// `POST /v1/tasks/{task}`
#[utoipa::path(
    post,
    path = "/v1/tasks/{task}",
    operation_id = "submitTask",
    summary = "Submit one input to a task",
    description = "Validates the input and queues it. Answers 202 at once, or with `wait` 200 \
                   and the finished task if it reaches a final state in time (else the 202, \
                   with the state at that moment).",
    params(
        ("task" = String, Path, description = "The registered task name, e.g. `spam.predict` or `debug.echo`."),
        WaitQuery,
    ),
    request_body(
        content = TaskInput,
        description = "The task's input: any JSON value; the task checks it (422 when refused).",
        example = json!({"text": "WINNER!! Claim your free prize now"}),
    ),
    responses(
        (status = 200, description = "With `wait`: the task finished in time.", body = TaskView),
        (status = 202, description = "Queued (or, with `wait`, not final yet).", body = Accepted,
            headers(("Location" = String, description = "The task's URL, `/v1/tasks/{task_id}`."))),
        (status = 400, response = BadRequest),
        (status = 404, description = "`unknown_task`: no task is registered under that name; `worker_node`: this node is a `celeriac worker`, which serves no task routes.", body = ErrorBody),
        (status = 411, response = LengthRequired),
        (status = 413, response = PayloadTooLarge),
        (status = 422, description = "`invalid_input`: the task refuses the input (checked at submit, before queueing).", body = ErrorBody),
        (status = 429, response = QueueFull),
        (status = 503, response = Unavailable),
    ),
)]
pub fn submit(state: Arc<AppState>) -> impl Filter<Extract = (Reply,), Error = Rejection> + Clone {
    let limit = state.config.server.body_limit_bytes;
    warp::path!("v1" / "tasks" / String)
        .and(warp::post())
        .and(wait_param())
        .and(json_body(limit))
        .and(with_state(state))
        .and_then(submit_handler)
}

/// `POST /v1/tasks/{task}/batch`
#[utoipa::path(
    post,
    path = "/v1/tasks/{task}/batch",
    operation_id = "submitBatch",
    summary = "Submit many inputs to a task",
    description = "All or none: every input is validated and the pool's queue must have room \
                   for all of them. Ids come back in input order.",
    params(
        ("task" = String, Path, description = "The registered task name, e.g. `spam.predict` or `debug.echo`."),
    ),
    request_body(
        content = BatchRequest,
        example = json!({"inputs": [{"text": "hi"}, {"text": "FREE entry!"}]}),
    ),
    responses(
        (status = 202, description = "Every input queued.", body = BatchAccepted),
        (status = 400, description = "`invalid_json`, `invalid_body` (not `{\"inputs\": [...]}`, an unknown field, or an empty `inputs`), `unsupported_content_type`.", body = ErrorBody),
        (status = 404, description = "`unknown_task`: no task is registered under that name; `worker_node`: this node is a `celeriac worker`, which serves no task routes.", body = ErrorBody),
        (status = 411, response = LengthRequired),
        (status = 413, response = PayloadTooLarge),
        (status = 422, description = "`invalid_input`: the task refuses an input; the message names it (`inputs[i]`).", body = ErrorBody),
        (status = 429, response = QueueFull),
        (status = 503, response = Unavailable),
    ),
)]
pub fn submit_batch(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Reply,), Error = Rejection> + Clone {
    let limit = state.config.server.body_limit_bytes;
    warp::path!("v1" / "tasks" / String / "batch")
        .and(warp::post())
        .and(no_query())
        .and(json_body(limit))
        .and(with_state(state))
        .and_then(submit_batch_handler)
}

/// `GET /v1/tasks/{task}` (the segment is the task id)
#[utoipa::path(
    get,
    path = "/v1/tasks/{task}",
    operation_id = "getTask",
    summary = "Poll or long-poll a task",
    description = "With `wait`, answers once the task is final or the wait runs out, with its state then.",
    params(
        ("task" = String, Path, format = Uuid, description = "The task id (`task_id` from a submit). This path shares its template with `POST /v1/tasks/{task}`, where the segment is the task name; here it is the id. An id that is not a UUID is answered like an unknown one (404)."),
        WaitQuery,
    ),
    responses(
        (status = 200, description = "The task.", body = TaskView),
        (status = 400, description = "`invalid_parameter`: an unknown query parameter, or a bad `wait`.", body = ErrorBody),
        (status = 404, response = TaskNotFound),
        (status = 503, response = Unavailable),
    ),
)]
pub fn get(state: Arc<AppState>) -> impl Filter<Extract = (Reply,), Error = Rejection> + Clone {
    warp::path!("v1" / "tasks" / String)
        .and(warp::get())
        .and(wait_param())
        .and(with_state(state))
        .and_then(get_handler)
}

/// `DELETE /v1/tasks/{task}` (the segment is the task id)
#[utoipa::path(
    delete,
    path = "/v1/tasks/{task}",
    operation_id = "revokeTask",
    summary = "Revoke a task that has not started",
    params(
        ("task" = String, Path, format = Uuid, description = "The task id (`task_id` from a submit). This path shares its template with `POST /v1/tasks/{task}`, where the segment is the task name; here it is the id. An id that is not a UUID is answered like an unknown one (404)."),
    ),
    responses(
        (status = 200, description = "Revoked: the task, now `REVOKED` (with the reason in `error`).", body = TaskView),
        (status = 404, response = TaskNotFound),
        (status = 409, description = "`not_revocable`: the task already started or finished (for a task routed to a queue other workers serve: one of them already holds it).", body = ErrorBody),
        (status = 503, response = Unavailable),
    ),
)]
pub fn revoke(state: Arc<AppState>) -> impl Filter<Extract = (Reply,), Error = Rejection> + Clone {
    warp::path!("v1" / "tasks" / String)
        .and(warp::delete())
        .and(no_query())
        .and(with_state(state))
        .and_then(revoke_handler)
}

/// A task's input: any JSON value; each task defines what it accepts.
#[derive(Deserialize, ToSchema)]
#[serde(transparent)]
#[schema(description = "Any JSON value; each task defines what it accepts.")]
pub(super) struct TaskInput(Value);

// `deny_unknown_fields` on the types below that are only serialized closes their OpenAPI
// schema (`additionalProperties: false`); serde ignores it there.

/// The 202 answer to a submit.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Accepted {
    #[schema(value_type = uuid::Uuid)]
    task_id: TaskId,
    state: TaskState,
}

/// The body of `POST /v1/tasks/{task}/batch`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct BatchRequest {
    #[schema(min_items = 1)]
    inputs: Vec<TaskInput>,
}

/// The 202 answer to a batch submit.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct BatchAccepted {
    /// One per input, in input order; every state is `PENDING`.
    tasks: Vec<Accepted>,
}

pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        if e.is_data() {
            ApiError::InvalidBody(e.to_string())
        } else {
            ApiError::InvalidJson(e.to_string())
        }
    })
}

fn wait_duration(state: &AppState, wait: Option<f64>) -> Option<Duration> {
    wait.filter(|w| *w > 0.0)
        .map(|w| crate::config::secs(w.min(state.config.server.max_wait_seconds)))
}

/// Batches of up to this many inputs are prepared (tokenized) on the request's own
/// runtime thread; larger ones on a blocking thread (a 1,000-text batch tokenizes in
/// about 30 ms).
const PREPARE_INLINE: usize = 32;

/// Most tasks waiting in the queue of a task other workers run (`[tasks.NAME] queue`)
/// before submits get 429, as a pool's default `queue_capacity`.
const REMOTE_QUEUE_CAPACITY: usize = 1000;

/// Validates and queues `inputs` for `task`; all or none are accepted. With a broker
/// the tasks go to the pool's Redis queue, for whichever node has an idle worker.
pub(crate) async fn enqueue(
    state: &AppState,
    task: &str,
    inputs: Vec<Value>,
) -> Result<Vec<TaskId>, ApiError> {
    if !state.accepting.load(Ordering::SeqCst) {
        return Err(ApiError::ShuttingDown);
    }
    let remote = state
        .config
        .remote_tasks()
        .find(|(name, _)| *name == task)
        .map(|(_, queue)| queue);
    if let (Some(queue), Some(broker)) = (remote, &state.broker) {
        // A mixed fleet: Python Celery workers on `queue` run it.
        let tasks: Vec<_> = inputs
            .into_iter()
            .map(|input| (uuid::Uuid::new_v4(), Arc::from(task), Arc::new(input)))
            .collect();
        broker
            .submit_to(queue, &tasks, REMOTE_QUEUE_CAPACITY, None)
            .await
            .map_err(|e| broker_error(e, queue))?;
        crate::metrics::submitted(queue, task, tasks.len());
        return Ok(tasks.into_iter().map(|(id, _, _)| id).collect());
    }
    let reg = state.registry.get(task).ok_or_else(|| {
        let mut known = state.registry.names();
        known.extend(state.config.remote_tasks().map(|(n, _)| n));
        known.sort_unstable();
        ApiError::UnknownTask {
            name: task.to_string(),
            known: known.join(", "),
        }
    })?;
    let batch = inputs.len() > 1;
    for (i, input) in inputs.iter().enumerate() {
        reg.factory
            .validate(input)
            .map_err(|message| ApiError::InvalidInput {
                task: task.to_string(),
                message: if batch {
                    format!("inputs[{i}]: {message}")
                } else {
                    message
                },
            })?;
    }
    let pool = &state.pools[reg.pool];
    if let Some(broker) = &state.broker {
        let tasks: Vec<_> = inputs
            .into_iter()
            .map(|input| (uuid::Uuid::new_v4(), reg.name.clone(), Arc::new(input)))
            .collect();
        broker
            .submit(
                reg.pool,
                &tasks,
                pool.config.queue_capacity,
                pool.config.time_limit_seconds,
            )
            .await
            .map_err(|e| broker_error(e, &pool.name))?;
        crate::metrics::submitted(&pool.name, &reg.name, tasks.len());
        return Ok(tasks.into_iter().map(|(id, _, _)| id).collect());
    }
    if pool.is_dead() {
        return Err(ApiError::NoLiveWorker(pool.name.clone()));
    }
    // Tokenize (or whatever the task prepares) before admission; a large batch on a
    // blocking thread, so it does not hold up the runtime's other requests.
    let prepare = |factory: Arc<dyn TaskFactory>, inputs: Vec<Value>| {
        let prepared: Vec<_> = inputs.iter().map(|i| factory.prepare(i)).collect();
        (inputs, prepared)
    };
    let factory = reg.factory.clone();
    let (inputs, mut prepared) = if inputs.len() > PREPARE_INLINE {
        tokio::task::spawn_blocking(move || prepare(factory, inputs))
            .await
            .map_err(|e| {
                tracing::error!(task, "preparing a batch's inputs failed: {e}");
                ApiError::Internal
            })?
    } else {
        prepare(factory, inputs)
    };
    if !pool.try_admit(inputs.len()) {
        return Err(ApiError::QueueFull(pool.name.clone()));
    }
    // A drain that started since the check above may already have seen the queue
    // empty: give the places back rather than accept work it will not wait for.
    if !state.accepting.load(Ordering::SeqCst) {
        pool.release(inputs.len());
        return Err(ApiError::ShuttingDown);
    }
    let jobs: Vec<Job> = inputs
        .into_iter()
        .zip(prepared.drain(..))
        .map(|(input, prepared)| Job {
            id: state.store.insert(reg.name.clone()),
            task: reg.name.clone(),
            prepared,
            input: Arc::new(input),
            enqueued: std::time::Instant::now(),
        })
        .collect();
    let ids: Vec<TaskId> = jobs.iter().map(|j| j.id).collect();
    if state
        .pool_actors
        .get(reg.pool)
        .cast(PoolMessage::Submit(jobs))
        .is_err()
    {
        for id in &ids {
            state.store.remove(id);
        }
        pool.release(ids.len());
        // The pool's actor is gone: the process is stopping, or the supervisor is
        // restarting the pool (a moment).
        return Err(if state.accepting.load(Ordering::SeqCst) {
            ApiError::NoLiveWorker(pool.name.clone())
        } else {
            ApiError::ShuttingDown
        });
    }
    crate::metrics::submitted(&pool.name, &reg.name, ids.len());
    Ok(ids)
}

fn accepted(id: TaskId, task_state: TaskState) -> Reply {
    let mut res = json_reply(
        StatusCode::ACCEPTED,
        &Accepted {
            task_id: id,
            state: task_state,
        },
    );
    let location = format!("/v1/tasks/{id}");
    res.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_str(&location).expect("a UUID path is a valid header"),
    );
    res
}

async fn submit_handler(
    task: String,
    wait: Option<f64>,
    body: Bytes,
    state: Arc<AppState>,
) -> Result<Reply, Rejection> {
    let TaskInput(input) = parse_json(&body).map_err(reject)?;
    let id = enqueue(&state, &task, vec![input]).await.map_err(reject)?[0];
    if let Some(wait) = wait_duration(&state, wait)
        && let Some(view) = wait_final(&state, &id, wait).await.map_err(reject)?
    {
        if view.state.is_final() {
            return Ok(json_reply(StatusCode::OK, &view));
        }
        return Ok(accepted(id, view.state));
    }
    Ok(accepted(id, TaskState::Pending))
}

async fn submit_batch_handler(
    task: String,
    body: Bytes,
    state: Arc<AppState>,
) -> Result<Reply, Rejection> {
    let req: BatchRequest = parse_json(&body).map_err(reject)?;
    if req.inputs.is_empty() {
        return Err(reject(ApiError::InvalidBody(
            "`inputs` must hold at least one input".into(),
        )));
    }
    let inputs = req.inputs.into_iter().map(|TaskInput(v)| v).collect();
    let ids = enqueue(&state, &task, inputs).await.map_err(reject)?;
    let body = BatchAccepted {
        tasks: ids
            .into_iter()
            .map(|task_id| Accepted {
                task_id,
                state: TaskState::Pending,
            })
            .collect(),
    };
    Ok(json_reply(StatusCode::ACCEPTED, &body))
}

fn parse_id(id: &str) -> Result<TaskId, ApiError> {
    id.parse()
        .map_err(|_| ApiError::TaskNotFound(id.chars().take(64).collect()))
}

async fn get_handler(
    id: String,
    wait: Option<f64>,
    state: Arc<AppState>,
) -> Result<Reply, Rejection> {
    let task_id = parse_id(&id).map_err(reject)?;
    let view = match (wait_duration(&state, wait), &state.broker) {
        (Some(wait), _) => wait_final(&state, &task_id, wait).await.map_err(reject)?,
        (None, Some(broker)) => broker.get(&task_id).await.map_err(unavailable)?,
        (None, None) => state.store.get(&task_id),
    };
    let view = view.ok_or_else(|| reject(ApiError::TaskNotFound(id)))?;
    Ok(json_reply(StatusCode::OK, &view))
}

/// The API error for a broker error; a full queue names `queue` (the pool, or the
/// queue of a task other workers run).
fn broker_error(e: BrokerError, queue: &str) -> ApiError {
    match e {
        BrokerError::QueueFull => ApiError::QueueFull(queue.to_string()),
        BrokerError::Down(why) | BrokerError::Refused(why) => ApiError::BrokerUnavailable(why),
    }
}

/// A broker error on a route that queues nothing.
fn unavailable(e: BrokerError) -> Rejection {
    reject(broker_error(e, ""))
}

/// Waits for a task to be final, in the store or the broker's result backend.
pub(crate) async fn wait_final(
    state: &AppState,
    id: &TaskId,
    wait: Duration,
) -> Result<Option<crate::store::TaskView>, ApiError> {
    match &state.broker {
        Some(broker) => broker
            .wait_final(id, wait)
            .await
            .map_err(|e| broker_error(e, "")),
        None => Ok(state.store.wait_final(id, wait).await),
    }
}

async fn revoke_handler(id: String, state: Arc<AppState>) -> Result<Reply, Rejection> {
    let task_id = parse_id(&id).map_err(reject)?;
    let view = revoke_task(&state, &task_id).await.map_err(reject)?;
    Ok(json_reply(StatusCode::OK, &view))
}

/// Revokes a task that has not started, in the store or the broker, and counts it.
pub(crate) async fn revoke_task(state: &AppState, task_id: &TaskId) -> Result<TaskView, ApiError> {
    let id = task_id.to_string();
    let unavailable = |e| broker_error(e, "");
    if let Some(broker) = &state.broker {
        // A task queued for Python workers (a mixed fleet) is revoked by taking its
        // message out of their queue; celeriac's own nodes read the meta.
        let remote = match broker.get(task_id).await.map_err(unavailable)? {
            None => return Err(ApiError::TaskNotFound(id)),
            Some(v) => state
                .config
                .remote_tasks()
                .find(|(name, _)| *name == &*v.task)
                .map(|(_, queue)| queue.to_string()),
        };
        let outcome = match &remote {
            Some(queue) => broker.revoke_queued(task_id, queue).await,
            None => broker.revoke(task_id).await,
        };
        return match outcome.map_err(unavailable)? {
            Ok(view) => {
                if let Some(reg) = state.registry.get(&view.task) {
                    crate::metrics::finished(
                        &state.pools[reg.pool].name,
                        &crate::store::Finished {
                            task: view.task.clone(),
                            state: TaskState::Revoked,
                            latency: humantime::parse_rfc3339_weak(&view.submitted_at)
                                .ok()
                                .and_then(|t| t.elapsed().ok())
                                .unwrap_or_default(),
                        },
                    );
                }
                Ok(view)
            }
            Err(StoreError::NotFound) => Err(ApiError::TaskNotFound(id)),
            Err(StoreError::WrongState(s)) => Err(ApiError::NotRevocable(s)),
        };
    }
    match state.store.revoke(task_id) {
        Ok((view, finished)) => {
            if let Some(reg) = state.registry.get(&finished.task) {
                crate::metrics::finished(&state.pools[reg.pool].name, &finished);
            }
            Ok(view)
        }
        Err(StoreError::NotFound) => Err(ApiError::TaskNotFound(id)),
        Err(StoreError::WrongState(s)) => Err(ApiError::NotRevocable(s)),
    }
}
