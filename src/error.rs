//! API errors: one table from error to HTTP status and a stable `code`.
//!
//! Every error leaves the server as JSON `{"error": "...", "code": "snake_case"}`;
//! 429 and 503 carry `Retry-After`.

use serde::Serialize;
use utoipa::ToSchema;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use warp::http::StatusCode;

use crate::store::TaskState;

/// An error answered to an HTTP client.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// The body is not valid JSON.
    #[error("request body is not valid JSON: {0}")]
    InvalidJson(String),
    /// The body is JSON but not of the expected shape.
    #[error("{0}")]
    InvalidBody(String),
    /// `content-type` is not `application/json`.
    #[error("content-type must be application/json, got `{0}`")]
    UnsupportedContentType(String),
    /// A query parameter is unknown or malformed.
    #[error("{0}")]
    InvalidParameter(String),
    /// The task rejected the input.
    #[error("invalid input for `{task}`: {message}")]
    InvalidInput {
        /// The task name.
        task: String,
        /// What is wrong.
        message: String,
    },
    /// No task is registered under that name.
    #[error("no task named `{name}`; registered tasks: {known}")]
    UnknownTask {
        /// The name asked for.
        name: String,
        /// The registered names, comma-separated.
        known: String,
    },
    /// No task has that id, or its result expired.
    #[error("no task with id `{0}` (never issued, or its result expired)")]
    TaskNotFound(String),
    /// Revoking a task that already started or finished.
    #[error("task is {} and can no longer be revoked", .0.as_str())]
    NotRevocable(TaskState),
    /// The body is over `server.body_limit_bytes`.
    #[error("request body is over the limit of {0} bytes (server.body_limit_bytes)")]
    PayloadTooLarge(u64),
    /// The body came without a `content-length`.
    #[error("a content-length header is required")]
    LengthRequired,
    /// The pool's queue is full.
    #[error("queue of pool `{0}` is full; retry later")]
    QueueFull(String),
    /// The server is draining for shutdown.
    #[error("server is shutting down and accepts no new tasks")]
    ShuttingDown,
    /// The pool has no live worker and none is coming back.
    #[error("pool `{0}` has no live worker")]
    NoLiveWorker(String),
    /// No route matches the path.
    #[error("no route for this path")]
    RouteNotFound,
    /// The path exists but not with this method.
    #[error("method not allowed for this path; allowed: {0}")]
    MethodNotAllowed(String),
    /// The admin API has no token configured.
    #[error("the admin API is disabled: set server.admin_token or CELERIAC_ADMIN_TOKEN")]
    AdminDisabled,
    /// Missing or wrong bearer token.
    #[error("missing or wrong bearer token (Authorization: Bearer <token>)")]
    Unauthorized,
    /// No pool has that name.
    #[error("no pool named `{name}`; pools: {known}")]
    UnknownPool {
        /// The name asked for.
        name: String,
        /// The pool names, comma-separated.
        known: String,
    },
    /// A well-formed value out of its allowed range.
    #[error("{0}")]
    InvalidValue(String),
    /// A task route asked of a `celeriac worker` node.
    #[error(
        "this node is a `celeriac worker` and serves no task routes: submit and poll on a `celeriac serve` node"
    )]
    WorkerNode,
    /// The broker (Redis) could not be reached.
    #[error("the task broker is unreachable ({0}); retry later")]
    BrokerUnavailable(String),
    /// `server.api_keys` is set and the request's bearer key is missing or not one of them.
    #[error("missing or wrong API key (Authorization: Bearer <key>, one of server.api_keys)")]
    InvalidApiKey,
    /// A synchronous route (OpenAI, TEI) was given more inputs than one request may hold.
    #[error("{given} inputs in one request; the limit is {max}")]
    TooManyInputs {
        /// How many the request holds.
        given: usize,
        /// The most one request may hold.
        max: usize,
    },
    /// An input over the model's maximum input length, where the request asked not to
    /// truncate it (TEI's `truncate: false`); TEI's words.
    #[error("Input validation error: `inputs` must have less than {max} tokens. Given: {given}")]
    InputTooLong {
        /// Tokens of the longest sequence, before truncation.
        given: usize,
        /// The most the model reads.
        max: usize,
    },
    /// A synchronous route's task failed (or was revoked): the model's error.
    #[error("the model failed: {0}")]
    TaskFailed(String),
    /// A synchronous route's tasks were not all final within `server.max_wait_seconds`.
    #[error(
        "the answer was not ready within server.max_wait_seconds ({0} s); the tasks not yet started were revoked"
    )]
    WaitTimeout(f64),
    /// No task answers this synchronous route (none of its kind, or several and none
    /// named in `[api]`).
    #[error("{0}")]
    NotServed(String),
    /// A bug; logged.
    #[error("internal error")]
    Internal,
}

