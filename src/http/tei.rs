//! Hugging Face text-embeddings-inference's routes: `POST /embed` (an `embeddings`
//! task), `POST /rerank` (a `reranker` task), `POST /predict` (a `text_classifier`
//! task), `POST /` (one of the three, by the kind served) and `GET /info`, with TEI's
//! answer shapes, its error shape `{"error", "error_type"}` and its statuses (413 too
//! many inputs or an input too long, 422 validation, 424 a model error, 429
//! overloaded). Each input is one task; a request's inputs are one batch submit
//! ([`super::call`]). Which task answers a route: `[api]`, else the only task of its
//! kind.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{AnyOfBuilder, ArrayBuilder, Schema};
use utoipa::openapi::{Content, Ref, RefOr};
use utoipa::{IntoResponses, PartialSchema, ToSchema};
use warp::http::StatusCode;
use warp::{Filter, Rejection};

use super::body::{optional_count, optional_object, parse_object};
use super::openai::{floats, normalize, shorten};
use super::{Reply, api_error, api_key, call, json_body, json_reply, with_state};
use crate::config::ApiRoute;
use crate::error::ApiError;
use crate::model::heads;
use crate::state::AppState;
use crate::task::checkpoint::MAX_ITEMS;

/// The body of `POST /embed`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct EmbedRequest {
    /// A string or a list of strings (at most 1024).
    #[schema(value_type = Value)]
    inputs: Value,
    /// L2-normalise each vector (default true). `false` sends the task's vectors as
    /// it makes them (unit length when its checkpoint normalises).
    #[serde(default = "yes")]
    normalize: bool,
    /// Truncate an input over the model's maximum input length (`true`), or refuse it
    /// with 413 (`false`). Absent: `api.auto_truncate` (default true).
    #[serde(default)]
    truncate: Option<bool>,
    /// `right` only (where truncation cuts).
    #[serde(default)]
    truncation_direction: Option<String>,
    /// Not supported: must be absent or null.
    #[serde(default)]
    prompt_name: Option<String>,
    /// Keep the first this many values of each vector.
    #[serde(default, deserialize_with = "optional_count")]
    #[schema(minimum = 1)]
    dimensions: Option<usize>,
    /// `float` only.
    #[serde(default)]
    encoding_format: Option<String>,
}

fn yes() -> bool {
    true
}

/// The body of `POST /rerank`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RerankRequest {
    /// The query.
    query: String,
    /// The documents to score against it (at most 1024).
    texts: Vec<String>,
    /// Send the cross-encoder's logit instead of its sigmoid.
    #[serde(default)]
    raw_scores: bool,
    /// Send each document's text with its score.
    #[serde(default)]
    return_text: bool,
    /// Truncate a (query, text) pair over the model's maximum input length (`true`),
    /// or refuse it with 413 (`false`). Absent: `api.auto_truncate` (default true).
    #[serde(default)]
    truncate: Option<bool>,
    /// `right` only.
    #[serde(default)]
    truncation_direction: Option<String>,
}

/// The body of `POST /predict`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PredictRequest {
    /// A text, a pair `[text, text_pair]`, or a list of those (`[[a], [a, b], ...]`,
    /// at most 1024); a list of two strings is a pair, as in TEI.
    #[schema(value_type = Value)]
    inputs: Value,
    /// Send the logits instead of the probabilities.
    #[serde(default)]
    raw_scores: bool,
    /// Truncate an input over the model's maximum input length (`true`), or refuse it
    /// with 413 (`false`). Absent: `api.auto_truncate` (default true).
    #[serde(default)]
    truncate: Option<bool>,
    /// `right` only.
    #[serde(default)]
    truncation_direction: Option<String>,
    /// What `huggingface_hub`'s `text_classification` sends.
    #[serde(default, deserialize_with = "optional_object")]
    parameters: Option<PredictParameters>,
}

