//! OpenAI's `POST /v1/embeddings`, answered by an `embeddings` task: each input one
//! task, all of a request's inputs one batch submit ([`super::call`]). Errors in
//! OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with OpenAI's
//! statuses (400 for what we answer 422 elsewhere, 500 for a failed model).

use std::convert::Infallible;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{AnyOfBuilder, ArrayBuilder, ObjectBuilder, Schema, Type};
use warp::http::StatusCode;
use warp::{Filter, Rejection};

use super::body::{optional_count, parse_object, whole_value};
use super::call;
use super::{Reply, api_error, api_key, json_body, json_reply, with_state};
use crate::config::ApiRoute;
use crate::error::ApiError;
use crate::state::AppState;
use crate::task::checkpoint::MAX_ITEMS;

/// The body of `POST /v1/embeddings`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct EmbeddingsRequest {
    /// A string, a list of strings, a list of token ids, or a list of lists of token
    /// ids (ids of the task's own vocabulary: decoded, then tokenized again); at most
    /// 1024 inputs.
    #[schema(schema_with = input_schema)]
    input: Value,
    /// A task name. A name that is no `embeddings` task is answered by the task that
    /// `api.embed` names, or by the only `embeddings` task; the answer's `model` says
    /// which.
    model: String,
    /// `float` (default) or `base64`: the little-endian float32 bytes of each vector.
    #[serde(default)]
    encoding_format: Option<EncodingFormat>,
    /// Keep the first this many values of each vector (renormalised when the task's
    /// vectors are unit length); at most the model's width.
    #[serde(default, deserialize_with = "optional_count")]
    #[schema(minimum = 1)]
    dimensions: Option<usize>,
    /// Accepted and ignored.
    #[serde(default)]
    #[allow(dead_code)]
    user: Option<String>,
}

/// `input`'s shapes: a string, strings, token ids, or lists of token ids (1 to 1024 of
/// them). What the task then refuses (a blank text, an id outside its vocabulary) the
/// document cannot state.
fn input_schema() -> AnyOfBuilder {
    let text = || ObjectBuilder::new().schema_type(Type::String);
    let ids = || {
        ArrayBuilder::new()
            .items(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(utoipa::Number::UInt(0))),
            )
            .min_items(Some(1))
    };
    let list = |items: RefOr<Schema>| {
        ArrayBuilder::new()
            .items(items)
            .min_items(Some(1))
            .max_items(Some(MAX_ITEMS))
    };
    AnyOfBuilder::new()
        .item(text())
        .item(list(text().into()))
        .item(ids())
        .item(list(ids().into()))
        .description(Some(
            "A string, a list of strings, a list of token ids, or a list of lists of token ids.",
        ))
}

/// How vectors are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(super) enum EncodingFormat {
    /// A JSON array of numbers.
    Float,
    /// A base64 string of the little-endian float32 bytes.
    Base64,
}

/// The answer to `POST /v1/embeddings`.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct EmbeddingList {
    /// Always `list`.
    object: &'static str,
    /// One per input, in input order.
    data: Vec<Embedding>,
    /// The task that answered.
    model: String,
    /// Tokens the model read.
    usage: Usage,
}

/// One input's vector.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Embedding {
    /// Always `embedding`.
    object: &'static str,
    /// The input's position in the request.
    index: usize,
    /// A list of numbers, or with `encoding_format: base64` a base64 string.
    #[schema(value_type = Value)]
    embedding: Value,
}

/// Tokens the model read for a request (special tokens included, after truncation).
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Usage {
    /// Tokens of every input.
    prompt_tokens: u64,
    /// The same: embeddings generate nothing.
    total_tokens: u64,
}

/// An error in OpenAI's shape.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"error": {"message": "invalid input for `t.embed`: inputs[1]: field `text` is empty", "type": "invalid_request_error", "param": "input", "code": "invalid_input"}}))]
pub(super) struct OpenAiError {
    error: OpenAiErrorDetail,
}

/// What an OpenAI error says.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct OpenAiErrorDetail {
    /// For people.
    message: String,
    /// `invalid_request_error`, `rate_limit_error` or `server_error`.
    #[serde(rename = "type")]
    kind: &'static str,
    /// The request field at fault, where one is.
    param: Option<&'static str>,
    /// `model_not_found`, `rate_limit_exceeded`, or one of celeriac's error codes.
    code: &'static str,
}