impl warp::reject::Reject for ApiError {}

impl ApiError {
    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        use ApiError::*;
        match self {
            InvalidJson(_) | InvalidBody(_) | UnsupportedContentType(_) | InvalidParameter(_) => {
                StatusCode::BAD_REQUEST
            }
            InvalidInput { .. } | InvalidValue(_) => StatusCode::UNPROCESSABLE_ENTITY,
            UnknownTask { .. }
            | TaskNotFound(_)
            | RouteNotFound
            | UnknownPool { .. }
            | WorkerNode
            | NotServed(_) => StatusCode::NOT_FOUND,
            AdminDisabled => StatusCode::FORBIDDEN,
            Unauthorized | InvalidApiKey => StatusCode::UNAUTHORIZED,
            TooManyInputs { .. } | InputTooLong { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            TaskFailed(_) => StatusCode::FAILED_DEPENDENCY,
            WaitTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            NotRevocable(_) => StatusCode::CONFLICT,
            PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            LengthRequired => StatusCode::LENGTH_REQUIRED,
            QueueFull(_) => StatusCode::TOO_MANY_REQUESTS,
            ShuttingDown | NoLiveWorker(_) | BrokerUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Every code [`ApiError::code`] can return, for documentation and for
    /// registering the rejection counters at zero.
    pub const CODES: &'static [&'static str] = &[
        "invalid_json",
        "invalid_body",
        "unsupported_content_type",
        "invalid_parameter",
        "invalid_input",
        "unknown_task",
        "task_not_found",
        "not_revocable",
        "payload_too_large",
        "length_required",
        "queue_full",
        "shutting_down",
        "no_live_worker",
        "not_found",
        "method_not_allowed",
        "admin_disabled",
        "unauthorized",
        "unknown_pool",
        "invalid_value",
        "worker_node",
        "broker_unavailable",
        "invalid_api_key",
        "too_many_inputs",
        "input_too_long",
        "task_failed",
        "timeout",
        "not_served",
        "internal",
    ];

    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        use ApiError::*;
        match self {
            InvalidJson(_) => "invalid_json",
            InvalidBody(_) => "invalid_body",
            UnsupportedContentType(_) => "unsupported_content_type",
            InvalidParameter(_) => "invalid_parameter",
            InvalidInput { .. } => "invalid_input",
            UnknownTask { .. } => "unknown_task",
            TaskNotFound(_) => "task_not_found",
            NotRevocable(_) => "not_revocable",
            PayloadTooLarge(_) => "payload_too_large",
            LengthRequired => "length_required",
            QueueFull(_) => "queue_full",
            ShuttingDown => "shutting_down",
            NoLiveWorker(_) => "no_live_worker",
            RouteNotFound => "not_found",
            MethodNotAllowed(_) => "method_not_allowed",
            AdminDisabled => "admin_disabled",
            Unauthorized => "unauthorized",
            UnknownPool { .. } => "unknown_pool",
            InvalidValue(_) => "invalid_value",
            WorkerNode => "worker_node",
            BrokerUnavailable(_) => "broker_unavailable",
            InvalidApiKey => "invalid_api_key",
            TooManyInputs { .. } => "too_many_inputs",
            InputTooLong { .. } => "input_too_long",
            TaskFailed(_) => "task_failed",
            WaitTimeout(_) => "timeout",
            NotServed(_) => "not_served",
            Internal => "internal",
        }
    }

