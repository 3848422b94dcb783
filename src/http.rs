//! The HTTP API (warp): route filters, shared helpers and the root rejection handler.

pub mod admin;
pub mod body;
pub mod call;
pub mod health;
pub mod models;
pub mod openai;
pub mod openapi;
pub mod responses;
pub mod tasks;
pub mod tei;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use utoipa::openapi::path::{HttpMethod, Operation};
use warp::http::{HeaderValue, StatusCode, header};
use warp::{Filter, Rejection};

use crate::error::{ApiError, ErrorBody};
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
    // The OpenAI and TEI routes, boxed: one type fewer in the chain below, whose depth
    // otherwise passes the compiler's recursion limit where it is instantiated.
    let client_routes = openai::embeddings(state.clone())
        .or(tei::embed(state.clone()))
        .unify()
        .or(tei::rerank(state.clone()))
        .unify()
        .or(tei::predict(state.clone()))
        .unify()
        .or(tei::info(state.clone()))
        .unify()
        .or(tei::root(state.clone()))
        .unify()
        .boxed();
    let keys = state.clone();
    warp::path::full()
        .and(warp::header::optional::<String>("authorization"))
        .and_then(move |path: warp::path::FullPath, auth: Option<String>| {
            let keys = keys.clone();
            async move {
                match (serves_tasks, path.as_str().starts_with("/v1/tasks/")) {
                    (true, true) if !key_accepted(&keys, auth.as_deref()) => {
                        Err(warp::reject::custom(ApiError::InvalidApiKey))
                    }
                    (true, _) => Ok(()),
                    (false, true) => Err(warp::reject::custom(ApiError::WorkerNode)),
                    (false, false) => Err(warp::reject::not_found()),
                }
            }
        })
        .untuple_one()
        .and(task_routes)
        .or(models::list(state.clone()))
        .unify()
        .or(client_routes)
        .unify()
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

/// One route of the API. [`ROUTES`] lists them all: the `Allow` header of a 405, the
/// metrics' `route` label and the paths of the OpenAPI document come from it.
pub struct Route {
    /// The HTTP method, upper case.
    pub method: &'static str,
    /// The path template: `:name` stands for one segment (OpenAPI writes it `{name}`:
    /// [`Route::openapi_path`]). It is also the metrics' `route` label, where braces
    /// would trip up some parsers of the Prometheus text format (prometheus-parse).
    pub path: &'static str,
    /// The OpenAPI tag the operation is listed under.
    pub tag: &'static str,
    /// The `#[utoipa::path]` annotation of the route's filter: its path, its methods and
    /// the operation.
    describe: fn() -> (String, Vec<HttpMethod>, Operation),
}

impl Route {
    /// The route `method path`, documented by the `#[utoipa::path]` annotation `P` (the
    /// type the annotation generates, `__path_<filter>`).
    const fn new<P: utoipa::Path>(
        method: &'static str,
        path: &'static str,
        tag: &'static str,
    ) -> Self {
        Route {
            method,
            path,
            tag,
            describe: describe::<P>,
        }
    }

