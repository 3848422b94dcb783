//! Admin routes, behind a bearer token: list pools, resize them, set autoscale bounds.
//!
//! `PUT /v1/admin/pools/{pool}` answers 200 once the change is applied: new workers are
//! running (with the already loaded weights), and workers chosen by a shrink have been
//! told to stop: idle ones are gone, busy ones show as `stopping` until they finish
//! what they hold. Nothing queued or running is dropped.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use warp::http::StatusCode;
use warp::{Filter, Rejection};

use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{
    AdditionalProperties, Object, ObjectBuilder, Schema, SchemaType, Type,
};
use utoipa::{PartialSchema, ToSchema};

use super::responses::{AdminDisabled, LengthRequired, PayloadTooLarge, Unauthorized};
use super::{Reply, json_body, json_reply, no_query, with_state};
use crate::actors::protocol::{AutoscaleUpdate, Resize, ResizeError};
use crate::config::limit::LimitError;
use crate::config::{AutoscaleConfig, DeviceSpec, Limit, PoolConfig, PoolKind};
use crate::error::{ApiError, ErrorBody};
use crate::pool_shared::PoolShared;
use crate::state::AppState;

fn reject(e: ApiError) -> Rejection {
    warp::reject::custom(e)
}

/// Checks `Authorization: Bearer <token>` against the configured token, in constant
/// time (both sides are hashed first, so neither length nor content leaks).
fn auth(state: Arc<AppState>) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::header::optional::<String>("authorization")
        .and(with_state(state))
        .and_then(|header: Option<String>, state: Arc<AppState>| async move {
            let Some(token) = state.config.server.admin_token.as_deref() else {
                return Err(reject(ApiError::AdminDisabled));
            };
            let given = header
                .as_deref()
                .and_then(|h| h.strip_prefix("Bearer "))
                .ok_or_else(|| reject(ApiError::Unauthorized))?;
            if constant_time_eq(given.trim().as_bytes(), token.as_bytes()) {
                Ok(())
            } else {
                Err(reject(ApiError::Unauthorized))
            }
        })
        .untuple_one()
}

/// Equality of two secrets without an early exit.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let (ha, hb) = (Sha256::digest(a), Sha256::digest(b));
    ha.iter()
        .zip(hb.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// `GET /v1/admin/pools`
#[utoipa::path(
    get,
    path = "/v1/admin/pools",
    operation_id = "listPools",
    summary = "List the pools",
    security(("bearerAuth" = [])),
    responses(
        (status = 200, description = "Every pool, in config order.", body = inline(PoolList)),
        (status = 401, response = Unauthorized),
        (status = 403, response = AdminDisabled),
    ),
)]
pub fn list(state: Arc<AppState>) -> impl Filter<Extract = (Reply,), Error = Rejection> + Clone {
    warp::path!("v1" / "admin" / "pools")
        .and(warp::get())
        .and(auth(state.clone()))
        .and(no_query())
        .and(with_state(state))
        .map(|state: Arc<AppState>| {
            let pools = state.pools.iter().map(|p| PoolView::from(&**p)).collect();
            json_reply(StatusCode::OK, &PoolList { pools })
        })
}

/// `PUT /v1/admin/pools/{pool}`
#[utoipa::path(
    put,
    path = "/v1/admin/pools/{pool}",
    operation_id = "updatePool",
    summary = "Resize a pool or set its autoscale bounds",
    description = "Answers once the change is applied: new workers are running, workers chosen \
                   by a shrink have been told to stop (busy ones show as `stopping` until they \
                   finish). Nothing queued or running is dropped.",
    security(("bearerAuth" = [])),
    params(
        ("pool" = String, Path, description = "The pool name (a `[pools.NAME]` table of the config)."),
    ),
    request_body(content = PoolUpdate, example = json!({"concurrency": 4})),
    responses(
        (status = 200, description = "The pool after the change.", body = PoolView),
        (status = 400, description = "`invalid_json`, `invalid_body` (not one of the two shapes, an unknown field, a value that is not a non-negative integer), `unsupported_content_type`.", body = ErrorBody),
        (status = 401, response = Unauthorized),
        (status = 403, response = AdminDisabled),
        (status = 404, description = "`unknown_pool`: no pool has that name.", body = ErrorBody),
        (status = 411, response = LengthRequired),
        (status = 413, response = PayloadTooLarge),
        (status = 422, description = "`invalid_value`: out of range (a size of 0 or above `max_concurrency`, a size outside the autoscale bounds, bad bounds), or new workers could not be started.", body = ErrorBody),
        (status = 500, description = "`internal`: the supervisor did not answer.", body = ErrorBody),
    ),
)]
pub fn update(state: Arc<AppState>) -> impl Filter<Extract = (Reply,), Error = Rejection> + Clone {
    let limit = state.config.server.body_limit_bytes;
    warp::path!("v1" / "admin" / "pools" / String)
        .and(warp::put())
        .and(auth(state.clone()))
        .and(no_query())
        .and(json_body(limit))
        .and(with_state(state))
        .and_then(update_handler)
}

