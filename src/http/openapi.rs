//! The OpenAPI 3.1 document served at `/openapi.json`, built by utoipa from the wire
//! types (`ToSchema` on the types the server serializes and parses) and from
//! [`ROUTES`]: each route names the `#[utoipa::path]` annotation of its filter, so the
//! document has exactly the routes the server has. The bounds that depend on the config
//! are added by [`super::openapi_document`].

use utoipa::openapi::header::Header;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use super::ROUTES;
use super::admin::{PoolUpdate, PoolView};
use super::health::{Liveness, PoolHealth, Readiness};
use super::models::{ModelEntry, ModelList, OpenAiModel};
use super::openai::{
    EmbeddingList, EmbeddingsRequest, EncodingFormat, OpenAiError, OpenAiErrorDetail, Usage,
};
use super::tasks::{Accepted, BatchAccepted, BatchRequest, TaskInput};
use super::tei::{
    EmbedRequest, Info, PredictAnswer, PredictParameters, PredictRequest, Prediction, Rank,
    RerankRequest, RootAnswer, RootRequest, TeiError,
};
use crate::error::ErrorBody;
use crate::store::{TaskState, TaskView};

/// The document without its paths (added from [`ROUTES`] by [`document`]).
#[derive(OpenApi)]
#[openapi(
    info(
        title = "celeriac",
        description = "Model serving as tasks: submit an input to a named task, get a task \
                       id, poll (or long-poll) for the result. Every error is JSON \
                       `{\"error\": \"...\", \"code\": \"...\"}` (schema `Error`); 429 and 503 \
                       errors carry `Retry-After`. A path that exists with other methods \
                       answers 405 `method_not_allowed`; an unknown path answers 404 \
                       `not_found`. Request bodies must be `content-type: application/json` \
                       with a `content-length`, at most `server.body_limit_bytes`."
    ),
    tags(
        (name = "tasks", description = "Submit, poll and revoke tasks."),
        (name = "models", description = "What this server serves: each task, its kind and its model."),
        (name = "admin", description = "Pool operations, behind a bearer token (`server.admin_token` or `CELERIAC_ADMIN_TOKEN`)."),
        (name = "openai", description = "OpenAI's embeddings API, answered by an `embeddings` task; errors in OpenAI's shape `{\"error\": {\"message\", \"type\", \"param\", \"code\"}}`."),
        (name = "tei", description = "Hugging Face text-embeddings-inference's routes, answered by the tasks `[api]` names (else the only task of each kind); errors in TEI's shape `{\"error\", \"error_type\"}`."),
        (name = "operations", description = "Health, metrics and this document."),
    ),
    components(
        schemas(
            ErrorBody,
            TaskState,
            TaskInput,
            TaskView,
            Accepted,
            BatchRequest,
            BatchAccepted,
            PoolView,
            PoolUpdate,
            Liveness,
            PoolHealth,
            Readiness,
            ModelEntry,
            ModelList,
            OpenAiModel,
            EmbeddingsRequest,
            EncodingFormat,
            EmbeddingList,
            super::openai::Embedding,
            Usage,
            OpenAiError,
            OpenAiErrorDetail,
            EmbedRequest,
            RerankRequest,
            PredictRequest,
            PredictParameters,
            Rank,
            Prediction,
            Info,
            PredictAnswer,
            RootRequest,
            RootAnswer,
            TeiError,
        ),
        responses(
            BadRequest,
            LengthRequired,
            PayloadTooLarge,
            QueueFull,
            Unavailable,
            TaskNotFound,
            Unauthorized,
            AdminDisabled,
        ),
    ),
    modifiers(&Additions),
)]
struct ApiDoc;

/// The OpenAPI document: every route of [`ROUTES`] with its annotated operation, and
/// `ceiling` (the largest `max_concurrency` of the pools), when given, as the maximum
/// size a `PUT /v1/admin/pools/{pool}` may ask for.
pub fn document(ceiling: Option<usize>) -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    for route in ROUTES {
        doc.paths.add_path_operation(
            route.openapi_path(),
            vec![route.http_method()],
            route.operation(),
        );
    }
    if let Some(components) = doc.components.as_mut() {
        components.schemas.insert(
            PoolUpdate::name().into_owned(),
            PoolUpdate::schema_with_ceiling(ceiling).into(),
        );
    }
    doc
}

