//! The task API against a real server on a port: every state and every error.

use crate::common;

use std::time::Duration;

use common::{debug_config, start, wait_until};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_poll_and_submit_and_wait() {
    let s = start(&debug_config("concurrency = 2", "")).await;

    let r = s
        .post("/v1/tasks/debug.echo", &json!({"x": [1, 2, 3]}))
        .await;
    assert_eq!(r.status, 202);
    assert_eq!(r.body["state"], "PENDING");
    let id = r.id();
    assert_eq!(
        r.headers["location"].to_str().unwrap(),
        format!("/v1/tasks/{id}")
    );
    let v = s.wait_final(&id, 5.0).await;
    assert_eq!(v["state"], "SUCCESS");
    assert_eq!(v["task"], "debug.echo");
    assert_eq!(v["result"], json!({"x": [1, 2, 3]}));
    assert_eq!(v["retries"], 0);
    for field in ["submitted_at", "started_at", "finished_at"] {
        assert!(v[field].as_str().unwrap().ends_with('Z'), "{field}: {v}");
    }
    // A plain GET answers the same record.
    assert_eq!(s.get(&format!("/v1/tasks/{id}")).await.body, v);

    // Submit-and-wait: 200 with the finished task.
    let r = s
        .post("/v1/tasks/debug.sleep?wait=5", &json!({"ms": 20}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["state"], "SUCCESS");
    assert_eq!(r.body["result"], json!({"slept_ms": 20}));

    // ...and 202 when it does not finish in time (2 s: far past the wait even on a
    // loaded machine).
    let r = s
        .post("/v1/tasks/debug.sleep?wait=0.05", &json!({"ms": 2000}))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert!(r.headers.contains_key("location"));
    let id = r.id();
    // A long poll that runs out answers the current, non-final state.
    assert!(s.wait_started(&id).await);
    let v = s.get(&format!("/v1/tasks/{id}?wait=0.05")).await.body;
    assert_eq!(v["state"], "STARTED");
    assert!(v.get("result").is_none());
    assert_eq!(s.wait_final(&id, 5.0).await["state"], "SUCCESS");

    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_submit_keeps_order() {
    let s = start(&debug_config("concurrency = 3", "")).await;
    let inputs: Vec<_> = (0..20).map(|i| json!({"i": i})).collect();
    let r = s
        .post("/v1/tasks/debug.echo/batch", &json!({ "inputs": inputs }))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let tasks = r.body["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 20);
    for (i, t) in tasks.iter().enumerate() {
        assert_eq!(t["state"], "PENDING");
        let v = s.wait_final(t["task_id"].as_str().unwrap(), 5.0).await;
        assert_eq!(v["result"], json!({"i": i}));
    }
    // One bad input refuses the whole batch and names it.
    let r = s
        .post(
            "/v1/tasks/debug.sleep/batch",
            &json!({"inputs": [{"ms": 1}, {"ms": "x"}]}),
        )
        .await;
    r.assert_error(422, "invalid_input");
    assert!(r.body["error"].as_str().unwrap().contains("inputs[1]"));
    s.post("/v1/tasks/debug.echo/batch", &json!({"inputs": []}))
        .await
        .assert_error(400, "invalid_body");
    s.post("/v1/tasks/debug.echo/batch", &json!({"input": [1]}))
        .await
        .assert_error(400, "invalid_body");
    // A list is not the body's object, though a derived struct would read it as its
    // fields in order (schemathesis found `[[false, true]]` accepted as two tasks).
    let r = s
        .post("/v1/tasks/debug.echo/batch", &json!([[{"i": 1}, {"i": 2}]]))
        .await;
    r.assert_error(400, "invalid_body");
    assert!(
        r.body["error"].as_str().unwrap().contains("JSON object"),
        "{}",
        r.body
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn started_failure_and_revoked_states() {
    let s = start(&debug_config("concurrency = 1", "")).await;

    let fail = s.submit("debug.fail", json!({"message": "bad luck"})).await;
    let v = s.wait_final(&fail, 5.0).await;
    assert_eq!(v["state"], "FAILURE");
    assert_eq!(v["error"], "bad luck");

    // One worker: the first sleep runs, the second waits in the queue. The sleep is
    // long enough (2 s) that the revokes below happen while it runs even on a loaded
    // machine.
    let running = s.submit("debug.sleep", json!({"ms": 2000})).await;
    assert!(s.wait_started(&running).await);
    let queued = s.submit("debug.sleep", json!({"ms": 10})).await;
    assert_eq!(s.state_of(&queued).await, "PENDING");

    // Revoke: the queued one goes, the running one cannot.
    let r = s.delete(&format!("/v1/tasks/{queued}")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["state"], "REVOKED");
    s.delete(&format!("/v1/tasks/{running}"))
        .await
        .assert_error(409, "not_revocable");
    s.delete(&format!("/v1/tasks/{queued}"))
        .await
        .assert_error(409, "not_revocable");
    assert_eq!(s.wait_final(&running, 5.0).await["state"], "SUCCESS");
    s.delete(&format!("/v1/tasks/{running}"))
        .await
        .assert_error(409, "not_revocable");
    // The revoked task never ran.
    let v = s.get(&format!("/v1/tasks/{queued}")).await.body;
    assert_eq!(v["state"], "REVOKED");
    assert!(v.get("started_at").is_none(), "{v}");
    s.delete("/v1/tasks/6f1c2f5e-0000-4000-8000-000000000000")
        .await
        .assert_error(404, "task_not_found");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_has_a_json_body_and_status() {
    let s = start(&debug_config("concurrency = 1\nqueue_capacity = 2", "")).await;

    s.post_raw(
        "/v1/tasks/debug.echo",
        "application/json",
        b"{nope".to_vec(),
    )
    .await
    .assert_error(400, "invalid_json");
    s.post_raw("/v1/tasks/debug.echo", "text/plain", b"{}".to_vec())
        .await
        .assert_error(400, "unsupported_content_type");
    s.post("/v1/tasks/debug.echo?wiat=3", &json!({}))
        .await
        .assert_error(400, "invalid_parameter");
    s.post("/v1/tasks/debug.echo?wait=-1", &json!({}))
        .await
        .assert_error(400, "invalid_parameter");
    s.get("/v1/tasks/6f1c2f5e-0000-4000-8000-000000000000?wait=abc")
        .await
        .assert_error(400, "invalid_parameter");
    s.post("/v1/tasks/debug.sleep", &json!({"ms": "soon"}))
        .await
        .assert_error(422, "invalid_input");
    s.post("/v1/tasks/debug.sleep", &json!([1]))
        .await
        .assert_error(422, "invalid_input");
    let r = s.post("/v1/tasks/no.such.task", &json!({})).await;
    r.assert_error(404, "unknown_task");
    assert!(r.body["error"].as_str().unwrap().contains("debug.echo"));
    s.get("/v1/tasks/6f1c2f5e-0000-4000-8000-000000000000")
        .await
        .assert_error(404, "task_not_found");
    s.get("/v1/tasks/not-a-uuid")
        .await
        .assert_error(404, "task_not_found");
    s.get("/v1/nothing/here")
        .await
        .assert_error(404, "not_found");
    let r = s
        .client
        .put(format!("{}/v1/tasks/debug.echo", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    s.post_raw(
        "/v1/tasks/debug.echo",
        "application/json",
        format!("\"{}\"", "x".repeat(5000)).into_bytes(),
    )
    .await
    .assert_error(413, "payload_too_large");

    // Queue full: one running (for 2 s, long enough for the probes below on a loaded
    // machine), two queued, the next is refused at once.
    let running = s.submit("debug.sleep", json!({"ms": 2000})).await;
    assert!(s.wait_started(&running).await);
    let q1 = s.submit("debug.sleep", json!({"ms": 1})).await;
    let q2 = s.submit("debug.sleep", json!({"ms": 1})).await;
    let r = s.post("/v1/tasks/debug.sleep", &json!({"ms": 1})).await;
    r.assert_error(429, "queue_full");
    assert_eq!(r.headers["retry-after"], "1");
    s.post("/v1/tasks/debug.echo/batch", &json!({"inputs": [1]}))
        .await
        .assert_error(429, "queue_full");

    // None of that disturbed the accepted tasks, and the server still serves.
    for id in [&running, &q1, &q2] {
        assert_eq!(s.wait_final(id, 5.0).await["state"], "SUCCESS");
    }
    let r = s.post("/v1/tasks/debug.echo?wait=5", &json!("ok")).await;
    assert_eq!(r.body["result"], "ok");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_expire_after_ttl_and_become_404() {
    let s = start(&debug_config(
        "concurrency = 1",
        "[results]\nttl_seconds = 0.3\nsweep_interval_seconds = 0.1",
    ))
    .await;
    let id = s.submit("debug.echo", json!(1)).await;
    assert_eq!(s.wait_final(&id, 5.0).await["state"], "SUCCESS");
    assert!(
        wait_until(Duration::from_secs(5), || async {
            s.get(&format!("/v1/tasks/{id}")).await.status == 404
        })
        .await,
        "an expired result reads as unknown, never as PENDING"
    );
    assert!(
        wait_until(Duration::from_secs(5), || async {
            s.state.store.is_empty()
        })
        .await,
        "the sweeper deletes expired records"
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_routes() {
    let s = start(&debug_config("concurrency = 2", "")).await;
    assert_eq!(s.get("/health/live").await.status, 200);
    let r = s.get("/health/ready").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["pools"][0]["live"], 2);
    assert_eq!(r.body["pools"][0]["size"], 2);
    s.shutdown().await;
}
