//! The HTTP API (warp): route filters, shared helpers and the root rejection handler.

pub mod admin;
pub mod health;
pub mod tasks;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use warp::http::{HeaderValue, StatusCode, header};
use warp::{Filter, Rejection};

use crate::error::ApiError;
use crate::state::AppState;

/// A reply built by hand: status, JSON body and headers.
pub type Reply = warp::reply::Response;

/// Every route, with the root rejection handler.
pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (impl warp::Reply,), Error = Infallible> + Clone + Send + Sync + 'static
{
    let limit = state.config.server.body_limit_bytes;
    let doc: Bytes = serde_json::to_vec(&openapi_document(&state))
        .expect("JSON values serialize")
        .into();
    let serves_tasks = state.role == crate::state::Role::Serve;
    let task_routes = tasks::submit(state.clone())
        .or(tasks::submit_batch(state.clone()))
        .unify()
        .or(tasks::get(state.clone()))
        .unify()
        .or(tasks::revoke(state.clone()))
        .unify();
    warp::path::full()
        .and_then(move |path: warp::path::FullPath| async move {
            match (serves_tasks, path.as_str().starts_with("/v1/tasks/")) {
                (true, _) => Ok(()),
                (false, true) => Err(warp::reject::custom(ApiError::WorkerNode)),
                (false, false) => Err(warp::reject::not_found()),
            }
        })
        .untuple_one()
        .and(task_routes)
        .or(health::live())
        .unify()
        .or(health::ready(state.clone()))
        .unify()
        .or(admin::list(state.clone()))
        .unify()
        .or(admin::update(state.clone()))
        .unify()
        .or(metrics_route(state))
        .unify()
        .or(openapi(doc))
        .unify()
        .or(method_not_allowed())
        .unify()
        .recover(move |r| handle_rejection(r, limit))
        .unify()
        .with(warp::log::custom(|info| {
            crate::metrics::http(
                route_of(info.method().as_str(), info.path()),
                info.method().as_str(),
                info.status().as_u16(),
                info.elapsed(),
            )
        }))
}

/// Every route: its method and path template (`:name` stands for one segment; the
/// OpenAPI document writes it `{name}`). The metrics' `route` label, the `Allow` header
/// of a 405 and the OpenAPI check read it.
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/v1/tasks/:task"),
    ("POST", "/v1/tasks/:task/batch"),
    ("GET", "/v1/tasks/:id"),
    ("DELETE", "/v1/tasks/:id"),
    ("GET", "/v1/admin/pools"),
    ("PUT", "/v1/admin/pools/:pool"),
    ("GET", "/metrics"),
    ("GET", "/health/live"),
    ("GET", "/health/ready"),
    ("GET", "/openapi.json"),
];

fn template_matches(template: &str, path: &str) -> bool {
    // Only the leading `/` goes: `/metrics/` is another path than `/metrics`, as for
    // warp's own matching.
    let mut t = template.trim_start_matches('/').split('/');
    let mut p = path.trim_start_matches('/').split('/');
    loop {
        match (t.next(), p.next()) {
            (None, None) => return true,
            (Some(ts), Some(ps)) if ts.starts_with(':') || ts == ps => {}
            _ => return false,
        }
    }
}

/// The route template of a request, for the `route` label (never the raw path): the
/// route that serves it, else the template of the path (a 405), else `other`.
pub fn route_of(method: &str, path: &str) -> &'static str {
    ROUTES
        .iter()
        .find(|(m, t)| *m == method && template_matches(t, path))
        .or_else(|| ROUTES.iter().find(|(_, t)| template_matches(t, path)))
        .map_or("other", |(_, t)| t)
}

/// The methods some route serves at `path`, in table order.
pub fn allowed_methods(path: &str) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for (m, t) in ROUTES {
        if template_matches(t, path) && !out.contains(m) {
            out.push(m);
        }
    }
    out
}

/// Last of the routes: a known path asked with a method it does not serve is a 405
/// that names the allowed methods (`Allow`); anything else falls through as not found.
fn method_not_allowed() -> impl Filter<Extract = (Reply,), Error = Rejection> + Clone {
    warp::method().and(warp::path::full()).and_then(
        |method: warp::http::Method, path: warp::path::FullPath| async move {
            let allowed = allowed_methods(path.as_str());
            if allowed.is_empty() || allowed.contains(&method.as_str()) {
                Err(warp::reject::not_found())
            } else {
                Err(warp::reject::custom(ApiError::MethodNotAllowed(
                    allowed.join(", "),
                )))
            }
        },
    )
}