/// `POST /v1/embeddings`
#[utoipa::path(
    post,
    path = "/v1/embeddings",
    operation_id = "openaiEmbeddings",
    summary = "OpenAI's embeddings API",
    description = "Answered by an `embeddings` task, as OpenAI answers: the inputs go as one \
                   batch submit (all or none), the request waits for them (at most \
                   `server.max_wait_seconds`), and a client that disconnects leaves no queued \
                   work behind. With `server.api_keys`, needs `Authorization: Bearer KEY`.",
    request_body(
        content = EmbeddingsRequest,
        example = json!({"input": ["a first text", "a second"], "model": "t.embed"}),
    ),
    responses(
        (status = 200, description = "One vector per input.", body = EmbeddingList),
        (status = 400, description = "Invalid JSON, an unknown field, an input the task refuses, more than 1024 inputs, or a bad `dimensions`.", body = OpenAiError),
        (status = 401, description = "`invalid_api_key`.", body = OpenAiError),
        (status = 404, description = "`model_not_found`: no `embeddings` task answers (none, or several and `model` names none of them), or this node is a `celeriac worker`.", body = OpenAiError),
        (status = 411, description = "`length_required`.", body = OpenAiError),
        (status = 413, description = "`payload_too_large`: the body is over `server.body_limit_bytes`.", body = OpenAiError),
        (status = 429, description = "`rate_limit_exceeded`: the pool's queue has no room for every input.", body = OpenAiError),
        (status = 500, description = "`task_failed`: the model failed on an input.", body = OpenAiError),
        (status = 503, description = "`shutting_down`, `no_live_worker` or `broker_unavailable`.", body = OpenAiError),
        (status = 504, description = "`timeout`: not every answer was ready within `server.max_wait_seconds`.", body = OpenAiError),
    ),
)]
pub fn embeddings(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Reply,), Error = Rejection> + Clone {
    let limit = state.config.server.body_limit_bytes;
    warp::path!("v1" / "embeddings").and(warp::post()).and(
        api_key(state.clone())
            .and(json_body(limit))
            .and(with_state(state))
            .and_then(|body: Bytes, state: Arc<AppState>| async move {
                handle(body, state).await.map_err(warp::reject::custom)
            })
            .recover(move |r: Rejection| async move {
                Ok::<_, Infallible>(error_reply(&api_error(&r, limit)))
            })
            .unify(),
    )
}

async fn handle(body: Bytes, state: Arc<AppState>) -> Result<Reply, ApiError> {
    let req: EmbeddingsRequest = parse_object(&body)?;
    let task = model_task(&state, &req.model)?;
    let texts = texts(&state, &task, &req.input)?;
    let describe = state
        .registry
        .get(&task)
        .and_then(|r| r.factory.describe())
        .unwrap_or(Value::Null);
    let width = describe["dimensions"].as_u64().map(|d| d as usize);
    if let Some(d) = req.dimensions
        && (d == 0 || width.is_some_and(|w| d > w))
    {
        return Err(ApiError::InvalidValue(format!(
            "`dimensions` must be 1 to {} for `{task}`, got {d}",
            width.unwrap_or(d)
        )));
    }
    let unit = describe["normalize"].as_bool() == Some(true);
    let inputs = texts.into_iter().map(|t| json!({ "text": t })).collect();
    let results = call::run(&state, &task, inputs).await?;
    let mut tokens = 0;
    let mut data = Vec::with_capacity(results.len());
    for (index, mut r) in results.into_iter().enumerate() {
        tokens += r["tokens"].as_u64().unwrap_or(0);
        // Moved out of the task's answer, not copied.
        let vector = r.get_mut("embedding").map_or(Value::Null, Value::take);
        let embedding = match (req.dimensions, req.encoding_format) {
            (None, None | Some(EncodingFormat::Float)) => vector,
            (dims, format) => {
                let v = shorten(floats(&vector), dims, unit);
                if format == Some(EncodingFormat::Base64) {
                    Value::String(base64_f32(&v))
                } else {
                    json!(v)
                }
            }
        };
        data.push(Embedding {
            object: "embedding",
            index,
            embedding,
        });
    }
    Ok(json_reply(
        StatusCode::OK,
        &EmbeddingList {
            object: "list",
            data,
            model: task,
            usage: Usage {
                prompt_tokens: tokens,
                total_tokens: tokens,
            },
        },
    ))
}

/// The task for `model`: the `embeddings` task of that name, else the route's default.
fn model_task(state: &AppState, model: &str) -> Result<String, ApiError> {
    if state.role == crate::state::Role::Worker {
        return Err(ApiError::WorkerNode);
    }
    if state
        .config
        .tasks
        .get(model)
        .is_some_and(|s| s.kind == ApiRoute::Embed.kind())
        && state.registry.get(model).is_some()
    {
        return Ok(model.to_string());
    }
    call::task_for(state, ApiRoute::Embed).map_err(|e| match e {
        ApiError::NotServed(why) => {
            ApiError::NotServed(format!("no `embeddings` task named `{model}`, and {why}"))
        }
        other => other,
    })
}

