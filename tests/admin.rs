//! Operating the pool against a real server: auth, resize under load, autoscale, and
//! `/metrics` read with an independent Prometheus parser.

use crate::common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{Server, start, wait_until};
use serde_json::{Value, json};

const TOKEN: &str = "t0p-s3cret";

/// One pool `name` and a sleep task `name.sleep` and echo task `name.echo` routed to it.
/// Pool and task names are unique per test: metrics are per process.
fn config(name: &str, pool: &str, token: bool) -> String {
    let token = if token {
        format!("admin_token = \"{TOKEN}\"")
    } else {
        String::new()
    };
    format!(
        r#"
        [server]
        {token}
        [supervisor]
        backoff_initial_ms = 20
        backoff_max_ms = 200
        [pools.{name}]
        {pool}
        [tasks."{name}.sleep"]
        kind = "debug.sleep"
        pool = "{name}"
        [tasks."{name}.echo"]
        kind = "debug.echo"
        pool = "{name}"
        "#
    )
}

async fn admin(
    s: &Server,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> common::Resp {
    let mut req = s
        .client
        .request(method, format!("{}{path}", s.url))
        .bearer_auth(TOKEN);
    if let Some(b) = body {
        req = req.json(&b);
    }
    common::Resp::from_response(req.send().await.unwrap()).await
}

async fn pool_view(s: &Server, name: &str) -> Value {
    let r = admin(s, reqwest::Method::GET, "/v1/admin/pools", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pool"] == name)
        .cloned()
        .unwrap()
}

async fn resize(s: &Server, pool: &str, body: Value) -> common::Resp {
    admin(
        s,
        reqwest::Method::PUT,
        &format!("/v1/admin/pools/{pool}"),
        Some(body),
    )
    .await
}

async fn finished(s: &Server) -> f64 {
    let m = s.scrape().await;
    sample(
        &m,
        "celeriac_tasks_finished_total",
        &[("task", "resize.sleep"), ("state", "SUCCESS")],
    )
}

async fn size_of(s: &Server, pool: &str) -> u64 {
    pool_view(s, pool).await["size"].as_u64().unwrap()
}

/// The value of the sample named `metric` whose labels include all of `labels`.
fn sample(scrape: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .find(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            other => panic!("{metric}: unexpected {other:?}"),
        })
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_auth_no_token_missing_wrong_right() {
    let s = start(&config("authoff", "concurrency = 1", false)).await;
    let r = s.get("/v1/admin/pools").await;
    r.assert_error(403, "admin_disabled");
    assert!(
        r.body["error"]
            .as_str()
            .unwrap()
            .contains("CELERIAC_ADMIN_TOKEN")
    );
    s.shutdown().await;

    let s = start(&config("authon", "concurrency = 1", true)).await;
    let r = s.get("/v1/admin/pools").await;
    r.assert_error(401, "unauthorized");
    assert!(r.headers.contains_key("www-authenticate"));
    let r = s
        .client
        .get(format!("{}/v1/admin/pools", s.url))
        .bearer_auth("t0p-s3creT")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = s
        .client
        .put(format!("{}/v1/admin/pools/authon", s.url))
        .bearer_auth("wrong")
        .json(&json!({"concurrency": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401, "a wrong token changes nothing");
    let v = pool_view(&s, "authon").await;
    assert_eq!(v["size"], 1);
    assert_eq!(v["kind"], "threads");
    assert_eq!(v["devices"], json!(["cpu"]));
    assert_eq!(v["workers"]["idle"], 1);
    assert_eq!(v["queue"]["capacity"], 1000);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resize_requests_are_validated() {
    let s = start(&config(
        "valid",
        "concurrency = 2\nmax_concurrency = 6",
        true,
    ))
    .await;
    for (body, status, code) in [
        (json!({"concurency": 3}), 400, "invalid_body"),
        (json!({"concurrency": 2.5}), 400, "invalid_body"),
        (json!({"concurrency": "3"}), 400, "invalid_body"),
        (json!({"concurrency": -1}), 400, "invalid_body"),
        (json!({"concurrency": 0}), 422, "invalid_value"),
        (json!({"concurrency": 7}), 422, "invalid_value"),
        (
            json!({"autoscale": {"min": 3, "max": 2}}),
            422,
            "invalid_value",
        ),
        (
            json!({"autoscale": {"min": 1, "max": 9}}),
            422,
            "invalid_value",
        ),
    ] {
        resize(&s, "valid", body.clone())
            .await
            .assert_error(status, code);
    }
    resize(&s, "nope", json!({"concurrency": 1}))
        .await
        .assert_error(404, "unknown_pool");
    // None of that changed the pool.
    assert_eq!(pool_view(&s, "valid").await["size"], 2);
    // A manual size must lie within the autoscale bounds.
    let r = resize(&s, "valid", json!({"autoscale": {"min": 3, "max": 5}})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["size"], 3, "the size is clamped into new bounds");
    assert_eq!(r.body["autoscale"], json!({"min": 3, "max": 5}));
    resize(&s, "valid", json!({"concurrency": 6}))
        .await
        .assert_error(422, "invalid_value");
    let r = resize(&s, "valid", json!({"autoscale": null})).await;
    assert_eq!(r.body["autoscale"], Value::Null);
    let r = resize(&s, "valid", json!({"concurrency": 6})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["workers"]["idle"], 6);
    s.shutdown().await;
}

/// Numbers that once reached a `Duration` unchecked and panicked the pool actor
/// (`scale_down_idle_seconds: 1e300`), and every other autoscale field given 1e300,
/// -1, a `NaN`-like string and 2^64: each is a 4xx naming the field, and the node stays
/// ready and serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_admin_numbers_are_refused_and_the_node_keeps_serving() {
    let s = start(&config(
        "bounds",
        "concurrency = 1\nmax_concurrency = 2",
        true,
    ))
    .await;
    let huge: Value = serde_json::from_str("18446744073709551616").unwrap();
    let fields = [
        "min",
        "max",
        "scale_up_queue_depth",
        "scale_up_wait_ms",
        "scale_up_cooldown_seconds",
        "scale_down_idle_seconds",
        "check_interval_ms",
    ];
    for field in fields {
        for bad in [
            json!(1e300),
            json!(-1),
            json!("NaN"),
            json!("nan"),
            huge.clone(),
        ] {
            let mut a = json!({"min": 1, "max": 2});
            a[field] = bad.clone();
            let r = resize(&s, "bounds", json!({"autoscale": a})).await;
            assert!(
                matches!(r.status, 400 | 422),
                "{field}={bad}: {} {}",
                r.status,
                r.body
            );
            let error = r.body["error"].as_str().unwrap();
            assert!(
                error.contains(&format!("`autoscale.{field}`")),
                "{field}={bad}: {error}"
            );
        }
    }
    // The issue's request, word for word: refused, and nothing panics later.
    let r = resize(
        &s,
        "bounds",
        json!({"autoscale": {"min": 1, "max": 2, "scale_down_idle_seconds": 1e300}}),
    )
    .await;
    r.assert_error(422, "invalid_value");
    // The longest allowed idle period is accepted and lives with the pool.
    let r = resize(
        &s,
        "bounds",
        json!({"autoscale": {"min": 1, "max": 2, "scale_down_idle_seconds": 86400, "scale_up_wait_ms": 86400000, "check_interval_ms": 1}}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // Several autoscaler ticks later, the node is ready and answers.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let ready = s.get("/health/ready").await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    let id = s.submit("bounds.echo", json!({"still": "here"})).await;
    assert_eq!(
        s.wait_final(&id, 10.0).await["result"],
        json!({"still": "here"})
    );
    s.shutdown().await;
}

/// 1 → 8 → 2 → 4 while 2,000 sleep tasks are in flight: every task finishes exactly
/// once, and the workers-by-state gauges end equal to the configured size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resize_under_load_loses_nothing_and_runs_each_task_once() {
    let s = start(&config(
        "resize",
        "concurrency = 1\nmax_concurrency = 8\nqueue_capacity = 5000",
        true,
    ))
    .await;
    let mut ids = Vec::new();
    for chunk in 0..20 {
        let inputs: Vec<Value> = (0..100)
            .map(|i| json!({"ms": (chunk + i) % 3 + 1}))
            .collect();
        let r = s
            .post("/v1/tasks/resize.sleep/batch", &json!({ "inputs": inputs }))
            .await;
        assert_eq!(r.status, 202, "{}", r.body);
        ids.extend(
            r.body["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["task_id"].as_str().unwrap().to_string()),
        );
    }
    for (size, after) in [(8, 300.0), (2, 900.0), (4, 1300.0)] {
        assert!(
            wait_until(Duration::from_secs(30), || async {
                finished(&s).await >= after
            })
            .await,
            "progress before resizing to {size}"
        );
        let r = resize(&s, "resize", json!({ "concurrency": size })).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["size"], size);
        let w = &r.body["workers"];
        let running = w["idle"].as_u64().unwrap() + w["busy"].as_u64().unwrap();
        assert_eq!(running as usize, size, "{}", r.body);
    }
    for id in &ids {
        let v = s.wait_final(id, 30.0).await;
        assert_eq!(v["state"], "SUCCESS", "{v}");
        assert_eq!(v["retries"], 0, "{v}");
    }
    let m = s.scrape().await;
    let labels = [("task", "resize.sleep"), ("state", "SUCCESS")];
    assert_eq!(sample(&m, "celeriac_tasks_finished_total", &labels), 2000.0);
    assert_eq!(
        sample(
            &m,
            "celeriac_tasks_finished_total",
            &[("task", "resize.sleep"), ("state", "FAILURE")]
        ),
        0.0
    );
    // Each task ran exactly once: one run-time observation per task.
    assert_eq!(
        sample(
            &m,
            "celeriac_task_run_seconds_count",
            &[("task", "resize.sleep")]
        ),
        2000.0
    );
    assert!(
        wait_until(Duration::from_secs(10), || async {
            let m = s.scrape().await;
            let state =
                |st: &str| sample(&m, "celeriac_workers", &[("pool", "resize"), ("state", st)]);
            state("idle") + state("busy") == 4.0
                && state("starting") == 0.0
                && state("stopping") == 0.0
                && sample(&m, "celeriac_pool_size", &[("pool", "resize")]) == 4.0
        })
        .await,
        "workers by state end equal to the configured size"
    );
    s.shutdown().await;
}

/// A burst of 60 sleeps on a pool autoscaling between 1 and 3: it grows to 3 and never
/// above, then shrinks back to 1 and never below.
async fn grows_under_a_burst_then_shrinks_when_idle(s: &Server, pool: &str) {
    let inputs: Vec<Value> = (0..60).map(|_| json!({"ms": 40})).collect();
    let r = s
        .post(
            &format!("/v1/tasks/{pool}.sleep/batch"),
            &json!({ "inputs": inputs }),
        )
        .await;
    let ids: Vec<String> = r.body["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["task_id"].as_str().unwrap().to_string())
        .collect();
    let max_seen = AtomicU64::new(0);
    let grew = wait_until(Duration::from_secs(10), || async {
        let size = size_of(s, pool).await;
        max_seen.fetch_max(size, Ordering::Relaxed);
        size == 3
    })
    .await;
    assert!(grew, "grows under a burst");
    for id in &ids {
        assert_eq!(s.wait_final(id, 30.0).await["state"], "SUCCESS");
        max_seen.fetch_max(size_of(s, pool).await, Ordering::Relaxed);
    }
    assert_eq!(max_seen.into_inner(), 3, "never above max");
    let min_seen = AtomicU64::new(u64::MAX);
    assert!(
        wait_until(Duration::from_secs(10), || async {
            let size = size_of(s, pool).await;
            min_seen.fetch_min(size, Ordering::Relaxed);
            size == 1
        })
        .await,
        "shrinks after the idle cool-down"
    );
    // Idle for several more cool-downs: stays at the lower bound.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let v = pool_view(s, pool).await;
    assert_eq!(v["size"], 1, "never below min");
    assert_eq!(v["workers"]["idle"], 1);
    assert!(min_seen.into_inner() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoscale_grows_under_a_burst_and_shrinks_after_cooldown_within_bounds() {
    let s = start(&config(
        "auto",
        r#"concurrency = 1
        max_concurrency = 8
        [pools.auto.autoscale]
        min = 1
        max = 3
        scale_up_queue_depth = 2
        scale_up_wait_ms = 50
        scale_up_cooldown_seconds = 0.05
        scale_down_idle_seconds = 0.4
        check_interval_ms = 20"#,
        true,
    ))
    .await;
    assert_eq!(
        pool_view(&s, "auto").await["autoscale"],
        json!({"min": 1, "max": 3})
    );
    grows_under_a_burst_then_shrinks_when_idle(&s, "auto").await;
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoscale_turned_on_through_the_admin_api_grows_and_shrinks() {
    // No autoscale table in the file: the admin API alone turns it on.
    let s = start(&config(
        "apiauto",
        "concurrency = 1
max_concurrency = 8",
        true,
    ))
    .await;
    assert_eq!(pool_view(&s, "apiauto").await["autoscale"], Value::Null);
    let r = resize(
        &s,
        "apiauto",
        json!({"autoscale": {
            "min": 1,
            "max": 3,
            "scale_up_queue_depth": 2,
            "scale_up_wait_ms": 50,
            "scale_up_cooldown_seconds": 0.05,
            "scale_down_idle_seconds": 0.4,
            "check_interval_ms": 20
        }}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["autoscale"], json!({"min": 1, "max": 3}));
    grows_under_a_burst_then_shrinks_when_idle(&s, "apiauto").await;
    // Bad tuning is a 422 naming the field.
    let r = resize(
        &s,
        "apiauto",
        json!({"autoscale": {"min": 1, "max": 3, "scale_up_queue_depth": 0}}),
    )
    .await;
    r.assert_error(422, "invalid_value");
    assert!(
        r.body["error"]
            .as_str()
            .unwrap()
            .contains("scale_up_queue_depth")
    );
    // Turned off, the size stays where it is.
    let r = resize(&s, "apiauto", json!({"autoscale": null})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["autoscale"], Value::Null);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_as_tasks_run() {
    let s = start(&config("metered", "concurrency = 2", true)).await;
    let before = s.scrape().await;
    let submitted = |m: &prometheus_parse::Scrape| {
        sample(
            m,
            "celeriac_tasks_submitted_total",
            &[("task", "metered.echo")],
        )
    };
    assert_eq!(submitted(&before), 0.0);
    for i in 0..25 {
        let r = s
            .post("/v1/tasks/metered.echo?wait=5", &json!({ "i": i }))
            .await;
        assert_eq!(r.body["state"], "SUCCESS");
    }
    let _ = s.post("/v1/tasks/metered.sleep", &json!({"ms": "x"})).await;
    let after = s.scrape().await;
    assert_eq!(submitted(&after), 25.0);
    assert_eq!(
        sample(
            &after,
            "celeriac_tasks_finished_total",
            &[("task", "metered.echo"), ("state", "SUCCESS")]
        ),
        25.0
    );
    assert_eq!(
        sample(
            &after,
            "celeriac_task_latency_seconds_count",
            &[("task", "metered.echo")]
        ),
        25.0
    );
    assert!(
        sample(
            &after,
            "celeriac_rejections_total",
            &[("reason", "invalid_input")]
        ) >= 1.0
    );
    assert!(
        sample(
            &after,
            "celeriac_http_requests_total",
            &[
                ("route", "/v1/tasks/:task"),
                ("method", "POST"),
                ("status", "200")
            ]
        ) >= 25.0
    );
    assert_eq!(
        sample(&after, "celeriac_pool_size", &[("pool", "metered")]),
        2.0
    );
    assert_eq!(
        sample(&after, "celeriac_queue_capacity", &[("pool", "metered")]),
        1000.0
    );
    assert!(
        sample(
            &after,
            "celeriac_pool_busy_seconds_total",
            &[("pool", "metered")]
        ) > 0.0
    );
    // No label carries a task id.
    for smp in &after.samples {
        for (_, v) in smp.labels.iter() {
            assert!(v.parse::<uuid::Uuid>().is_err(), "{}: {v}", smp.metric);
        }
    }
    s.shutdown().await;
}