// `deny_unknown_fields` on the types below that are only serialized closes their OpenAPI
// schema (`additionalProperties: false`); serde ignores it there. Field docs are the
// OpenAPI descriptions.

/// The answer to `GET /v1/admin/pools`.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct PoolList {
    pools: Vec<PoolView>,
}

/// A pool as the admin API shows it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolView {
    pool: String,
    #[schema(inline)]
    kind: PoolKind,
    /// Devices the workers are spread over, round-robin.
    #[schema(inline)]
    devices: Vec<DeviceSpec>,
    /// The configured size (worker slots), as last set.
    size: usize,
    /// The ceiling of `size` (1 for `solo`).
    #[schema(minimum = 1)]
    max_concurrency: usize,
    #[schema(inline)]
    workers: WorkerCounts,
    #[schema(inline)]
    queue: QueueView,
    /// The autoscale bounds; null when the pool does not autoscale.
    #[schema(inline, required = true)]
    autoscale: Option<Bounds>,
    /// Workers replaced after a loss (time limit, crash), since start.
    restarts: u64,
    /// Task instances rebuilt after a task panicked, since start; each panic failed only
    /// its own task.
    panics: u64,
    /// Worker starts that failed, since start (back-off and the restart budget apply to
    /// these).
    failed_starts: u64,
    /// Slots parked after the restart budget for failed starts ran out; a resize gives
    /// them a fresh start.
    parked: usize,
    /// Times the pool's actor failed and was restarted, since start (its unfinished
    /// tasks were given back to the broker or failed; the other pools served on).
    actor_restarts: u64,
}

/// A pool's workers by state.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct WorkerCounts {
    starting: usize,
    /// Started, warming their tasks up; they take work once warm.
    warming: usize,
    idle: usize,
    busy: usize,
    stopping: usize,
}

/// A pool's queue.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct QueueView {
    depth: usize,
    capacity: usize,
}

/// Autoscale bounds.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct Bounds {
    #[schema(minimum = 1)]
    min: usize,
    #[schema(minimum = 1)]
    max: usize,
}

impl From<&PoolShared> for PoolView {
    fn from(p: &PoolShared) -> Self {
        let s = p.status();
        PoolView {
            pool: p.name.clone(),
            kind: p.config.kind,
            devices: p.config.devices.clone(),
            size: s.size,
            max_concurrency: p.config.ceiling(),
            workers: WorkerCounts {
                starting: s.starting,
                warming: s.warming,
                idle: s.idle,
                busy: s.busy,
                stopping: s.stopping,
            },
            queue: QueueView {
                depth: s.queued,
                capacity: p.config.queue_capacity,
            },
            autoscale: s.autoscale.map(|(min, max)| Bounds { min, max }),
            restarts: s.replaced,
            panics: s.panics,
            failed_starts: s.failed_starts,
            parked: s.parked,
            actor_restarts: p.actor_restarts(),
        }
    }
}

/// The body of `PUT /v1/admin/pools/{pool}`: exactly one of the two fields.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PoolUpdate {
    #[serde(default)]
    concurrency: Option<usize>,
    /// Absent: `None`; `null`: `Some(None)` (stop autoscaling).
    #[serde(default, deserialize_with = "present")]
    autoscale: Option<Option<AutoscaleUpdate>>,
}

/// A field that is present, `null` included.
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