/// The OpenAPI 3 description of every route, as written (without the bounds that
/// depend on the config; see [`openapi_document`]).
pub const OPENAPI: &str = include_str!("http/openapi.json");

/// The OpenAPI document as served: [`OPENAPI`] with the bounds this server enforces
/// that come from its config (the largest `max_concurrency` of its pools).
pub fn openapi_document(state: &AppState) -> serde_json::Value {
    let mut doc: serde_json::Value =
        serde_json::from_str(OPENAPI).expect("openapi.json is valid JSON. This is a bug.");
    let ceiling = state
        .pools
        .iter()
        .map(|p| p.config.ceiling())
        .max()
        .unwrap_or(1);
    let update = &mut doc["components"]["schemas"]["PoolUpdate"]["oneOf"];
    update[0]["properties"]["concurrency"]["maximum"] = ceiling.into();
    for bound in ["min", "max"] {
        update[1]["properties"]["autoscale"]["properties"][bound]["maximum"] = ceiling.into();
    }
    doc
}

/// `GET /openapi.json`, serving `body` (from [`openapi_document`]).
pub fn openapi(body: Bytes) -> impl Filter<Extract = (Reply,), Error = Rejection> + Clone {
    warp::path!("openapi.json").and(warp::get()).map(move || {
        let mut res = Reply::new(body.clone().into());
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        res
    })
}

/// `GET /metrics`: Prometheus text format.
pub fn metrics_route(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Reply,), Error = Rejection> + Clone {
    warp::path!("metrics")
        .and(warp::get())
        .and(with_state(state))
        .map(|state: Arc<AppState>| {
            let mut text = crate::metrics::render(&state.pools);
            if let Some(broker) = &state.broker {
                text.push_str(&crate::metrics::render_broker(broker, &state.pools));
            }
            let mut res = Reply::new(text.into());
            res.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            res
        })
}

/// Passes the shared state to a handler.
pub fn with_state(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Arc<AppState>,), Error = Infallible> + Clone {
    warp::any().map(move || state.clone())
}

/// A JSON reply with a status.
pub fn json_reply<T: Serialize>(status: StatusCode, body: &T) -> Reply {
    let bytes = serde_json::to_vec(body).expect("wire types serialize. This is a bug.");
    let mut res = Reply::new(bytes.into());
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

/// The error body and headers for an [`ApiError`].
pub fn error_reply(err: &ApiError) -> Reply {
    #[derive(Serialize)]
    struct Body<'a> {
        error: String,
        code: &'a str,
    }
    let mut res = json_reply(
        err.status(),
        &Body {
            error: err.to_string(),
            code: err.code(),
        },
    );
    if let Some(secs) = err.retry_after() {
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if let ApiError::MethodNotAllowed(allow) = err
        && let Ok(v) = HeaderValue::from_str(allow)
    {
        res.headers_mut().insert(header::ALLOW, v);
    }
    if matches!(err, ApiError::Unauthorized) {
        res.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"celeriac-admin\""),
        );
    }
    res
}

/// A request body: `content-type: application/json`, at most `limit` bytes (a
/// `content-length` is required), parsed by the handler for a precise error.
pub fn json_body(limit: u64) -> impl Filter<Extract = (Bytes,), Error = Rejection> + Clone {
    warp::header::optional::<String>("content-type")
        .and_then(|ct: Option<String>| async move {
            match ct {
                Some(ct)
                    if ct
                        .split(';')
                        .next()
                        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json")) =>
                {
                    Ok(())
                }
                other => Err(warp::reject::custom(ApiError::UnsupportedContentType(
                    other.unwrap_or_else(|| "(none)".into()),
                ))),
            }
        })
        .untuple_one()
        .and(warp::body::content_length_limit(limit))
        .and(warp::body::bytes())
}

/// The query of routes that take `wait=SECONDS` and nothing else.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitQuery {
    #[serde(default, deserialize_with = "seconds")]
    wait: Option<f64>,
}

/// The query of routes that take none.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoQuery {}

/// A finite number of seconds >= 0, with a message naming the field and the value.
fn seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    let raw = String::deserialize(d)?;
    raw.parse()
        .ok()
        .filter(|s: &f64| s.is_finite() && *s >= 0.0)
        .map(Some)
        .ok_or_else(|| {
            serde::de::Error::custom(format!(
                "`wait` must be a number of seconds >= 0, got `{raw}`"
            ))
        })
}