    /// [`Route::path`] as OpenAPI writes it: `{name}` for `:name`.
    pub fn openapi_path(&self) -> String {
        self.path
            .split('/')
            .map(|seg| match seg.strip_prefix(':') {
                Some(name) => format!("{{{name}}}"),
                None => seg.to_string(),
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    /// The route's OpenAPI operation, tagged. Panics when its annotation names another
    /// path or method than the table: a bug, caught by any test that builds the document.
    pub fn operation(&self) -> Operation {
        let (path, methods, mut op) = (self.describe)();
        assert!(
            path == self.openapi_path() && methods == [self.http_method()],
            "the #[utoipa::path] of `{} {}` names another path or method. This is a bug.",
            self.method,
            self.path
        );
        op.tags = Some(vec![self.tag.to_string()]);
        op
    }

    /// [`Route::method`] as OpenAPI's method.
    pub fn http_method(&self) -> HttpMethod {
        match self.method {
            "GET" => HttpMethod::Get,
            "POST" => HttpMethod::Post,
            "PUT" => HttpMethod::Put,
            "DELETE" => HttpMethod::Delete,
            "PATCH" => HttpMethod::Patch,
            other => panic!("no route uses {other}. This is a bug."),
        }
    }
}

fn describe<P: utoipa::Path>() -> (String, Vec<HttpMethod>, Operation) {
    (P::path(), P::methods(), P::operation())
}

/// Every route the server has (each a filter in [`routes`]). Submit, poll and revoke share a
/// template: OpenAPI forbids two templates that differ only in a parameter's name, so
/// the segment is the task name for `POST` and the task id for `GET` and `DELETE`.
pub const ROUTES: &[Route] = &[
    Route::new::<tasks::__path_submit>("POST", "/v1/tasks/:task", "tasks"),
    Route::new::<tasks::__path_submit_batch>("POST", "/v1/tasks/:task/batch", "tasks"),
    Route::new::<tasks::__path_get>("GET", "/v1/tasks/:task", "tasks"),
    Route::new::<tasks::__path_revoke>("DELETE", "/v1/tasks/:task", "tasks"),
    Route::new::<admin::__path_list>("GET", "/v1/admin/pools", "admin"),
    Route::new::<admin::__path_update>("PUT", "/v1/admin/pools/:pool", "admin"),
    Route::new::<__path_metrics_route>("GET", "/metrics", "operations"),
    Route::new::<health::__path_live>("GET", "/health/live", "operations"),
    Route::new::<health::__path_ready>("GET", "/health/ready", "operations"),
    Route::new::<__path_openapi>("GET", "/openapi.json", "operations"),
    Route::new::<models::__path_list>("GET", "/v1/models", "models"),
    Route::new::<openai::__path_embeddings>("POST", "/v1/embeddings", "openai"),
    Route::new::<tei::__path_embed>("POST", "/embed", "tei"),
    Route::new::<tei::__path_rerank>("POST", "/rerank", "tei"),
    Route::new::<tei::__path_predict>("POST", "/predict", "tei"),
    Route::new::<tei::__path_info>("GET", "/info", "tei"),
    Route::new::<tei::__path_root>("POST", "/", "tei"),
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
        .find(|r| r.method == method && template_matches(r.path, path))
        .or_else(|| ROUTES.iter().find(|r| template_matches(r.path, path)))
        .map_or("other", |r| r.path)
}

/// The methods some route serves at `path`, in table order.
pub fn allowed_methods(path: &str) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for r in ROUTES {
        if template_matches(r.path, path) && !out.contains(&r.method) {
            out.push(r.method);
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

/// The OpenAPI document as served: [`openapi::document`] with the bounds this server
/// enforces that come from its config (the largest `max_concurrency` of its pools).
pub fn openapi_document(state: &AppState) -> serde_json::Value {
    let ceiling = state
        .pools
        .iter()
        .map(|p| p.config.ceiling())
        .max()
        .unwrap_or(1);
    serde_json::to_value(openapi::document(Some(ceiling)))
        .expect("the OpenAPI document serializes. This is a bug.")
}

/// `GET /openapi.json`, serving `body` (from [`openapi_document`]).
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    summary = "This document",
    responses((
        status = 200,
        description = "The OpenAPI 3.1 description of every route, with the bounds this server enforces.",
        body = Object,
        content_type = "application/json",
    )),
)]
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
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    summary = "Prometheus metrics",
    responses((
        status = 200,
        description = "Prometheus text exposition format 0.0.4; every metric is prefixed `celeriac_`.",
        body = String,
        content_type = "text/plain",
    )),
)]
pub fn metrics_route(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Reply,), Error = Rejection> + Clone {
    warp::path!("metrics")
        .and(warp::get())
        .and(with_state(state))
        .map(|state: Arc<AppState>| {
            let mut text = crate::metrics::render(&state.pools);
            text.push_str(&state.backend.render_metrics());
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
    let mut res = json_reply(err.status(), &ErrorBody::from(err));
    if let Some(secs) = err.retry_after() {
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if let ApiError::MethodNotAllowed(allow) = err
        && let Ok(v) = HeaderValue::from_str(allow)
    {
        res.headers_mut().insert(header::ALLOW, v);
    }
    www_authenticate(err, &mut res);
    res
}

/// Adds `WWW-Authenticate` to the answer of a 401: the admin realm for the admin
/// token, the API realm for `server.api_keys`.
pub fn www_authenticate(err: &ApiError, res: &mut Reply) {
    let realm = match err {
        ApiError::Unauthorized => "Bearer realm=\"celeriac-admin\"",
        ApiError::InvalidApiKey => "Bearer realm=\"celeriac\"",
        _ => return,
    };
    res.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(realm));
}

/// Checks `Authorization: Bearer KEY` against `server.api_keys` when any is set (401
/// `invalid_api_key` otherwise). Guards the client APIs; the task routes check it in
/// [`routes`]. Without keys it lets everything through.
pub fn api_key(state: Arc<AppState>) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::header::optional::<String>("authorization")
        .and(with_state(state))
        .and_then(|header: Option<String>, state: Arc<AppState>| async move {
            if key_accepted(&state, header.as_deref()) {
                Ok(())
            } else {
                Err(warp::reject::custom(ApiError::InvalidApiKey))
            }
        })
        .untuple_one()
}

/// Whether an `Authorization` header passes `server.api_keys` (always, without keys).
/// Every key is compared, each in constant time, so the time says neither which key
/// matched nor how much of one.
fn key_accepted(state: &AppState, header: Option<&str>) -> bool {
    let keys = &state.config.server.api_keys;
    if !keys.enabled() {
        return true;
    }
    let given = header
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or("");
    keys.0.iter().fold(false, |found, key| {
        admin::constant_time_eq(given.as_bytes(), key.as_bytes()) | found
    })
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
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct WaitQuery {
    /// Seconds to wait for the task to reach a final state, capped at
    /// `server.max_wait_seconds`; 0 (or absent) does not wait. This route takes no other
    /// query parameter: any other one, or a `wait` that is not a finite number >= 0, is a
    /// 400 `invalid_parameter`.
    #[serde(default, deserialize_with = "seconds")]
    #[param(minimum = 0)]
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
    let api = api_error(&err, body_limit);
    crate::metrics::rejected(api.code());
    Ok(error_reply(&api))
}

/// The API error a rejection stands for (counted and answered by the caller, in its
/// API's shape); an unknown rejection is logged and becomes [`ApiError::Internal`].
pub fn api_error(err: &Rejection, body_limit: u64) -> ApiError {
    if let Some(e) = err.find::<ApiError>() {
        e.clone()
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
    }
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
        assert_eq!(route_of("GET", "/v1/tasks/0f0e"), "/v1/tasks/:task");
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
        let openapi: Vec<String> = ROUTES.iter().map(Route::openapi_path).collect();
        assert_eq!(openapi[1], "/v1/tasks/{task}/batch");
        assert_eq!(openapi[5], "/v1/admin/pools/{pool}");
        assert_eq!(openapi[6], "/metrics");
        assert_eq!(route_of("GET", "/v1/models"), "/v1/models");
        assert_eq!(allowed_methods("/v1/models"), ["GET"]);
    }
}