impl PoolUpdate {
    /// The schema of the body: one of its two shapes (a derive would make both fields
    /// optional), with `ceiling`, the largest `max_concurrency` of the server's pools, as
    /// the maximum of every size when given.
    pub(super) fn schema_with_ceiling(ceiling: Option<usize>) -> Schema {
        let size = |o: ObjectBuilder| {
            o.maximum(Some(
                ceiling.unwrap_or(PoolConfig::MAX_WORKERS as usize) as f64
            ))
        };
        let closed = Some(AdditionalProperties::FreeForm(false));
        let by_size = ObjectBuilder::new()
            .property(
                "concurrency",
                size(
                    ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .minimum(Some(1)),
                ),
            )
            .required("concurrency")
            .additional_properties(closed.clone());
        let mut autoscale = match AutoscaleUpdate::schema() {
            RefOr::T(Schema::Object(o)) => o,
            _ => unreachable!("a derived struct schema is an object. This is a bug."),
        };
        autoscale.schema_type = SchemaType::from_iter([Type::Object, Type::Null]);
        let ceiling = ceiling.map_or(PoolConfig::MAX_WORKERS, |c| c as u64);
        let bounds = [("min", AutoscaleConfig::BOUNDS.up_to(ceiling))];
        let bounds = bounds
            .into_iter()
            .chain([("max", AutoscaleConfig::BOUNDS.up_to(ceiling))]);
        for (field, limit) in bounds.chain(AutoscaleConfig::TUNING) {
            match autoscale.properties.get_mut(field) {
                Some(RefOr::T(Schema::Object(o))) => limit.apply(o),
                _ => unreachable!("AutoscaleUpdate has a field `{field}`. This is a bug."),
            }
        }
        let by_bounds = ObjectBuilder::new()
            .property("autoscale", autoscale)
            .required("autoscale")
            .additional_properties(closed);
        utoipa::openapi::schema::OneOfBuilder::new()
            .description(Some(
                "Exactly one of: `{\"concurrency\": N}` sets the size; \
                 `{\"autoscale\": {\"min\": A, \"max\": B}}` autoscales between bounds (the size \
                 is clamped into them at once); `{\"autoscale\": null}` stops autoscaling. An \
                 `autoscale` object may also set the autoscaler's tuning; fields left out keep \
                 the pool's `[pools.NAME.autoscale]` values, else the defaults.",
            ))
            .item(Object::from(by_size))
            .item(Object::from(by_bounds))
            .into()
    }
}

impl PartialSchema for PoolUpdate {
    fn schema() -> RefOr<Schema> {
        Self::schema_with_ceiling(None).into()
    }
}

impl ToSchema for PoolUpdate {
    fn name() -> std::borrow::Cow<'static, str> {
        "PoolUpdate".into()
    }
}

const UPDATE_SHAPE: &str =
    "expected {\"concurrency\": N} or {\"autoscale\": {\"min\": A, \"max\": B}} (or null)";

/// Parses `{"concurrency": N}` or `{"autoscale": {"min": a, "max": b, ...}}` (or
/// `{"autoscale": null}` to stop autoscaling). Anything else is a 400 naming the field.
///
/// Every number is checked against its range first ([`AutoscaleConfig::TUNING`], the
/// pool's `max_concurrency` for sizes), so a bad one is a 4xx naming its field: a wrong
/// type is 400, a value out of range 422.
pub fn parse_update(body: &Value, ceiling: usize) -> Result<Resize, ApiError> {
    // A derived struct also reads a JSON array as its fields in order: refuse it.
    let Some(fields) = body.as_object() else {
        return Err(ApiError::InvalidBody(UPDATE_SHAPE.into()));
    };
    let sizes = PoolConfig::WORKERS.up_to(ceiling as u64);
    let checked = |field: &str, limit: Limit, v: &Value| {
        limit.check_json(field, v).map_err(|e| match e {
            LimitError::Type(m) => ApiError::InvalidBody(m),
            LimitError::Range(m) => ApiError::InvalidValue(m),
        })
    };
    if let Some(v) = fields.get("concurrency") {
        checked("concurrency", sizes, v)?;
    }
    if let Some(a) = fields.get("autoscale").and_then(Value::as_object) {
        for (field, v) in a {
            let name = format!("autoscale.{field}");
            match field.as_str() {
                "min" | "max" => checked(&name, sizes, v)?,
                _ => match AutoscaleConfig::tuning_limit(field) {
                    Some(limit) if !v.is_null() => checked(&name, limit, v)?,
                    // Unknown fields are refused by the shape below.
                    _ => {}
                },
            }
        }
    }
    let update = PoolUpdate::deserialize(body)
        .map_err(|e| ApiError::InvalidBody(format!("{e}; {UPDATE_SHAPE}")))?;
    match (update.concurrency, update.autoscale) {
        (Some(n), None) => Ok(Resize::Concurrency(n)),
        (None, Some(a)) => Ok(Resize::Autoscale(a)),
        (Some(_), Some(_)) => Err(ApiError::InvalidBody(
            "give either `concurrency` or `autoscale`, not both".into(),
        )),
        (None, None) => Err(ApiError::InvalidBody(UPDATE_SHAPE.into())),
    }
}