/// A query string as `T`; unknown, repeated or malformed parameters are a 400 that
/// says which (a misspelled parameter is never silently ignored).
fn query<T: serde::de::DeserializeOwned + Send>()
-> impl Filter<Extract = (T,), Error = Rejection> + Clone {
    warp::query::raw()
        .or(warp::any().map(String::new))
        .unify()
        .and_then(|q: String| async move {
            serde_urlencoded::from_str::<T>(&q).map_err(|e| {
                warp::reject::custom(ApiError::InvalidParameter(format!("query string: {e}")))
            })
        })
}

/// Parses the query string of routes that take only `wait=SECONDS`.
pub fn wait_param() -> impl Filter<Extract = (Option<f64>,), Error = Rejection> + Clone {
    query::<WaitQuery>().map(|q: WaitQuery| q.wait)
}

/// Rejects any query string, for routes that take no parameters.
pub fn no_query() -> impl Filter<Extract = (), Error = Rejection> + Clone {
    query::<NoQuery>().map(|_: NoQuery| ()).untuple_one()
}

/// Turns every rejection into the JSON error body; unknown ones are logged as 500.
pub async fn handle_rejection(err: Rejection, body_limit: u64) -> Result<Reply, Infallible> {
    let api = if let Some(e) = err.find::<ApiError>() {
        crate::metrics::rejected(e.code());
        return Ok(error_reply(e));
    } else if err.find::<warp::reject::PayloadTooLarge>().is_some() {
        ApiError::PayloadTooLarge(body_limit)
    } else if err.find::<warp::reject::LengthRequired>().is_some() {
        ApiError::LengthRequired
    } else if let Some(e) = err.find::<warp::reject::InvalidQuery>() {
        ApiError::InvalidParameter(e.to_string())
    } else if err.find::<warp::reject::MethodNotAllowed>().is_some() {
        // Every known path is caught by `method_not_allowed` first; kept for safety.
        ApiError::MethodNotAllowed("see /openapi.json".into())
    } else if err.is_not_found() {
        ApiError::RouteNotFound
    } else {
        tracing::error!(?err, "unhandled rejection");
        ApiError::Internal
    };
    crate::metrics::rejected(api.code());
    Ok(error_reply(&api))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_wait(q: &str) -> Result<Option<f64>, String> {
        serde_urlencoded::from_str::<WaitQuery>(q)
            .map(|w| w.wait)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn wait_parameter_parsing() {
        assert_eq!(parse_wait(""), Ok(None));
        assert_eq!(parse_wait("wait=2.5"), Ok(Some(2.5)));
        let e = parse_wait("wiat=2").unwrap_err();
        assert!(
            e.contains("unknown field `wiat`") && e.contains("`wait`"),
            "{e}"
        );
        for bad in ["wait=-1", "wait=abc", "wait=inf", "wait="] {
            let e = parse_wait(bad).unwrap_err();
            assert!(
                e.contains("`wait` must be a number of seconds >= 0"),
                "{bad}: {e}"
            );
        }
        assert!(
            parse_wait("wait=1&wait=2")
                .unwrap_err()
                .contains("duplicate")
        );
        let e = serde_urlencoded::from_str::<NoQuery>("x=1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `x`"), "{e}");
        assert!(serde_urlencoded::from_str::<NoQuery>("").is_ok());
    }

    #[test]
    fn routes_and_allowed_methods_come_from_one_table() {
        assert_eq!(
            route_of("POST", "/v1/tasks/spam.predict"),
            "/v1/tasks/:task"
        );
        assert_eq!(route_of("GET", "/v1/tasks/0f0e"), "/v1/tasks/:id");
        assert_eq!(
            route_of("POST", "/v1/tasks/x/batch"),
            "/v1/tasks/:task/batch"
        );
        assert_eq!(route_of("PATCH", "/v1/tasks/x"), "/v1/tasks/:task");
        assert_eq!(
            route_of("GET", "/v1/admin/pools/default"),
            "/v1/admin/pools/:pool"
        );
        assert_eq!(route_of("GET", "/some/random/path"), "other");
        assert_eq!(allowed_methods("/v1/tasks/x"), ["POST", "GET", "DELETE"]);
        assert_eq!(allowed_methods("/metrics"), ["GET"]);
        assert!(allowed_methods("/v1/nothing").is_empty());
        assert!(
            allowed_methods("/metrics/").is_empty(),
            "as warp: another path"
        );
    }
}