/// `parameters` of `POST /predict`, as Hugging Face's inference clients send them.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PredictParameters {
    /// `softmax`, `sigmoid` or `none` (the logits); absent: the model's own.
    #[serde(default)]
    function_to_apply: Option<String>,
    /// Send only the best this many labels.
    #[serde(default, deserialize_with = "optional_count")]
    top_k: Option<usize>,
}

/// One document's score, as `POST /rerank` answers.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Rank {
    /// The document's position in `texts`.
    index: usize,
    /// Its score (sigmoid, or the logit with `raw_scores`).
    score: f32,
    /// The document, with `return_text`.
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<String>,
}

/// One label's score, as `POST /predict` answers.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Prediction {
    /// The label.
    label: String,
    /// Its probability (or logit).
    score: f32,
}

/// What `GET /info` says about the model of the route `POST /` answers as (`api.root`),
/// else of this server's first served route (`/embed`, then `/rerank`, then
/// `/predict`), in TEI's shape.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Info {
    /// The task's model: its directory or `hf:ORG/NAME`.
    model_id: String,
    /// Unknown: null.
    model_sha: Option<String>,
    /// The precision of its dense layers (`f32`, `bf16`, `int8`).
    model_dtype: String,
    /// `{"embedding": {"pooling"}}`, `{"reranker": {"id2label", "label2id"}}` or
    /// `{"classifier": {"id2label", "label2id"}}`.
    #[schema(value_type = Object)]
    model_type: Value,
    /// The task's pool's `queue_capacity`.
    max_concurrent_requests: usize,
    /// Tokens per input; longer inputs are truncated, or refused with `truncate: false`.
    max_input_length: usize,
    /// The pool's `max_batch_tokens` (0: no limit).
    max_batch_tokens: usize,
    /// The pool's `max_batch_size`.
    max_batch_requests: usize,
    /// Most inputs in one request.
    max_client_batch_size: usize,
    /// What a request without `truncate` gets (`api.auto_truncate`): true, inputs are
    /// truncated at `max_input_length`; false, longer ones are refused (413).
    auto_truncate: bool,
    /// celeriac's version.
    version: &'static str,
    /// The task that answers (celeriac's).
    task: String,
}

/// An error in TEI's shape.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"error": "2000 inputs in one request; the limit is 1024", "error_type": "validation"}))]
pub(super) struct TeiError {
    /// For people.
    error: String,
    /// `validation`, `backend`, `overloaded`, `unhealthy`, or one of celeriac's error
    /// codes.
    error_type: &'static str,
}

/// The body of `POST /`: that of the route it answers as (`anyOf` the three). A schema
/// only: the route, not the body, decides how the body is read.
pub(super) struct RootRequest;

impl PartialSchema for RootRequest {
    fn schema() -> RefOr<Schema> {
        AnyOfBuilder::new()
            .item(Ref::from_schema_name(EmbedRequest::name()))
            .item(Ref::from_schema_name(RerankRequest::name()))
            .item(Ref::from_schema_name(PredictRequest::name()))
            .description(Some(
                "The body of `/embed`, `/rerank` or `/predict`: the route `POST /` answers as.",
            ))
            .into()
    }
}

impl ToSchema for RootRequest {}

/// The answer of `POST /predict`: for one text or pair, a list of predictions; for a
/// list of them, one such list per item.
pub(super) struct PredictAnswer;

impl PartialSchema for PredictAnswer {
    fn schema() -> RefOr<Schema> {
        let one = || ArrayBuilder::new().items(Ref::from_schema_name(Prediction::name()));
        AnyOfBuilder::new()
            .item(one())
            .item(ArrayBuilder::new().items(one()))
            .into()
    }
}

impl ToSchema for PredictAnswer {}

/// The answer of `POST /`: that of the route it answers as. A schema only.
pub(super) struct RootAnswer;

impl PartialSchema for RootAnswer {
    fn schema() -> RefOr<Schema> {
        AnyOfBuilder::new()
            .item(Vec::<Vec<f32>>::schema())
            .item(ArrayBuilder::new().items(Ref::from_schema_name(Rank::name())))
            .item(Ref::from_schema_name(PredictAnswer::name()))
            .into()
    }
}