/// The texts of `input`: a string, strings, token ids, or lists of token ids.
fn texts(state: &AppState, task: &str, input: &Value) -> Result<Vec<String>, ApiError> {
    let shape = || {
        ApiError::InvalidBody(
            "`input` must be a string, a list of strings, a list of token ids, or a list of \
             lists of token ids"
                .into(),
        )
    };
    let ids = |v: &Value| -> Option<Vec<u32>> {
        v.as_array()?
            .iter()
            .map(|x| whole_value(x).and_then(|x| u32::try_from(x).ok()))
            .collect()
    };
    let decode = |ids: Vec<u32>, i: usize| -> Result<String, ApiError> {
        let reg = state
            .registry
            .get(task)
            .ok_or_else(|| ApiError::InvalidInput {
                task: task.to_string(),
                message: "token ids need a task this node loads; send text".into(),
            })?;
        reg.factory
            .detokenize(&ids)
            .map_err(|message| ApiError::InvalidInput {
                task: task.to_string(),
                message: format!("input[{i}]: {message}"),
            })
    };
    let items = match input {
        Value::String(s) => return Ok(vec![s.clone()]),
        Value::Array(items) => items,
        _ => return Err(shape()),
    };
    if items.is_empty() {
        return Err(ApiError::InvalidBody("`input` is empty".into()));
    }
    if items.len() > MAX_ITEMS {
        return Err(ApiError::TooManyInputs {
            given: items.len(),
            max: MAX_ITEMS,
        });
    }
    if items.iter().all(Value::is_number) {
        return Ok(vec![decode(ids(input).ok_or_else(shape)?, 0)?]);
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::String(s) => Ok(s.clone()),
            Value::Array(_) => decode(ids(item).ok_or_else(shape)?, i),
            _ => Err(shape()),
        })
        .collect()
}

/// A JSON array of numbers as f32.
pub(super) fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_f64)
                .map(|x| x as f32)
                .collect()
        })
        .unwrap_or_default()
}

/// The first `dims` values (all without), L2-normalised again when `unit`.
pub(super) fn shorten(mut v: Vec<f32>, dims: Option<usize>, unit: bool) -> Vec<f32> {
    if let Some(d) = dims
        && d < v.len()
    {
        v.truncate(d);
        if unit {
            normalize(&mut v);
        }
    }
    v
}

/// Scales `v` to unit length (a zero vector stays zero).
pub(super) fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

/// OpenAI's base64 vectors: the little-endian float32 bytes, standard base64.
fn base64_f32(v: &[f32]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `err` in OpenAI's shape and statuses, with our headers, counted.
fn error_reply(err: &ApiError) -> Reply {
    let status = match err.status() {
        // OpenAI answers 400 for what it refuses in a body, too many inputs included.
        StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
        _ if matches!(err, ApiError::TooManyInputs { .. }) => StatusCode::BAD_REQUEST,
        StatusCode::FAILED_DEPENDENCY => StatusCode::INTERNAL_SERVER_ERROR,
        s => s,
    };
    let kind = match status.as_u16() {
        429 => "rate_limit_error",
        500.. => "server_error",
        _ => "invalid_request_error",
    };
    let (param, code) = match err {
        ApiError::NotServed(_) | ApiError::UnknownTask { .. } | ApiError::WorkerNode => {
            (Some("model"), "model_not_found")
        }
        ApiError::QueueFull(_) => (None, "rate_limit_exceeded"),
        ApiError::InvalidInput { .. } | ApiError::TooManyInputs { .. } => {
            (Some("input"), err.code())
        }
        ApiError::InvalidValue(_) => (Some("dimensions"), err.code()),
        _ => (None, err.code()),
    };
    let body = OpenAiError {
        error: OpenAiErrorDetail {
            message: err.to_string(),
            kind,
            param,
            code,
        },
    };
    call::error_reply(err, status, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_little_endian_f32() {
        let s = base64_f32(&[1.0, -2.5]);
        let bytes = base64::engine::general_purpose::STANDARD.decode(s).unwrap();
        assert_eq!(
            bytes,
            [1.0f32.to_le_bytes(), (-2.5f32).to_le_bytes()].concat()
        );
    }

    #[test]
    fn shortening_keeps_unit_vectors_unit() {
        let v = shorten(vec![0.6, 0.0, 0.8], Some(1), true);
        assert_eq!(v, [1.0]);
        assert_eq!(shorten(vec![3.0, 4.0], Some(1), false), [3.0]);
        assert_eq!(shorten(vec![3.0, 4.0], Some(5), true), [3.0, 4.0]);
    }
}
