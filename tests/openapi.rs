//! The OpenAPI document served at `/openapi.json`, against a real server: every
//! documented operation answers one of its documented statuses with the documented
//! shape, every route the server has is documented (and nothing else), and every error
//! code the server sends is in the document.

use crate::common;

use std::collections::BTreeSet;

use common::{Resp, Server, debug_config, start, with_admin_token};
use reqwest::Method;
use serde_json::{Value, json};

const TOKEN: &str = "t0ken";

/// Every route the server has (`celeriac::http::ROUTES`): its method and OpenAPI path
/// template. Submit, poll and revoke share `/v1/tasks/{task}`: the segment is the task
/// name for `POST` and the task id for `GET` and `DELETE`.
fn routes() -> Vec<(&'static str, String)> {
    celeriac::http::ROUTES
        .iter()
        .map(|r| (r.method, r.openapi_path()))
        .collect()
}

/// The keys of a path item that are operations.
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// One pool `p` (one worker) with the debug tasks, and the admin API enabled.
async fn server() -> Server {
    start(&with_admin_token(
        &debug_config("concurrency = 1", ""),
        TOKEN,
    ))
    .await
}

/// `GET /openapi.json`, parsed; checks it is the document compiled into the binary.
async fn document(s: &Server) -> Value {
    let r = s.get("/openapi.json").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.headers["content-type"].to_str().unwrap(),
        "application/json"
    );
    assert!(r.body.is_object(), "/openapi.json is not a JSON object");
    assert_eq!(r.body, celeriac::http::openapi_document(&s.state));
    // The bounds the server enforces from its config are stated.
    let update = &r.body["components"]["schemas"]["PoolUpdate"]["oneOf"];
    assert_eq!(update[0]["properties"]["concurrency"]["maximum"], 16);
    assert_eq!(
        update[1]["properties"]["autoscale"]["properties"]["max"]["maximum"],
        16
    );
    r.body
}

/// `(METHOD, path template, operation)` for every operation in the document.
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let paths = doc["paths"].as_object().expect("`paths` is an object");
    let mut ops = Vec::new();
    for (path, item) in paths {
        let item = item
            .as_object()
            .unwrap_or_else(|| panic!("path item {path} is not an object"));
        for (key, op) in item {
            if METHODS.contains(&key.as_str()) {
                ops.push((key.to_uppercase(), path.clone(), op.clone()));
            }
        }
    }
    ops
}

/// Follows local `$ref`s (`#/components/...`) to what they name.
fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let pointer = r
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("$ref {r} is not local"));
            let target = doc
                .pointer(pointer)
                .unwrap_or_else(|| panic!("$ref {r} names nothing"));
            resolve(doc, target)
        }
        None => v,
    }
}

/// What does not match when `value` is checked against `schema`, a schema of the
/// document (OpenAPI 3.1: JSON Schema 2020-12), validated by the `jsonschema` crate with
/// the document's components in scope, so `#/components/...` references resolve.
fn check(doc: &Value, schema: &Value, value: &Value) -> Vec<String> {
    let root = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "components": doc["components"],
        "allOf": [schema],
    });
    let validator = jsonschema::validator_for(&root)
        .unwrap_or_else(|e| panic!("the document's schema {schema} does not compile: {e}"));
    validator
        .iter_errors(value)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

/// Asserts that `r` is documented for `op`: its status is listed, its content type is
/// one of that response's, a JSON body matches the schema, and every documented
/// response header was sent.
fn check_response(doc: &Value, op: &Value, r: &Resp, what: &str) {
    let status = r.status.to_string();
    let Some(documented) = op["responses"].get(status.as_str()) else {
        panic!(
            "{what}: answered {status}, which the document does not list: {}",
            r.body
        );
    };
    let documented = resolve(doc, documented);
    if let Some(content) = documented["content"].as_object() {
        let content_type = r
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let media = content_type.split(';').next().unwrap_or("").trim();
        let Some(media_doc) = content.get(media) else {
            panic!(
                "{what}: answered content-type `{content_type}`, documented: {:?}",
                content.keys().collect::<Vec<_>>()
            );
        };
        if media == "application/json" {
            let problems = check(doc, &media_doc["schema"], &r.body);
            assert!(
                problems.is_empty(),
                "{what}: {status} body {} does not match the document: {problems:#?}",
                r.body
            );
        }
    }
    if let Some(headers) = documented["headers"].as_object() {
        for name in headers.keys() {
            assert!(
                r.headers.contains_key(name.to_ascii_lowercase().as_str()),
                "{what}: {status} without the documented header `{name}`"
            );
        }
    }
}