    /// Seconds for a `Retry-After` header, where the client should come back.
    pub fn retry_after(&self) -> Option<u32> {
        match self {
            ApiError::QueueFull(_) | ApiError::BrokerUnavailable(_) => Some(1),
            ApiError::ShuttingDown | ApiError::NoLiveWorker(_) => Some(5),
            _ => None,
        }
    }
}

/// The JSON body of every error answer.
// `deny_unknown_fields` only closes the OpenAPI schema: this type is never deserialized.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Error, example = json!({
    "error": "no task named `nope`; registered tasks: debug.echo",
    "code": "unknown_task"
}))]
pub struct ErrorBody {
    /// A message for people.
    pub error: String,
    /// A stable machine-readable code: one of [`ApiError::CODES`].
    #[schema(schema_with = code_schema)]
    pub code: &'static str,
}

impl From<&ApiError> for ErrorBody {
    fn from(e: &ApiError) -> Self {
        ErrorBody {
            error: e.to_string(),
            code: e.code(),
        }
    }
}

/// `Error.code`: a string, one of [`ApiError::CODES`].
fn code_schema() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some("A stable machine-readable code."))
        .enum_values(Some(ApiError::CODES.iter().copied()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_listed() {
        let s = || "x".to_string();
        let all = [
            ApiError::InvalidJson(s()),
            ApiError::InvalidBody(s()),
            ApiError::UnsupportedContentType(s()),
            ApiError::InvalidParameter(s()),
            ApiError::InvalidInput {
                task: s(),
                message: s(),
            },
            ApiError::UnknownTask {
                name: s(),
                known: s(),
            },
            ApiError::TaskNotFound(s()),
            ApiError::NotRevocable(TaskState::Started),
            ApiError::PayloadTooLarge(1),
            ApiError::LengthRequired,
            ApiError::QueueFull(s()),
            ApiError::ShuttingDown,
            ApiError::NoLiveWorker(s()),
            ApiError::RouteNotFound,
            ApiError::MethodNotAllowed(s()),
            ApiError::AdminDisabled,
            ApiError::Unauthorized,
            ApiError::UnknownPool {
                name: s(),
                known: s(),
            },
            ApiError::InvalidValue(s()),
            ApiError::WorkerNode,
            ApiError::BrokerUnavailable(s()),
            ApiError::InvalidApiKey,
            ApiError::TooManyInputs { given: 2, max: 1 },
            ApiError::InputTooLong { given: 2, max: 1 },
            ApiError::TaskFailed(s()),
            ApiError::WaitTimeout(1.0),
            ApiError::NotServed(s()),
            ApiError::Internal,
        ];
        let codes: Vec<&str> = all.iter().map(ApiError::code).collect();
        assert_eq!(codes, ApiError::CODES);
    }

    #[test]
    fn codes_are_snake_case_and_statuses_match_the_table() {
        let cases = [
            (ApiError::InvalidJson("x".into()), 400),
            (
                ApiError::InvalidInput {
                    task: "t".into(),
                    message: "m".into(),
                },
                422,
            ),
            (ApiError::TaskNotFound("x".into()), 404),
            (ApiError::PayloadTooLarge(1), 413),
            (ApiError::QueueFull("p".into()), 429),
            (ApiError::ShuttingDown, 503),
            (ApiError::NoLiveWorker("p".into()), 503),
            (ApiError::BrokerUnavailable("down".into()), 503),
            (ApiError::NotRevocable(TaskState::Started), 409),
        ];
        for (e, status) in cases {
            assert_eq!(e.status().as_u16(), status, "{e:?}");
            assert!(e.code().chars().all(|c| c.is_ascii_lowercase() || c == '_'));
        }
        assert_eq!(ApiError::QueueFull("p".into()).retry_after(), Some(1));
        assert!(
            ApiError::NotRevocable(TaskState::Success)
                .to_string()
                .contains("SUCCESS")
        );
    }
}
