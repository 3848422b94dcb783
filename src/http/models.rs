//! `GET /v1/models`: what a client may call. Every registered task with its kind and
//! pool; a task that serves a model also with its architecture, source, labels or
//! embedding dimensions, maximum length, precision and kernels
//! ([`crate::task::TaskFactory::describe`]). The same object is OpenAI's model list
//! (`object: "list"`, `data: [{id, object: "model", created, owned_by}]`), so an OpenAI
//! client's `models.list()` reads it too.

use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use warp::http::StatusCode;
use warp::{Filter, Rejection};

use super::{Reply, api_key, json_reply, with_state};
use crate::error::ErrorBody;
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

/// One task as OpenAI's model list shows it.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct OpenAiModel {
    /// The task name: what a client gives as `model`.
    id: String,
    /// Always `model`.
    #[schema(schema_with = model_object)]
    object: &'static str,
    /// When this node started serving (Unix seconds).
    created: u64,
    /// Always `celeriac`.
    owned_by: &'static str,
}

fn model_object() -> utoipa::openapi::schema::ObjectBuilder {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(["model"]))
}

fn list_object() -> utoipa::openapi::schema::ObjectBuilder {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(["list"]))
}

/// The answer to `GET /v1/models`.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"object": "list", "data": [{"id": "t.cls", "object": "model", "created": 1796000000, "owned_by": "celeriac"}], "models": [{
    "task": "t.cls", "kind": "text_classifier", "pool": "default",
    "model": {"inputs": ["text", "text_pair"], "source": "models/my-bert",
              "model_type": "bert", "architecture": "BertForSequenceClassification",
              "labels": ["negative", "neutral", "positive"], "multi_label": false,
              "max_length": 512, "precision": "f32", "kernels": "packed", "kernel": "avx2"}
}]}))]
pub(super) struct ModelList {
    /// Always `list` (OpenAI's shape).
    #[schema(schema_with = list_object)]
    object: &'static str,
    /// Every task as OpenAI lists models, by name.
    data: Vec<OpenAiModel>,
    /// Every task this node registered, by name.
    models: Vec<ModelEntry>,
}

/// `GET /v1/models`
#[utoipa::path(
    get,
    path = "/v1/models",
    operation_id = "models",
    summary = "The tasks and the models behind them",
    description = "Our discovery shape (`models`) and OpenAI's (`object`, `data`) in one object.",
    responses(
        (status = 200, description = "Every registered task, sorted by name.", body = ModelList),
        (status = 401, description = "`invalid_api_key`: `server.api_keys` is set and the request's `Authorization: Bearer` key is not one of them.", body = ErrorBody),
    ),
)]
pub fn list(state: Arc<AppState>) -> impl Filter<Extract = (Reply,), Error = Rejection> + Clone {
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    warp::path!("v1" / "models")
        .and(warp::get())
        .and(api_key(state.clone()))
        .and(with_state(state))
        .map(move |state: Arc<AppState>| {
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
                .collect::<Vec<ModelEntry>>();
            let data = models
                .iter()
                .map(|m| OpenAiModel {
                    id: m.task.clone(),
                    object: "model",
                    created,
                    owned_by: "celeriac",
                })
                .collect();
            json_reply(
                StatusCode::OK,
                &ModelList {
                    object: "list",
                    data,
                    models,
                },
            )
        })
}
