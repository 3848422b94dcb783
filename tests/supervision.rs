//! Supervision against a real server: panics, restarts, retries, time limits, budgets.

mod common;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Server, debug_config, start, wait_until, with_backoff};
use serde_json::json;

async fn pool_full(s: &Server, size: usize) -> bool {
    wait_until(Duration::from_secs(10), || async {
        let r = s.get("/health/ready").await;
        r.status == 200 && r.body["pools"][0]["live"] == size
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_retries_then_fails_and_pool_returns_to_full_size() {
    // One worker and a visible back-off, so the RETRY state lasts long enough to see.
    let s = start(&with_backoff(
        &debug_config("concurrency = 1\nmax_retries = 2", ""),
        300,
        600,
    ))
    .await;
    let id = s.submit("debug.panic", json!({})).await;
    assert!(
        wait_until(Duration::from_secs(5), || async {
            s.state_of(&id).await == "RETRY"
        })
        .await,
        "a task whose worker died goes back to the queue as RETRY"
    );
    let v = s.wait_final(&id, 10.0).await;
    assert_eq!(v["state"], "FAILURE", "{v}");
    assert_eq!(v["retries"], 2);
    let err = v["error"].as_str().unwrap();
    assert!(
        err.contains("worker lost") && err.contains("panicked"),
        "{err}"
    );

    // The supervisor rebuilt the worker: the pool is back to full size and serves.
    assert!(pool_full(&s, 1).await);
    assert_eq!(s.state.pools[0].restarts.load(Ordering::Acquire), 3);
    let r = s.post("/v1/tasks/debug.echo?wait=5", &json!("alive")).await;
    assert_eq!(r.body["result"], "alive");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_workers_keep_serving_while_one_panics() {
    let s = start(&debug_config("concurrency = 2\nmax_retries = 0", "")).await;
    let long = s.submit("debug.sleep", json!({"ms": 300})).await;
    let boom = s.submit("debug.panic", json!({})).await;
    let v = s.wait_final(&boom, 5.0).await;
    assert_eq!(v["state"], "FAILURE");
    assert_eq!(v["retries"], 0);
    let v = s.wait_final(&long, 5.0).await;
    assert_eq!(
        v["state"], "SUCCESS",
        "the sleeping worker was not disturbed"
    );
    assert_eq!(v["retries"], 0);
    assert!(pool_full(&s, 2).await);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_limit_fails_the_task_and_replaces_the_worker() {
    let s = start(&debug_config(
        "concurrency = 1\ntime_limit_seconds = 0.2",
        "",
    ))
    .await;
    let id = s.submit("debug.sleep", json!({"ms": 1500})).await;
    let queued = s.submit("debug.echo", json!("after")).await;
    let v = s.wait_final(&id, 5.0).await;
    assert_eq!(v["state"], "FAILURE");
    assert!(v["error"].as_str().unwrap().contains("time limit"), "{v}");
    // The replacement worker runs what was queued behind it, long before the
    // abandoned sleep would have ended.
    let v = s.wait_final(&queued, 1.0).await;
    assert_eq!(v["state"], "SUCCESS", "{v}");
    assert!(pool_full(&s, 1).await);
    // The abandoned thread's late answer does not overwrite the FAILURE.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(s.state_of(&id).await, "FAILURE");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spent_restart_budget_parks_the_pool_and_answers_503() {
    let s = start(&debug_config(
        "concurrency = 1\nmax_retries = 0",
        "restart_budget = 1\nrestart_window_seconds = 60.0",
    ))
    .await;
    let a = s.submit("debug.panic", json!({})).await;
    assert_eq!(s.wait_final(&a, 5.0).await["state"], "FAILURE");
    assert!(pool_full(&s, 1).await, "first loss is restarted");
    let b = s.submit("debug.panic", json!({})).await;
    assert_eq!(s.wait_final(&b, 5.0).await["state"], "FAILURE");
    assert!(
        wait_until(Duration::from_secs(5), || async {
            s.post("/v1/tasks/debug.echo", &json!(1)).await.status == 503
        })
        .await
    );
    let r = s.post("/v1/tasks/debug.echo", &json!(1)).await;
    r.assert_error(503, "no_live_worker");
    assert!(r.headers.contains_key("retry-after"));
    let r = s.get("/health/ready").await;
    assert_eq!(r.status, 503);
    assert!(
        r.body["reasons"][0]
            .as_str()
            .unwrap()
            .contains("no live worker")
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn solo_pool_runs_inline_and_recovers_from_panics() {
    let s = start(&debug_config(
        "kind = \"solo\"\nconcurrency = 8\nmax_retries = 1",
        "",
    ))
    .await;
    assert!(
        pool_full(&s, 1).await,
        "solo ignores concurrency: one worker"
    );
    let ids: Vec<_> =
        futures_util::future::join_all((0..5).map(|i| s.submit("debug.echo", json!(i)))).await;
    let boom = s.submit("debug.panic", json!({})).await;
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(s.wait_final(id, 5.0).await["result"], json!(i));
    }
    let v = s.wait_final(&boom, 5.0).await;
    assert_eq!(v["state"], "FAILURE");
    assert_eq!(v["retries"], 1);
    assert!(pool_full(&s, 1).await);
    assert_eq!(
        s.post("/v1/tasks/debug.echo?wait=5", &json!("solo"))
            .await
            .body["result"],
        "solo"
    );
    s.shutdown().await;
}

/// 1,000 sleep tasks while workers keep panicking: every task reaches exactly one final
/// state, every sleep succeeds, and the pool ends at full size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_task_is_lost_while_workers_panic() {
    let s = start(&debug_config(
        "concurrency = 4\nmax_retries = 2\nqueue_capacity = 5000",
        "restart_budget = 100000",
    ))
    .await;
    let mut sleeps = Vec::new();
    let mut panics = Vec::new();
    for chunk in 0..20 {
        let inputs: Vec<_> = (0..50).map(|i| json!({"ms": (chunk + i) % 4})).collect();
        let r = s
            .post("/v1/tasks/debug.sleep/batch", &json!({ "inputs": inputs }))
            .await;
        assert_eq!(r.status, 202, "{}", r.body);
        for t in r.body["tasks"].as_array().unwrap() {
            sleeps.push(t["task_id"].as_str().unwrap().to_string());
        }
        // Two panicking tasks per chunk: 40 tasks, 120 worker deaths.
        for _ in 0..2 {
            panics.push(s.submit("debug.panic", json!({})).await);
        }
    }
    assert_eq!(sleeps.len(), 1000);
    let mut states: HashMap<String, usize> = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    for id in &sleeps {
        assert!(seen.insert(id.clone()), "ids are unique");
        let v = s.wait_final(id, 10.0).await;
        *states
            .entry(v["state"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(states.get("SUCCESS"), Some(&1000), "{states:?}");
    for id in &panics {
        let v = s.wait_final(id, 10.0).await;
        assert_eq!(v["state"], "FAILURE", "{v}");
        assert_eq!(v["retries"], 2);
    }
    assert!(pool_full(&s, 4).await);
    assert!(s.state.pools[0].restarts.load(Ordering::Acquire) >= 120);
    assert!(s.state.drained());
    s.shutdown().await;
}