impl ToSchema for RootAnswer {}

/// The error answers every TEI route with a body shares (`POST /embed`, `/rerank`,
/// `/predict`, `/`), each a [`TeiError`]: listed once, named in each route's
/// `responses(...)`.
pub(super) struct TeiErrors;

/// [`TeiErrors`]: status and description.
const TEI_ERRORS: &[(&str, &str)] = &[
    ("400", "`invalid_json`, `unsupported_content_type`."),
    ("401", "`invalid_api_key`."),
    (
        "404",
        "`not_served`: no task answers this route (the message says which setting to \
         change); `worker_node`.",
    ),
    ("411", "`length_required`."),
    (
        "413",
        "`validation`: more than 1024 inputs, an input over the model's maximum input \
         length with `truncate: false`, or a body over `server.body_limit_bytes`.",
    ),
    (
        "422",
        "`validation`: a bad field (the wrong type, an unknown field, `7.5` for a whole \
         number), or an input the task refuses.",
    ),
    ("424", "`backend`: the model failed."),
    (
        "429",
        "`overloaded`: the pool's queue has no room for every input.",
    ),
    (
        "503",
        "`unhealthy`: shutting down, no live worker, or the broker is unreachable.",
    ),
    (
        "504",
        "`timeout`: not every answer was ready within `server.max_wait_seconds`.",
    ),
];

impl IntoResponses for TeiErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        TEI_ERRORS
            .iter()
            .map(|(status, description)| {
                let response = ResponseBuilder::new()
                    .description(*description)
                    .content(
                        "application/json",
                        Content::new(Some(Ref::from_schema_name(TeiError::name()))),
                    )
                    .build();
                (status.to_string(), response.into())
            })
            .collect()
    }
}

/// Wraps a route's handler: the API key, then the handler; every rejection after the
/// path and method matched is answered in TEI's shape.
macro_rules! tei_route {
    ($state:expr, $path:expr, $method:expr, $handler:expr) => {{
        let state: Arc<AppState> = $state;
        let limit = state.config.server.body_limit_bytes;
        $path.and($method).and(
            api_key(state.clone())
                .and($handler(state))
                .recover(move |r: Rejection| async move {
                    Ok::<_, Infallible>(error_reply(&api_error(&r, limit)))
                })
                .unify(),
        )
    }};
}

/// A JSON body, then `f` on it; its error becomes a rejection.
fn with_body<F, Fut>(
    state: Arc<AppState>,
    f: F,
) -> impl Filter<Extract = (Reply,), Error = Rejection> + Clone
where
    F: Fn(Bytes, Arc<AppState>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Reply, ApiError>> + Send,
{
    json_body(state.config.server.body_limit_bytes)
        .and(with_state(state))
        .and_then(move |body: Bytes, state: Arc<AppState>| {
            let f = f.clone();
            async move { f(body, state).await.map_err(warp::reject::custom) }
        })
}

/// `POST /embed`
#[utoipa::path(
    post,
    path = "/embed",
    operation_id = "teiEmbed",
    summary = "TEI: embed texts",
    description = "Answered by the `embeddings` task `api.embed` names (else the only one). With \
                   `server.api_keys`, needs `Authorization: Bearer KEY`.",
    request_body(content = EmbedRequest, example = json!({"inputs": ["a first text", "a second"]})),
    responses(
        (status = 200, description = "One vector per input, in input order.", body = Vec<Vec<f32>>),
        TeiErrors,
    ),
)]
pub fn embed(state: Arc<AppState>) -> impl Filter<Extract = (Reply,), Error = Rejection> + Clone {
    tei_route!(state, warp::path!("embed"), warp::post(), |s| with_body(
        s,
        embed_handler
    ))
}