/// The operation `METHOD template` of the document.
fn operation<'a>(doc: &'a Value, method: &str, template: &str) -> &'a Value {
    let op = &doc["paths"][template][method.to_ascii_lowercase()];
    assert!(op.is_object(), "{method} {template} is not in the document");
    op
}

/// A request with an optional JSON body and, for admin routes, the bearer token.
async fn send(s: &Server, method: &str, path: &str, body: Option<&Value>, admin: bool) -> Resp {
    let method = Method::from_bytes(method.as_bytes()).expect("a method name");
    let mut req = s.client.request(method, format!("{}{path}", s.url));
    if admin {
        req = req.bearer_auth(TOKEN);
    }
    if let Some(b) = body {
        req = req.json(b);
    }
    Resp::from_response(req.send().await.unwrap()).await
}

/// The template with every path parameter the operation declares filled in: a pool
/// name, a task name, or (for a UUID) the id of a task submitted just now.
async fn concrete_path(s: &Server, doc: &Value, template: &str, op: &Value) -> String {
    let mut path = template.to_string();
    for p in op["parameters"].as_array().into_iter().flatten() {
        let p = resolve(doc, p);
        if p["in"] != "path" {
            continue;
        }
        let name = p["name"].as_str().expect("a parameter has a name");
        let value = match (name, p["schema"]["format"].as_str()) {
            (_, Some("uuid")) => s.submit("debug.echo", json!({"n": 1})).await,
            ("task", _) => "debug.echo".to_string(),
            ("pool", _) => "p".to_string(),
            (other, _) => panic!("{template}: no test value for path parameter `{other}`"),
        };
        path = path.replace(&format!("{{{name}}}"), &value);
    }
    assert!(
        !path.contains('{'),
        "{template}: a path parameter is not declared: {path}"
    );
    path
}

/// `PUT /v1/admin/pools/{pool}` with the token.
async fn admin_put(s: &Server, pool: &str, body: Value) -> Resp {
    send(
        s,
        "PUT",
        &format!("/v1/admin/pools/{pool}"),
        Some(&body),
        true,
    )
    .await
}

