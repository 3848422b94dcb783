//! `GET /v1/models`: what a client may call. Every registered task with its kind and
//! pool; a task that serves a model also with its architecture, source, labels or
//! embedding dimensions, maximum length, precision and kernels
//! ([`crate::task::TaskFactory::describe`]).

use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use warp::http::StatusCode;
use warp::{Filter, Rejection};

use super::{Reply, json_reply, with_state};
use crate::state::AppState;

/// One task, as `GET /v1/models` lists it.
#[derive(Serialize, ToSchema)]
pub(super) struct ModelEntry {
    /// The name tasks are submitted under.
    task: String,
    /// Its kind (`text_classifier`, `embeddings`, `reranker`, `token_classifier`,
    /// `debug.*`).
    kind: String,
    /// The pool that runs it.
    pool: String,
    /// What its model is (absent for tasks without one): `inputs` (the input fields in
    /// order), `source`, `model_type`, `architecture`, `labels` or `dimensions` (and
    /// `pooling`, `normalize`), `multi_label`, `max_length` (tokens), `precision`,
    /// `kernels`, `kernel`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    model: Option<Value>,
}

/// The answer to `GET /v1/models`.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"models": [{
    "task": "t.cls", "kind": "text_classifier", "pool": "default",
    "model": {"inputs": ["text", "text_pair"], "source": "models/my-bert",
              "model_type": "bert", "architecture": "BertForSequenceClassification",
              "labels": ["negative", "neutral", "positive"], "multi_label": false,
              "max_length": 512, "precision": "f32", "kernels": "packed", "kernel": "avx2"}
}]}))]
pub(super) struct ModelList {
    /// Every task this node registered, by name.
    models: Vec<ModelEntry>,
}

/// `GET /v1/models`
#[utoipa::path(
    get,
    path = "/v1/models",
    operation_id = "models",
    summary = "The tasks and the models behind them",
    responses((status = 200, description = "Every registered task, sorted by name.", body = ModelList)),
)]
pub fn list(state: Arc<AppState>) -> impl Filter<Extract = (Reply,), Error = Rejection> + Clone {
    warp::path!("v1" / "models")
        .and(warp::get())
        .and(with_state(state))
        .map(|state: Arc<AppState>| {
            let models = state
                .registry
                .names()
                .into_iter()
                .filter_map(|name| {
                    let r = state.registry.get(name)?;
                    Some(ModelEntry {
                        task: name.to_string(),
                        kind: state
                            .config
                            .tasks
                            .get(name)
                            .map(|s| s.kind.clone())
                            .unwrap_or_default(),
                        pool: state
                            .pools
                            .get(r.pool)
                            .map(|p| p.name.clone())
                            .unwrap_or_default(),
                        model: r.factory.describe(),
                    })
                })
                .collect();
            json_reply(StatusCode::OK, &ModelList { models })
        })
}