use super::responses::{
    AdminDisabled, BadRequest, LengthRequired, PayloadTooLarge, QueueFull, RETRY_AFTER,
    TaskNotFound, Unauthorized, Unavailable,
};

/// Adds what the derive cannot state: the admin API's bearer token and the shared
/// `Retry-After` header; drops the license the derive takes from Cargo.toml, which has
/// none (it would state an empty name).
struct Additions;

impl Modify for Additions {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        doc.info.license = None;
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearerAuth",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "`Authorization: Bearer <server.admin_token>`. Without a configured \
                         token the admin API answers 403 `admin_disabled`.",
                    ))
                    .build(),
            ),
        );
        components.headers.insert(
            RETRY_AFTER.into(),
            Header::builder()
                .description(Some(
                    "Seconds to wait before retrying (1 for `queue_full`, 5 for \
                     `shutting_down` and `no_live_worker`).",
                ))
                .schema(Some(
                    ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .minimum(Some(0)),
                ))
                .build()
                .into(),
        );
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::*;

    fn doc() -> Value {
        serde_json::to_value(document(Some(8))).unwrap()
    }

    /// Every `$ref` string under `v`.
    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r);
                }
                m.values().for_each(|v| refs(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_reference_resolves_and_every_component_is_used() {
        let doc = doc();
        let mut found = Vec::new();
        refs(&doc, &mut found);
        for r in &found {
            let pointer = r.strip_prefix('#').expect("local references only");
            assert!(doc.pointer(pointer).is_some(), "{r} names nothing");
        }
        for kind in ["schemas", "responses", "headers"] {
            for name in doc["components"][kind].as_object().unwrap().keys() {
                let r = format!("#/components/{kind}/{name}");
                assert!(found.contains(&r.as_str()), "{r} is never used");
            }
        }
    }

    #[test]
    fn the_paths_are_the_route_table() {
        let doc = doc();
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                assert!(op["tags"].is_array(), "{method} {path}: no tag");
                documented.insert((method.to_uppercase(), path.clone()));
            }
        }
        let table: BTreeSet<_> = ROUTES
            .iter()
            .map(|r| (r.method.to_string(), r.openapi_path()))
            .collect();
        assert_eq!(table.len(), ROUTES.len(), "a route is listed twice");
        assert_eq!(documented, table);
    }

    #[test]
    fn the_ceiling_bounds_every_size() {
        let update = &doc()["components"]["schemas"]["PoolUpdate"]["oneOf"];
        assert_eq!(update[0]["properties"]["concurrency"]["maximum"], 8);
        for bound in ["min", "max"] {
            assert_eq!(
                update[1]["properties"]["autoscale"]["properties"][bound]["maximum"],
                8
            );
        }
        // The autoscaler's tuning carries the ranges the config file and the admin API
        // check (one source: `AutoscaleConfig::TUNING`).
        let tuning = &update[1]["properties"]["autoscale"]["properties"];
        for (field, limit) in crate::config::AutoscaleConfig::TUNING {
            assert_eq!(
                tuning[field]["maximum"].as_f64(),
                Some(limit.max),
                "{field}"
            );
            let min = if limit.exclusive_min {
                &tuning[field]["exclusiveMinimum"]
            } else {
                &tuning[field]["minimum"]
            };
            assert_eq!(min.as_f64(), Some(limit.min), "{field}");
        }
        // Without pools to ask, the ceiling is the most any pool may have.
        let unbounded = serde_json::to_value(document(None)).unwrap();
        let update = &unbounded["components"]["schemas"]["PoolUpdate"]["oneOf"];
        assert_eq!(
            update[0]["properties"]["concurrency"]["maximum"],
            crate::config::PoolConfig::MAX_WORKERS
        );
    }

    #[test]
    fn error_codes_are_the_api_errors() {
        let codes = &doc()["components"]["schemas"]["Error"]["properties"]["code"]["enum"];
        assert_eq!(*codes, serde_json::json!(crate::error::ApiError::CODES));
    }
}