/// `POST /rerank`
#[utoipa::path(
    post,
    path = "/rerank",
    operation_id = "teiRerank",
    summary = "TEI: score documents against a query",
    description = "Answered by the `reranker` task `api.rerank` names (else the only one), as one \
                   task. With `server.api_keys`, needs `Authorization: Bearer KEY`.",
    request_body(content = RerankRequest, example = json!({"query": "what is celeriac?", "texts": ["a root vegetable", "a city"]})),
    responses(
        (status = 200, description = "Every document's score, best first.", body = Vec<Rank>),
        TeiErrors,
    ),
)]
pub fn rerank(state: Arc<AppState>) -> impl Filter<Extract = (Reply,), Error = Rejection> + Clone {
    tei_route!(state, warp::path!("rerank"), warp::post(), |s| with_body(
        s,
        rerank_handler
    ))
}

/// `POST /predict`
#[utoipa::path(
    post,
    path = "/predict",
    operation_id = "teiPredict",
    summary = "TEI: classify texts or text pairs",
    description = "Answered by the `text_classifier` task `api.predict` names (else the only \
                   one); each text or pair one task. With `server.api_keys`, needs \
                   `Authorization: Bearer KEY`.",
    request_body(content = PredictRequest, example = json!({"inputs": "I like you."})),
    responses(
        (status = 200, description = "For one text or pair, every label's score, best first; for a list, one such list per item.", body = PredictAnswer),
        TeiErrors,
    ),
)]
pub fn predict(state: Arc<AppState>) -> impl Filter<Extract = (Reply,), Error = Rejection> + Clone {
    tei_route!(state, warp::path!("predict"), warp::post(), |s| with_body(
        s,
        predict_handler
    ))
}

/// `POST /`
#[utoipa::path(
    post,
    path = "/",
    operation_id = "teiRoot",
    summary = "TEI: the route of the served model's kind",
    description = "As TEI's root route: answered as `/embed`, `/rerank` or `/predict`, the one of \
                   the three that has a task on this node (`api.root` names it when several \
                   do), with that route's body, answer and errors. With `server.api_keys`, \
                   needs `Authorization: Bearer KEY`.",
    request_body(content = RootRequest, example = json!({"inputs": "I like you."})),
    responses(
        (status = 200, description = "The answer of the route it answers as.", body = RootAnswer),
        TeiErrors,
    ),
)]
pub fn root(state: Arc<AppState>) -> impl Filter<Extract = (Reply,), Error = Rejection> + Clone {
    tei_route!(state, warp::path::end(), warp::post(), |s| with_body(
        s,
        root_handler
    ))
}

/// `GET /info`
#[utoipa::path(
    get,
    path = "/info",
    operation_id = "teiInfo",
    summary = "TEI: the served model",
    description = "The model of the route `POST /` answers as (`api.root`), else of the first \
                   route this server answers: `/embed`, else `/rerank`, else `/predict`.",
    responses(
        (status = 200, description = "The model and the limits it is served with.", body = Info),
        (status = 401, description = "`invalid_api_key`.", body = TeiError),
        (status = 404, description = "`not_served`: no route of TEI's is answered here; `worker_node`.", body = TeiError),
    ),
)]
pub fn info(state: Arc<AppState>) -> impl Filter<Extract = (Reply,), Error = Rejection> + Clone {
    tei_route!(state, warp::path!("info"), warp::get(), |s: Arc<
        AppState,
    >| with_state(
        s
    )
    .and_then(|state: Arc<AppState>| async move {
        info_answer(&state).map_err(warp::reject::custom)
    }))
}

