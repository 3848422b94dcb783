//! Health routes: liveness and readiness.

use std::sync::Arc;

use serde::Serialize;
use utoipa::ToSchema;
use warp::http::StatusCode;
use warp::{Filter, Rejection};

use super::{Reply, json_reply, with_state};
use crate::state::AppState;

/// `GET /health/live`
#[utoipa::path(
    get,
    path = "/health/live",
    operation_id = "live",
    summary = "Liveness",
    responses((status = 200, description = "The process serves HTTP.", body = Liveness)),
)]
pub fn live() -> impl Filter<Extract = (Reply,), Error = Rejection> + Clone {
    warp::path!("health" / "live").and(warp::get()).map(|| {
        json_reply(
            StatusCode::OK,
            &Liveness {
                status: LiveStatus::Live,
            },
        )
    })
}

// `deny_unknown_fields` on these serialized-only types closes their OpenAPI schema
// (`additionalProperties: false`); serde ignores it there. Field docs are the OpenAPI
// descriptions.

/// The answer to `GET /health/live`.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Liveness {
    #[schema(inline)]
    status: LiveStatus,
}

/// The one liveness status.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
enum LiveStatus {
    Live,
}

/// One pool's worker counts, as readiness reports them.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PoolHealth {
    pool: String,
    /// Workers alive.
    live: usize,
    /// The configured size (worker slots), as last set.
    size: usize,
    /// Slots parked after the restart budget for failed starts ran out.
    parked: usize,
    /// Tasks in the queue.
    queued: usize,
    /// Workers running a task.
    busy: usize,
}

/// The answer to `GET /health/ready`.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "ready": true,
    "pools": [{"pool": "default", "live": 2, "size": 2, "parked": 0, "queued": 0, "busy": 0}]
}))]
pub(super) struct Readiness {
    ready: bool,
    /// Why not ready; absent when ready.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    reasons: Vec<String>,
    pools: Vec<PoolHealth>,
}

/// `GET /health/ready`: 200 while accepting tasks and every pool has at least its
/// minimum of live workers (its autoscale lower bound, else one); 503 otherwise, with
/// the reasons.
#[utoipa::path(
    get,
    path = "/health/ready",
    operation_id = "ready",
    summary = "Readiness",
    description = "200 while the server accepts tasks and every pool has its minimum of live \
                   workers (its autoscale lower bound, else one); 503 otherwise, with the \
                   reasons. A burst of panicking tasks does not change it: a panic fails its \
                   task, never its worker.",
    responses(
        (status = 200, description = "Ready.", body = Readiness),
        (status = 503, description = "Not ready: shutting down, a pool below its minimum of live workers, or a pool actor that stopped.", body = Readiness),
    ),
)]
pub fn ready(state: Arc<AppState>) -> impl Filter<Extract = (Reply,), Error = Rejection> + Clone {
    warp::path!("health" / "ready")
        .and(warp::get())
        .and(with_state(state))
        .map(|state: Arc<AppState>| {
            let mut reasons = Vec::new();
            if !state.backend.accepting() {
                reasons.push("shutting down".to_string());
            }
            if let Some(why) = state.backend.down_reason() {
                reasons.push(why);
            }
            let statuses: Vec<_> = state.pools.iter().map(|p| p.status()).collect();
            let pools: Vec<PoolHealth> = state
                .pools
                .iter()
                .zip(&statuses)
                .map(|(p, s)| PoolHealth {
                    pool: p.name.clone(),
                    live: s.live(),
                    size: s.size,
                    parked: s.parked,
                    queued: s.queued,
                    busy: s.busy,
                })
                .collect();
            for (index, (p, s)) in pools.iter().zip(&statuses).enumerate() {
                let min = s.minimum();
                let actor = state.pool_actors.get(index);
                if !matches!(actor.get_status(), ractor::ActorStatus::Running) {
                    reasons.push(format!("pool `{}` has stopped (its actor exited)", p.pool));
                } else if p.live < min {
                    let warming = match s.warming {
                        0 => String::new(),
                        n => format!(" ({n} warming up)"),
                    };
                    reasons.push(if p.live == 0 {
                        format!("pool `{}` has no live worker{warming}", p.pool)
                    } else {
                        format!(
                            "pool `{}` has {} live workers, below its minimum of {min}{warming}",
                            p.pool, p.live
                        )
                    });
                }
            }
            let ready = reasons.is_empty();
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json_reply(
                status,
                &Readiness {
                    ready,
                    reasons,
                    pools,
                },
            )
        })
}
