//! Task routes: submit, batch submit, poll (long-poll) and revoke.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use warp::http::{HeaderValue, StatusCode, header};
use warp::{Filter, Rejection};

use super::body::{parse_json, parse_object};
use super::responses::{
    BadRequest, LengthRequired, PayloadTooLarge, QueueFull, TaskNotFound, Unavailable,
};
use super::{Reply, WaitQuery, json_body, json_reply, no_query, wait_param, with_state};
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;
use crate::store::{TaskId, TaskState, TaskView};

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

fn wait_duration(state: &AppState, wait: Option<f64>) -> Option<Duration> {
    wait.filter(|w| *w > 0.0)
        .map(|w| crate::config::secs(w.min(state.config.server.max_wait_seconds)))
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
    let id = state
        .backend
        .submit(&task, vec![input])
        .await
        .map_err(reject)?[0];
    if let Some(wait) = wait_duration(&state, wait)
        && let Some(view) = state.backend.wait(&id, wait).await.map_err(reject)?
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
    let req: BatchRequest = parse_object(&body).map_err(reject)?;
    if req.inputs.is_empty() {
        return Err(reject(ApiError::InvalidBody(
            "`inputs` must hold at least one input".into(),
        )));
    }
    let inputs = req.inputs.into_iter().map(|TaskInput(v)| v).collect();
    let ids = state.backend.submit(&task, inputs).await.map_err(reject)?;
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
    let view = match wait_duration(&state, wait) {
        Some(wait) => state.backend.wait(&task_id, wait).await,
        None => state.backend.get(&task_id).await,
    }
    .map_err(reject)?;
    let view = view.ok_or_else(|| reject(ApiError::TaskNotFound(id)))?;
    Ok(json_reply(StatusCode::OK, &view))
}

async fn revoke_handler(id: String, state: Arc<AppState>) -> Result<Reply, Rejection> {
    let task_id = parse_id(&id).map_err(reject)?;
    match state.backend.revoke(&task_id).await {
        Ok(view) => Ok(json_reply(StatusCode::OK, &view)),
        Err(ApiError::TaskNotFound(_)) => Err(reject(ApiError::TaskNotFound(id))),
        Err(e) => Err(reject(e)),
    }
}