/// The route `POST /` answers as: `api.root`, else the only one of `/embed`, `/rerank`
/// and `/predict` whose kind has a task here (that route then says which task answers,
/// or why none does).
fn root_route(state: &AppState) -> Result<ApiRoute, ApiError> {
    if state.role == crate::state::Role::Worker {
        return Err(ApiError::WorkerNode);
    }
    if let Some(route) = state.config.api.root {
        return Ok(route);
    }
    let served: Vec<ApiRoute> = [ApiRoute::Embed, ApiRoute::Rerank, ApiRoute::Predict]
        .into_iter()
        .filter(|&r| state.config.tasks.values().any(|t| t.kind == r.kind()))
        .collect();
    match served.as_slice() {
        [one] => Ok(*one),
        [] => Err(ApiError::NotServed(
            "`POST /` answers as /embed, /rerank or /predict, and none of them has a task \
             here (no task of kind `embeddings`, `reranker` or `text_classifier`)"
                .into(),
        )),
        several => Err(ApiError::NotServed(format!(
            "this node serves several kinds ({}): name the route `POST /` answers as in \
             `api.root`",
            several
                .iter()
                .map(|r| r.path())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

async fn root_handler(body: Bytes, state: Arc<AppState>) -> Result<Reply, ApiError> {
    match root_route(&state)? {
        ApiRoute::Embed => embed_handler(body, state).await,
        ApiRoute::Rerank => rerank_handler(body, state).await,
        ApiRoute::Predict => predict_handler(body, state).await,
    }
}

/// Refuses, when the request may not truncate (`truncate: false`, or no `truncate` and
/// `api.auto_truncate = false`), the first input with a sequence longer than the task's
/// model reads: 413, in TEI's words. Otherwise nothing is counted here, and long inputs
/// are truncated when the task tokenizes them at submit.
async fn check_length(
    state: &AppState,
    task: &str,
    truncate: Option<bool>,
    inputs: Vec<Value>,
) -> Result<Vec<Value>, ApiError> {
    if truncate.unwrap_or(state.config.api.auto_truncate) {
        return Ok(inputs);
    }
    let factory = state
        .registry
        .get(task)
        .map(|r| r.factory.clone())
        .ok_or_else(|| {
            ApiError::InvalidValue(format!(
                "`truncate: false` needs the tokenizer of task `{task}`, which this node does \
                 not load; send `truncate: true`"
            ))
        })?;
    // Tokenizing is CPU work: off the runtime's threads, as submit prepares a batch.
    tokio::task::spawn_blocking(move || {
        let over = inputs
            .iter()
            .filter_map(|i| factory.length_before_truncation(i))
            .find(|(given, max)| given > max);
        match over {
            Some((given, max)) => Err(ApiError::InputTooLong { given, max }),
            None => Ok(inputs),
        }
    })
    .await
    .map_err(|e| {
        tracing::error!("counting the tokens of a request's inputs failed: {e}");
        ApiError::Internal
    })?
}

/// Checks the fields every TEI route accepts but celeriac cannot honour otherwise.
fn check_truncation(direction: Option<&str>) -> Result<(), ApiError> {
    match direction {
        None => Ok(()),
        Some(d) if d.eq_ignore_ascii_case("right") => Ok(()),
        Some(d) => Err(ApiError::InvalidValue(format!(
            "`truncation_direction` `{d}` is not supported: inputs are truncated on the right"
        ))),
    }
}

/// `inputs` as a list of strings (a string alone is a list of one).
fn strings(inputs: &Value) -> Result<(Vec<String>, bool), ApiError> {
    let bad = || ApiError::InvalidValue("`inputs` must be a string or a list of strings".into());
    match inputs {
        Value::String(s) => Ok((vec![s.clone()], false)),
        Value::Array(items) => {
            let texts = items
                .iter()
                .map(|v| v.as_str().map(String::from).ok_or_else(bad))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((texts, true))
        }
        _ => Err(bad()),
    }
}

/// Refuses an empty request and one over the inputs a request may hold (413).
fn count(n: usize, field: &str) -> Result<(), ApiError> {
    if n == 0 {
        return Err(ApiError::InvalidValue(format!("`{field}` is empty")));
    }
    if n > MAX_ITEMS {
        return Err(ApiError::TooManyInputs {
            given: n,
            max: MAX_ITEMS,
        });
    }
    Ok(())
}

fn describe(state: &AppState, task: &str) -> Value {
    state
        .registry
        .get(task)
        .and_then(|r| r.factory.describe())
        .unwrap_or(Value::Null)
}

async fn embed_handler(body: Bytes, state: Arc<AppState>) -> Result<Reply, ApiError> {
    let req: EmbedRequest = parse_object(&body)?;
    check_truncation(req.truncation_direction.as_deref())?;
    if let Some(p) = &req.prompt_name {
        return Err(ApiError::InvalidValue(format!(
            "`prompt_name` `{p}` is not supported: the task has no prompts"
        )));
    }
    if let Some(f) = req.encoding_format.as_deref().filter(|f| *f != "float") {
        return Err(ApiError::InvalidValue(format!(
            "`encoding_format` `{f}` is not supported here: use `float`, or POST /v1/embeddings for base64"
        )));
    }
    let task = call::task_for(&state, ApiRoute::Embed)?;
    let (texts, _) = strings(&req.inputs)?;
    count(texts.len(), "inputs")?;
    let model = describe(&state, &task);
    if let (Some(d), Some(w)) = (req.dimensions, model["dimensions"].as_u64())
        && (d == 0 || d as u64 > w)
    {
        return Err(ApiError::InvalidValue(format!(
            "`dimensions` must be 1 to {w}, got {d}"
        )));
    }
    let unit = model["normalize"].as_bool() == Some(true);
    let inputs = texts.into_iter().map(|t| json!({ "text": t })).collect();
    let inputs = check_length(&state, &task, req.truncate, inputs).await?;
    let results = call::run(&state, &task, inputs).await?;
    let vectors: Vec<Value> = results
        .into_iter()
        .map(|mut r| {
            let v = r.get_mut("embedding").map_or(Value::Null, Value::take);
            // A unit vector the task made is sent as it is (the same numbers as
            // /v1/tasks); any other is shortened and normalised as asked.
            if req.dimensions.is_none() && (unit || !req.normalize) {
                return v;
            }
            let mut v = shorten(floats(&v), req.dimensions, unit);
            if req.normalize {
                normalize(&mut v);
            }
            json!(v)
        })
        .collect();
    Ok(json_reply(StatusCode::OK, &vectors))
}

async fn rerank_handler(body: Bytes, state: Arc<AppState>) -> Result<Reply, ApiError> {
    let req: RerankRequest = parse_object(&body)?;
    check_truncation(req.truncation_direction.as_deref())?;
    let task = call::task_for(&state, ApiRoute::Rerank)?;
    count(req.texts.len(), "texts")?;
    let input = json!({"query": req.query, "documents": req.texts, "raw_scores": req.raw_scores});
    let inputs = check_length(&state, &task, req.truncate, vec![input]).await?;
    let result = call::run(&state, &task, inputs)
        .await?
        .pop()
        .unwrap_or(Value::Null);
    let ranks: Vec<Rank> = result["results"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| {
            let index = r["index"].as_u64()? as usize;
            Some(Rank {
                index,
                score: r["score"].as_f64()? as f32,
                text: req
                    .return_text
                    .then(|| req.texts.get(index).cloned())
                    .flatten(),
            })
        })
        .collect();
    Ok(json_reply(StatusCode::OK, &ranks))
}

/// A text, or a text and its pair.
type Sequence = (String, Option<String>);

/// `inputs` of `/predict` as (text, pair) items, and whether it was a list of them.
fn sequences(inputs: &Value) -> Result<(Vec<Sequence>, bool), ApiError> {
    let bad = || {
        ApiError::InvalidValue(
            "`inputs` must be a text, a pair [text, text_pair], or a list of texts or pairs".into(),
        )
    };
    let one = |v: &Value| -> Result<Sequence, ApiError> {
        match v {
            Value::String(s) => Ok((s.clone(), None)),
            Value::Array(a) => match a.as_slice() {
                [Value::String(t)] => Ok((t.clone(), None)),
                [Value::String(t), Value::String(p)] => Ok((t.clone(), Some(p.clone()))),
                _ => Err(bad()),
            },
            _ => Err(bad()),
        }
    };
    match inputs {
        Value::String(_) => Ok((vec![one(inputs)?], false)),
        // Two strings are one pair, as TEI reads them.
        Value::Array(a) if a.len() == 2 && a.iter().all(Value::is_string) => {
            Ok((vec![one(inputs)?], false))
        }
        Value::Array(a) => Ok((a.iter().map(one).collect::<Result<_, _>>()?, true)),
        _ => Err(bad()),
    }
}

async fn predict_handler(body: Bytes, state: Arc<AppState>) -> Result<Reply, ApiError> {
    let req: PredictRequest = parse_object(&body)?;
    check_truncation(req.truncation_direction.as_deref())?;
    let task = call::task_for(&state, ApiRoute::Predict)?;
    let (items, batch) = sequences(&req.inputs)?;
    count(items.len(), "inputs")?;
    let (function, top_k) = match &req.parameters {
        Some(p) => (p.function_to_apply.as_deref(), p.top_k),
        None => (None, None),
    };
    if let Some(f) = function.filter(|f| !["softmax", "sigmoid", "none"].contains(f)) {
        return Err(ApiError::InvalidValue(format!(
            "`function_to_apply` must be `softmax`, `sigmoid` or `none`, got `{f}`"
        )));
    }
    // The logits are asked of the task only when they are needed.
    let logits = req.raw_scores || function.is_some();
    let inputs = items
        .into_iter()
        .map(|(text, pair)| {
            let mut input = Map::new();
            input.insert("text".into(), json!(text));
            if let Some(p) = pair {
                input.insert("text_pair".into(), json!(p));
            }
            if logits {
                input.insert("raw_scores".into(), json!(true));
            }
            Value::Object(input)
        })
        .collect();
    let inputs = check_length(&state, &task, req.truncate, inputs).await?;
    let results = call::run(&state, &task, inputs).await?;
    let answers: Vec<Vec<Prediction>> = results
        .iter()
        .map(|r| {
            let function = match (req.raw_scores, function) {
                (true, _) => Some("none"),
                (false, f) => f,
            };
            predictions(r, function, top_k)
        })
        .collect();
    Ok(if batch {
        json_reply(StatusCode::OK, &answers)
    } else {
        json_reply(
            StatusCode::OK,
            &answers.into_iter().next().unwrap_or_default(),
        )
    })
}

/// A classifier's answer as TEI's predictions, best first: the task's probabilities, or
/// `function` applied to its logits.
fn predictions(answer: &Value, function: Option<&str>, top_k: Option<usize>) -> Vec<Prediction> {
    let pairs = |field: &str| -> Vec<(String, f32)> {
        answer[field]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(l, v)| Some((l.clone(), v.as_f64()? as f32)))
            .collect()
    };
    let mut scored = match function {
        None => pairs("probabilities"),
        Some(f) => {
            let raw = pairs("logits");
            let logits: Vec<f32> = raw.iter().map(|(_, x)| *x).collect();
            let scores: Vec<f32> = match f {
                "softmax" => heads::softmax(&logits),
                "sigmoid" => logits.iter().map(|&x| heads::sigmoid(x)).collect(),
                _ => logits,
            };
            raw.into_iter().map(|(l, _)| l).zip(scores).collect()
        }
    };
    scored.sort_by(|a, b| b.1.total_cmp(&a.1));
    scored.truncate(top_k.unwrap_or(usize::MAX));
    scored
        .into_iter()
        .map(|(label, score)| Prediction { label, score })
        .collect()
}

fn info_answer(state: &AppState) -> Result<Reply, ApiError> {
    let mut why = None;
    let mut found = None;
    let routes = match state.config.api.root {
        Some(root) => vec![root],
        None => vec![ApiRoute::Embed, ApiRoute::Rerank, ApiRoute::Predict],
    };
    for route in routes {
        match call::task_for(state, route) {
            Ok(task) => {
                found = Some((route, task));
                break;
            }
            Err(ApiError::NotServed(w)) => why = why.or(Some(w)),
            Err(e) => return Err(e),
        }
    }
    let Some((route, task)) = found else {
        return Err(ApiError::NotServed(format!(
            "none of /embed, /rerank, /predict is answered here ({})",
            why.unwrap_or_default()
        )));
    };
    let model = describe(state, &task);
    let labels: Vec<&str> = model["labels"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let id2label: Map<String, Value> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (i.to_string(), json!(l)))
        .collect();
    let label2id: Map<String, Value> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.to_string(), json!(i)))
        .collect();
    let model_type = match route {
        ApiRoute::Embed => json!({"embedding": {"pooling": model["pooling"]}}),
        ApiRoute::Rerank => json!({"reranker": {"id2label": id2label, "label2id": label2id}}),
        ApiRoute::Predict => {
            json!({"classifier": {"id2label": id2label, "label2id": label2id}})
        }
    };
    let pool = state
        .registry
        .get(&task)
        .and_then(|r| state.pools.get(r.pool));
    let info = Info {
        model_id: model["source"].as_str().unwrap_or(&task).to_string(),
        model_sha: None,
        model_dtype: model["precision"].as_str().unwrap_or("f32").to_string(),
        model_type,
        max_concurrent_requests: pool.map_or(0, |p| p.config.queue_capacity),
        max_input_length: model["max_length"].as_u64().unwrap_or(0) as usize,
        max_batch_tokens: pool.map_or(0, |p| p.config.max_batch_tokens),
        max_batch_requests: pool.map_or(1, |p| p.config.max_batch_size),
        max_client_batch_size: MAX_ITEMS,
        auto_truncate: state.config.api.auto_truncate,
        version: env!("CARGO_PKG_VERSION"),
        task,
    };
    Ok(json_reply(StatusCode::OK, &info))
}

/// `err` in TEI's shape and statuses, with our headers, counted.
fn error_reply(err: &ApiError) -> Reply {
    let status = match err {
        // A body that is JSON but not the route's shape: 422, as TEI (axum's `Json`)
        // answers it.
        ApiError::InvalidBody(_) => StatusCode::UNPROCESSABLE_ENTITY,
        _ => err.status(),
    };
    let error_type = match status.as_u16() {
        413 | 422 => "validation",
        424 => "backend",
        429 => "overloaded",
        503 => "unhealthy",
        _ => err.code(),
    };
    call::error_reply(
        err,
        status,
        &TeiError {
            error: err.to_string(),
            error_type,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predict_inputs_read_as_tei_reads_them() {
        let (one, batch) = sequences(&json!("a")).unwrap();
        assert_eq!((one, batch), (vec![("a".into(), None)], false));
        let (pair, batch) = sequences(&json!(["a", "b"])).unwrap();
        assert_eq!((pair, batch), (vec![("a".into(), Some("b".into()))], false));
        let (three, batch) = sequences(&json!(["a", "b", "c"])).unwrap();
        assert_eq!(three.len(), 3);
        assert!(batch);
        let (mixed, _) = sequences(&json!([["a"], ["b", "c"]])).unwrap();
        assert_eq!(
            mixed,
            vec![("a".into(), None), ("b".into(), Some("c".into()))]
        );
        assert!(sequences(&json!([["a", "b", "c"]])).is_err());
        assert!(sequences(&json!(3)).is_err());
    }

    #[test]
    fn predictions_are_sorted_and_cut() {
        let answer = json!({"label": "b", "probabilities": {"a": 0.25, "b": 0.75},
                            "logits": {"a": 0.0, "b": 2.0}});
        let p = predictions(&answer, None, None);
        assert_eq!((p[0].label.as_str(), p[0].score), ("b", 0.75));
        let raw = predictions(&answer, Some("none"), Some(1));
        assert_eq!(raw.len(), 1);
        assert_eq!(raw[0].score, 2.0);
        let sig = predictions(&answer, Some("sigmoid"), None);
        assert!((sig[1].score - 0.5).abs() < 1e-6);
    }
}