/// A small valid body for the operations that take one.
fn request_body(method: &str, template: &str) -> Option<Value> {
    match (method, template) {
        ("POST", t) if t.ends_with("/batch") => Some(json!({"inputs": [1]})),
        ("POST", "/v1/embeddings") => Some(json!({"input": "hi", "model": "debug.echo"})),
        ("POST", "/embed" | "/predict" | "/") => Some(json!({"inputs": "hi"})),
        ("POST", "/rerank") => Some(json!({"query": "q", "texts": ["a"]})),
        ("POST", _) => Some(json!({})),
        ("PUT", _) => Some(json!({"concurrency": 1})),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_answers_as_documented() {
    let s = server().await;
    let doc = document(&s).await;
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "openapi: {}",
        doc["openapi"]
    );
    assert_eq!(doc["info"]["title"], "celeriac");
    assert_eq!(doc["info"]["version"], "0.1.0");

    let ops = operations(&doc);
    assert!(!ops.is_empty(), "the document has no operation");
    for (method, template, op) in &ops {
        let path = concrete_path(&s, &doc, template, op).await;
        let what = format!("{method} {path} ({template})");
        let body = request_body(method, template);
        assert_eq!(
            op.get("requestBody").is_some(),
            body.is_some(),
            "{what}: a request body is documented iff the route reads one"
        );
        if let Some(b) = &body {
            let schema = &op["requestBody"]["content"]["application/json"]["schema"];
            let problems = check(&doc, schema, b);
            assert!(
                problems.is_empty(),
                "{what}: {b} is refused by the document: {problems:#?}"
            );
        }
        let admin = op.get("security").is_some();
        let r = send(&s, method, &path, body.as_ref(), admin).await;
        assert_ne!(r.status, 405, "{what}: method not allowed: {}", r.body);
        assert!(
            !(r.status == 404 && r.body["code"] == "not_found"),
            "{what}: no such route: {}",
            r.body
        );
        check_response(&doc, op, &r, &what);
    }

    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_lists_exactly_the_routes_the_server_has() {
    let s = server().await;
    let doc = document(&s).await;

    let documented: BTreeSet<(String, String)> = operations(&doc)
        .into_iter()
        .map(|(method, path, _)| (method, path))
        .collect();
    let served: BTreeSet<(String, String)> = routes()
        .into_iter()
        .map(|(method, path)| (method.to_string(), path))
        .collect();
    let missing: Vec<_> = served.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&served).collect();
    assert!(
        missing.is_empty(),
        "routes missing from the document: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "documented operations the server lacks: {extra:?}"
    );

    // Each route is served: a request with a wrong method is a 405, not an unrouted 404.
    // The 405 names the allowed methods in `Allow` (RFC 9110).
    for (method, template) in routes() {
        let path = template
            .replace("{task}", "debug.echo")
            .replace("{pool}", "p");
        let wrong = if method == "PUT" { "PATCH" } else { "PUT" };
        let r = send(&s, wrong, &path, None, false).await;
        r.assert_error(405, "method_not_allowed");
        let allow = r.headers["allow"].to_str().unwrap();
        assert!(
            allow.split(", ").any(|m| m == method),
            "{wrong} {path}: Allow `{allow}` lacks {method}"
        );
        assert!(!allow.contains(wrong), "{wrong} {path}: Allow `{allow}`");
    }

    // Operation ids are unique; admin operations, and only they, need the bearer token.
    let mut ids = BTreeSet::new();
    for (method, path, op) in operations(&doc) {
        let id = op["operationId"].as_str().unwrap_or_default().to_string();
        assert!(
            ids.insert(id),
            "{method} {path}: operationId missing or repeated"
        );
        let admin = path.starts_with("/v1/admin/");
        assert_eq!(
            op.get("security").is_some(),
            admin,
            "{method} {path}: security"
        );
        if admin {
            assert_eq!(
                op["security"],
                json!([{"bearerAuth": []}]),
                "{method} {path}"
            );
            assert!(
                op["responses"].get("401").is_some(),
                "{method} {path}: no 401"
            );
            assert!(
                op["responses"].get("403").is_some(),
                "{method} {path}: no 403"
            );
        }
    }
    assert!(
        doc.get("security").is_none(),
        "no global security requirement"
    );
    let scheme = &doc["components"]["securitySchemes"]["bearerAuth"];
    assert_eq!(scheme["type"], "http");
    assert_eq!(scheme["scheme"], "bearer");

    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_code_the_server_sends_is_documented() {
    let s = server().await;
    let doc = document(&s).await;
    let error = &doc["components"]["schemas"]["Error"];
    let codes: BTreeSet<&str> = error["properties"]["code"]["enum"]
        .as_array()
        .expect("Error.code has an enum")
        .iter()
        .map(|c| c.as_str().expect("codes are strings"))
        .collect();

    let submit = operation(&doc, "POST", "/v1/tasks/{task}");
    let batch = operation(&doc, "POST", "/v1/tasks/{task}/batch");
    let poll = operation(&doc, "GET", "/v1/tasks/{task}");
    let revoke = operation(&doc, "DELETE", "/v1/tasks/{task}");
    let pools = operation(&doc, "GET", "/v1/admin/pools");
    let update = operation(&doc, "PUT", "/v1/admin/pools/{pool}");

    let finished = s.submit("debug.echo", json!({})).await;
    assert_eq!(s.wait_final(&finished, 5.0).await["state"], "SUCCESS");

    // (what, the operation when the route exists, the answer, status, code)
    let cases: Vec<(&str, Option<&Value>, Resp, u16, &str)> = vec![
        (
            "bad JSON",
            Some(submit),
            s.post_raw(
                "/v1/tasks/debug.echo",
                "application/json",
                b"{nope".to_vec(),
            )
            .await,
            400,
            "invalid_json",
        ),
        (
            "not JSON",
            Some(submit),
            s.post_raw("/v1/tasks/debug.echo", "text/plain", b"{}".to_vec())
                .await,
            400,
            "unsupported_content_type",
        ),
        (
            "misspelled query parameter",
            Some(submit),
            s.post("/v1/tasks/debug.echo?wiat=1", &json!({})).await,
            400,
            "invalid_parameter",
        ),
        (
            "empty batch",
            Some(batch),
            s.post("/v1/tasks/debug.echo/batch", &json!({"inputs": []}))
                .await,
            400,
            "invalid_body",
        ),
        (
            "unknown task",
            Some(submit),
            s.post("/v1/tasks/no.such.task", &json!({})).await,
            404,
            "unknown_task",
        ),
        (
            "refused input",
            Some(submit),
            s.post("/v1/tasks/debug.sleep", &json!({"ms": "soon"}))
                .await,
            422,
            "invalid_input",
        ),
        (
            "body over the limit",
            Some(submit),
            s.post("/v1/tasks/debug.echo", &json!("x".repeat(5000)))
                .await,
            413,
            "payload_too_large",
        ),
        (
            "id never issued",
            Some(poll),
            s.get("/v1/tasks/00000000-0000-4000-8000-000000000000")
                .await,
            404,
            "task_not_found",
        ),
        (
            "revoke a finished task",
            Some(revoke),
            s.delete(&format!("/v1/tasks/{finished}")).await,
            409,
            "not_revocable",
        ),
        (
            "missing token",
            Some(pools),
            s.get("/v1/admin/pools").await,
            401,
            "unauthorized",
        ),
        (
            "unknown pool",
            Some(update),
            admin_put(&s, "nope", json!({"concurrency": 1})).await,
            404,
            "unknown_pool",
        ),
        (
            "size out of range",
            Some(update),
            admin_put(&s, "p", json!({"concurrency": 0})).await,
            422,
            "invalid_value",
        ),
        (
            "bad update body",
            Some(update),
            admin_put(&s, "p", json!({"concurency": 2})).await,
            400,
            "invalid_body",
        ),
        (
            "no such route",
            None,
            s.get("/v1/nothing/here").await,
            404,
            "not_found",
        ),
        (
            "wrong method",
            None,
            send(&s, "PUT", "/v1/tasks/debug.echo", None, false).await,
            405,
            "method_not_allowed",
        ),
    ];

    for (what, op, r, status, code) in &cases {
        r.assert_error(*status, code);
        let emitted = r.body["code"].as_str().expect("an error code");
        assert!(
            codes.contains(emitted),
            "{what}: code `{emitted}` is not in the document's Error.code enum {codes:?}"
        );
        match op {
            Some(op) => check_response(&doc, op, r, what),
            None => {
                let problems = check(&doc, error, &r.body);
                assert!(problems.is_empty(), "{what}: {problems:#?}");
            }
        }
    }

    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_view_schema_matches_real_answers() {
    let s = server().await;
    let doc = document(&s).await;
    let schema = &doc["components"]["schemas"]["TaskView"];
    let documented: BTreeSet<String> = schema["properties"]
        .as_object()
        .expect("TaskView has properties")
        .keys()
        .cloned()
        .collect();
    let required: BTreeSet<String> = schema["required"]
        .as_array()
        .expect("TaskView has required properties")
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    let keys = |v: &Value| -> BTreeSet<String> {
        v.as_object()
            .unwrap_or_else(|| panic!("not an object: {v}"))
            .keys()
            .cloned()
            .collect()
    };
    // The validator is not vacuous: a wrong state, a missing id, an unknown key.
    for bad in [
        json!({"task_id": "x", "task": "t", "state": "NOPE", "submitted_at": "t", "retries": 0}),
        json!({"task": "t", "state": "SUCCESS", "submitted_at": "t", "retries": 0}),
        json!({"task_id": "x", "task": "t", "state": "SUCCESS", "submitted_at": "t", "retries": 0, "extra": 1}),
    ] {
        assert!(
            !check(&doc, schema, &bad).is_empty(),
            "{bad} passed as a TaskView"
        );
    }
    let conforms = |v: &Value| {
        let problems = check(&doc, schema, v);
        assert!(problems.is_empty(), "{v} against TaskView: {problems:#?}");
    };

    // Finished with a result: every key but `error`.
    let ok = s.submit("debug.echo", json!({"x": [1, 2]})).await;
    let ok = s.wait_final(&ok, 5.0).await;
    assert_eq!(ok["state"], "SUCCESS", "{ok}");
    conforms(&ok);
    let mut expected = documented.clone();
    expected.remove("error");
    assert_eq!(keys(&ok), expected, "a SUCCESS answer: {ok}");

    // Failed: every key but `result`; with the success, every documented key.
    let failed = s.submit("debug.fail", json!({"message": "no"})).await;
    let failed = s.wait_final(&failed, 5.0).await;
    assert_eq!(failed["state"], "FAILURE", "{failed}");
    conforms(&failed);
    let answered: BTreeSet<String> = keys(&ok).union(&keys(&failed)).cloned().collect();
    assert_eq!(answered, documented, "TaskView properties vs real answers");

    // Queued behind a busy worker: exactly the required keys.
    let busy = s.submit("debug.sleep", json!({"ms": 1000})).await;
    assert!(s.wait_started(&busy).await);
    let queued = s.submit("debug.echo", json!({})).await;
    let pending = s.get(&format!("/v1/tasks/{queued}")).await.body;
    assert_eq!(pending["state"], "PENDING", "{pending}");
    conforms(&pending);
    assert_eq!(keys(&pending), required, "a PENDING answer: {pending}");

    // Revoked: the reason in `error`, no `started_at`.
    let revoked = s.delete(&format!("/v1/tasks/{queued}")).await;
    assert_eq!(revoked.status, 200, "{}", revoked.body);
    assert_eq!(revoked.body["state"], "REVOKED");
    conforms(&revoked.body);
    assert!(revoked.body["error"].is_string(), "{}", revoked.body);
    assert!(revoked.body.get("started_at").is_none(), "{}", revoked.body);

    s.shutdown().await;
}