async fn update_handler(
    pool: String,
    body: bytes::Bytes,
    state: Arc<AppState>,
) -> Result<Reply, Rejection> {
    let index = state
        .pools
        .iter()
        .position(|p| p.name == pool)
        .ok_or_else(|| {
            reject(ApiError::UnknownPool {
                name: pool.chars().take(64).collect(),
                known: state
                    .pools
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
        })?;
    let body: Value =
        serde_json::from_slice(&body).map_err(|e| reject(ApiError::InvalidJson(e.to_string())))?;
    let change = parse_update(&body, state.pools[index].config.ceiling()).map_err(reject)?;
    let outcome = state.pool_actors.resize(index, change).await.map_err(|e| {
        tracing::error!(pool = %pool, "resize: the pool actor did not answer: {e}");
        reject(ApiError::Internal)
    })?;
    match outcome {
        Ok(()) => Ok(json_reply(
            StatusCode::OK,
            &PoolView::from(&*state.pools[index]),
        )),
        Err(ResizeError::Invalid(m)) => Err(reject(ApiError::InvalidValue(m))),
        Err(e @ ResizeError::Spawn(_)) => {
            tracing::error!(pool = %pool, "resize failed: {e}");
            Err(reject(ApiError::Internal))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse_update_(body: &Value) -> Result<Resize, ApiError> {
        parse_update(body, 16)
    }

    #[test]
    fn out_of_range_numbers_name_their_field() {
        let base = json!({"min": 1, "max": 2});
        let huge: Value = serde_json::from_str("18446744073709551616").unwrap();
        for (field, _) in AutoscaleConfig::TUNING {
            for bad in [
                json!(1e300),
                json!(-1),
                json!("NaN"),
                huge.clone(),
                json!(-1e300),
            ] {
                let mut a = base.clone();
                a[field] = bad.clone();
                let e = parse_update_(&json!({"autoscale": a})).unwrap_err();
                let m = e.to_string();
                assert!(
                    m.contains(&format!("`autoscale.{field}`")),
                    "{field}={bad}: {m}"
                );
                assert!(
                    matches!(e, ApiError::InvalidBody(_) | ApiError::InvalidValue(_)),
                    "{field}={bad}: {e:?}"
                );
            }
        }
        for bad in [
            json!(1e300),
            json!(-1),
            json!("NaN"),
            huge,
            json!(17),
            json!(0),
        ] {
            let m = parse_update_(&json!({"concurrency": bad}))
                .unwrap_err()
                .to_string();
            assert!(m.contains("`concurrency`"), "{bad}: {m}");
            let m = parse_update_(&json!({"autoscale": {"min": 1, "max": bad}}))
                .unwrap_err()
                .to_string();
            assert!(m.contains("`autoscale.max`"), "{bad}: {m}");
        }
        // The request: a day is the most an idle period may be.
        let e = parse_update_(
            &json!({"autoscale": {"min": 1, "max": 2, "scale_down_idle_seconds": 1e300}}),
        )
        .unwrap_err();
        assert!(matches!(e, ApiError::InvalidValue(_)), "{e:?}");
        assert!(
            parse_update_(
                &json!({"autoscale": {"min": 1, "max": 2, "scale_down_idle_seconds": 86400}})
            )
            .is_ok()
        );
    }

    #[test]
    fn update_bodies() {
        assert_eq!(
            parse_update_(&json!({"concurrency": 4})).unwrap(),
            Resize::Concurrency(4)
        );
        assert_eq!(
            parse_update_(&json!({"autoscale": {"min": 1, "max": 3}})).unwrap(),
            Resize::Autoscale(Some(AutoscaleUpdate::bounds(1, 3)))
        );
        assert_eq!(
            parse_update_(&json!({"autoscale": null})).unwrap(),
            Resize::Autoscale(None)
        );
        let tuned = json!({"autoscale": {"min": 1, "max": 3, "scale_down_idle_seconds": 0.5}});
        let Resize::Autoscale(Some(u)) = parse_update_(&tuned).unwrap() else {
            panic!("an autoscale update")
        };
        assert_eq!(u.scale_down_idle_seconds, Some(0.5));
        for bad in [
            json!({"autoscale": {"min": -1, "max": 2}}),
            json!({"autoscale": {"min": 1, "max": 2, "scale_up_wait_ms": "x"}}),
            json!({"concurency": 4}),
            json!({"concurrency": 2.5}),
            json!({"concurrency": -1}),
            json!({"concurrency": "4"}),
            json!({"concurrency": 1, "autoscale": null}),
            json!({"autoscale": {"min": 1}}),
            json!({"autoscale": {"min": 1, "max": 2, "step": 1}}),
            json!({}),
            json!([1]),
        ] {
            assert!(parse_update_(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(!constant_time_eq(b"s3cret", b"s3cre"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
