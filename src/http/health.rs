//! Health routes: liveness and readiness.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::Serialize;
use warp::http::StatusCode;
use warp::{Filter, Rejection};

use super::{Reply, json_reply, with_state};
use crate::state::AppState;

/// `GET /health/live`
pub fn live() -> impl Filter<Extract = (Reply,), Error = Rejection> + Clone {
    warp::path!("health" / "live")
        .and(warp::get())
        .map(|| json_reply(StatusCode::OK, &serde_json::json!({"status": "live"})))
}

/// One pool's worker counts, as readiness reports them.
#[derive(Serialize)]
struct PoolHealth {
    pool: String,
    live: usize,
    size: usize,
    parked: usize,
    queued: usize,
    busy: usize,
}

#[derive(Serialize)]
struct Readiness {
    ready: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    reasons: Vec<String>,
    pools: Vec<PoolHealth>,
}

/// `GET /health/ready`: 200 while accepting tasks and every pool has at least its
/// minimum of live workers (its autoscale lower bound, else one); 503 otherwise, with
/// the reasons.
pub fn ready(state: Arc<AppState>) -> impl Filter<Extract = (Reply,), Error = Rejection> + Clone {
    warp::path!("health" / "ready")
        .and(warp::get())
        .and(with_state(state))
        .map(|state: Arc<AppState>| {
            let mut reasons = Vec::new();
            if !state.accepting.load(Ordering::Acquire) {
                reasons.push("shutting down".to_string());
            }
            if let Some(broker) = &state.broker
                && let Some(why) = broker.down_reason()
            {
                reasons.push(format!("broker {} unreachable: {why}", broker.url));
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
            for ((p, s), actor) in pools.iter().zip(&statuses).zip(&state.pool_actors) {
                let min = s.minimum();
                if !matches!(actor.get_status(), ractor::ActorStatus::Running) {
                    reasons.push(format!("pool `{}` has stopped (its actor exited)", p.pool));
                } else if p.live == 0 {
                    reasons.push(format!("pool `{}` has no live worker", p.pool));
                } else if p.live < min {
                    reasons.push(format!(
                        "pool `{}` has {} live workers, below its minimum of {min}",
                        p.pool, p.live
                    ));
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
