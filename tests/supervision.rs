//! Supervision against a real server: poison tasks, lost workers, retries, time limits,
//! failed starts with back-off and budget.

use crate::common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::{
    Server, debug_config, debug_config_in, start, wait_until, with_admin_token, with_backoff,
};
use serde_json::{Value, json};

const TOKEN: &str = "sup3rvisor";

fn with_admin(config: &str) -> String {
    with_admin_token(config, TOKEN)
}

async fn resize(s: &Server, pool: &str, body: Value) -> common::Resp {
    s.admin_put(pool, TOKEN, &body).await
}

/// Nothing admitted, queued or running, within 5 s.
async fn drained(s: &Server) -> bool {
    wait_until(Duration::from_secs(5), || async { s.state.drained() }).await
}

async fn pool_full(s: &Server, size: usize) -> bool {
    wait_until(Duration::from_secs(10), || async {
        let r = s.get("/health/ready").await;
        r.status == 200 && r.body["pools"][0]["live"] == size
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_task_fails_alone_and_its_worker_goes_on() {
    let s = start(&debug_config("concurrency = 1", "")).await;
    let boom = s.submit("debug.panic", json!({})).await;
    let after = s.submit("debug.echo", json!("next")).await;
    let v = s.wait_final(&boom, 5.0).await;
    assert_eq!(v["state"], "FAILURE", "{v}");
    assert_eq!(v["retries"], 0);
    let err = v["error"].as_str().unwrap();
    assert!(
        err.contains("task panicked") && err.contains("debug.panic"),
        "{err}"
    );
    // The one worker went on with a fresh instance: the task queued behind the
    // poison ran, and no worker was replaced.
    assert_eq!(s.wait_final(&after, 5.0).await["result"], "next");
    let status = s.state.pools[0].status();
    assert_eq!(status.panics, 1);
    assert_eq!(status.replaced, 0);
    assert_eq!(status.live(), 1);
    assert_eq!(s.get("/health/ready").await.status, 200);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_workers_keep_serving_while_one_panics() {
    let s = start(&debug_config("concurrency = 2", "")).await;
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
    assert!(pool_full(&s, 2).await);
    s.shutdown().await;
}

/// The issue's scenario: hundreds of poison tasks mixed into thousands of normal ones
/// while an operator resizes the pool. Every normal task succeeds, every poison task
/// fails exactly once, readiness never leaves 200, and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_tasks_mixed_with_normal_ones_under_resizes_cost_only_themselves() {
    let s = Arc::new(
        start(&with_admin(&debug_config_in(
            "poison",
            "concurrency = 4\nmax_concurrency = 8\nqueue_capacity = 10000\nmax_batch_size = 1",
            "",
        )))
        .await,
    );
    let done = Arc::new(AtomicBool::new(false));
    let not_ready = Arc::new(AtomicUsize::new(0));
    let probes = Arc::new(AtomicUsize::new(0));
    let watcher = {
        let (s, done, not_ready, probes) =
            (s.clone(), done.clone(), not_ready.clone(), probes.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Acquire) {
                let r = s.get("/health/ready").await;
                if r.status != 200 {
                    not_ready.fetch_add(1, Ordering::AcqRel);
                    eprintln!("not ready: {}", r.body);
                }
                probes.fetch_add(1, Ordering::AcqRel);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let resizer = {
        let (s, done) = (s.clone(), done.clone());
        tokio::spawn(async move {
            let mut sizes = [2usize, 6, 1, 8, 3, 4].into_iter().cycle();
            let mut n = 0;
            while !done.load(Ordering::Acquire) {
                let size = sizes.next().unwrap();
                let r = resize(&s, "poison", json!({ "concurrency": size })).await;
                assert_eq!(r.status, 200, "{}", r.body);
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            n
        })
    };
    let mut sleeps = Vec::new();
    let mut panics = Vec::new();
    for chunk in 0..20 {
        let inputs: Vec<_> = (0..100).map(|i| json!({"ms": (chunk + i) % 3})).collect();
        let r = s
            .post("/v1/tasks/debug.sleep/batch", &json!({ "inputs": inputs }))
            .await;
        assert_eq!(r.status, 202, "{}", r.body);
        for t in r.body["tasks"].as_array().unwrap() {
            sleeps.push(t["task_id"].as_str().unwrap().to_string());
        }
        let inputs: Vec<_> = (0..15).map(|_| json!({})).collect();
        let r = s
            .post("/v1/tasks/debug.panic/batch", &json!({ "inputs": inputs }))
            .await;
        assert_eq!(r.status, 202, "{}", r.body);
        for t in r.body["tasks"].as_array().unwrap() {
            panics.push(t["task_id"].as_str().unwrap().to_string());
        }
    }
    assert_eq!((sleeps.len(), panics.len()), (2000, 300));
    let mut states: HashMap<String, usize> = HashMap::new();
    for id in &sleeps {
        let v = s.wait_final(id, 10.0).await;
        *states
            .entry(v["state"].as_str().unwrap().to_string())
            .or_default() += 1;
        assert_eq!(v["retries"], 0, "{v}");
    }
    assert_eq!(states.get("SUCCESS"), Some(&2000), "{states:?}");
    for id in &panics {
        let v = s.wait_final(id, 10.0).await;
        assert_eq!(v["state"], "FAILURE", "{v}");
        assert_eq!(v["retries"], 0, "failed once, never retried: {v}");
        assert!(
            v["error"].as_str().unwrap().contains("task panicked"),
            "{v}"
        );
    }
    done.store(true, Ordering::Release);
    let resizes = resizer.await.unwrap();
    watcher.await.unwrap();
    assert!(
        resizes >= 3,
        "the pool was resized while it served ({resizes} times)"
    );
    assert!(probes.load(Ordering::Acquire) > 10);
    assert_eq!(not_ready.load(Ordering::Acquire), 0, "readiness stayed 200");
    // Each poison task failed once: the counter says so, and no worker was replaced.
    let m = s.scrape().await;
    let failed = m
        .samples
        .iter()
        .find(|x| {
            x.metric == "celeriac_tasks_finished_total"
                && x.labels.get("pool") == Some("poison")
                && x.labels.get("task") == Some("debug.panic")
                && x.labels.get("state") == Some("FAILURE")
        })
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v) => v,
            _ => panic!("a counter"),
        });
    assert_eq!(failed, Some(300.0));
    assert!(drained(&s).await);
    let status = s.state.pools[0].status();
    assert_eq!(status.panics, 300);
    assert_eq!(status.replaced, 0);
    Arc::into_inner(s).unwrap().shutdown().await;
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
    assert!(replaced(&s, 1).await, "{:?}", s.state.pools[0].status());
    // The abandoned thread's late answer does not overwrite the FAILURE, and the
    // queue's admission count is back to zero.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(s.state_of(&id).await, "FAILURE");
    assert!(drained(&s).await, "{:?}", s.state.pools[0].status());
    s.shutdown().await;
}

/// Waits until the pool reports `n` workers replaced (the task's FAILURE is recorded
/// before the pool publishes its next status).
async fn replaced(s: &Server, n: u64) -> bool {
    wait_until(Duration::from_secs(5), || async {
        s.state.pools[0].status().replaced == n
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_worker_fails_its_task_by_default_as_celery_does() {
    let s = start(&debug_config("concurrency = 1", "")).await;
    let id = s.submit("debug.crash_worker", json!({})).await;
    let v = s.wait_final(&id, 5.0).await;
    assert_eq!(v["state"], "FAILURE", "{v}");
    assert_eq!(v["retries"], 0);
    let err = v["error"].as_str().unwrap();
    assert!(err.contains("worker lost"), "{err}");
    assert!(pool_full(&s, 1).await, "replaced at once");
    assert!(replaced(&s, 1).await, "{:?}", s.state.pools[0].status());
    let r = s.post("/v1/tasks/debug.echo?wait=5", &json!("alive")).await;
    assert_eq!(r.body["result"], "alive");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_retries_requeues_work_held_by_a_lost_worker() {
    // A visible back-off, so the RETRY state lasts long enough to see: the task's
    // crash also makes its replacement fail to start once.
    let s = start(&with_backoff(
        &debug_config("concurrency = 1\nmax_retries = 1", ""),
        300,
        600,
    ))
    .await;
    let id = s
        .submit("debug.crash_worker", json!({"failed_starts": 1}))
        .await;
    assert!(
        wait_until(Duration::from_secs(5), || async {
            s.state_of(&id).await == "RETRY"
        })
        .await,
        "a task whose worker was lost goes back to the queue as RETRY"
    );
    // Its second run crashes the worker again; out of retries, it fails.
    let v = s.wait_final(&id, 10.0).await;
    assert_eq!(v["state"], "FAILURE", "{v}");
    assert_eq!(v["retries"], 1);
    assert!(v["error"].as_str().unwrap().contains("worker lost"), "{v}");
    assert!(pool_full(&s, 1).await);
    // The store records the FAILURE before the pool publishes its restart count.
    assert!(replaced(&s, 2).await, "{:?}", s.state.pools[0].status());
    let status = s.state.pools[0].status();
    assert!(status.failed_starts >= 2, "{status:?}");
    assert!(
        drained(&s).await,
        "a retried job was admitted once and released once"
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_that_fail_to_start_back_off_then_park_until_a_resize() {
    let s = start(&with_admin(&debug_config(
        "concurrency = 1",
        "restart_budget = 1\nrestart_window_seconds = 60.0",
    )))
    .await;
    // The crash breaks the rebuild and two starts: one start is retried within the
    // budget, the second spends it and parks the only slot.
    let id = s
        .submit("debug.crash_worker", json!({"failed_starts": 2}))
        .await;
    assert_eq!(s.wait_final(&id, 5.0).await["state"], "FAILURE");
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
    assert_eq!(r.body["pools"][0]["parked"], 1);
    // The operator's resize gives the parked slot a fresh start; builds work again.
    let r = resize(&s, "p", json!({"concurrency": 1})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(pool_full(&s, 1).await, "back after the resize");
    let r = s.post("/v1/tasks/debug.echo?wait=5", &json!("back")).await;
    assert_eq!(r.body["result"], "back");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn solo_pool_runs_inline_and_survives_panics() {
    let s = start(&debug_config("kind = \"solo\"\nconcurrency = 8", "")).await;
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
    assert_eq!(v["retries"], 0);
    assert!(pool_full(&s, 1).await);
    assert_eq!(s.state.pools[0].status().replaced, 0);
    assert_eq!(
        s.post("/v1/tasks/debug.echo?wait=5", &json!("solo"))
            .await
            .body["result"],
        "solo"
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shrink_gives_the_remaining_parked_slots_a_fresh_start() {
    let s = start(&with_admin(&debug_config_in(
        "reparked",
        "concurrency = 2\nmax_concurrency = 4",
        "restart_budget = 1\nrestart_window_seconds = 60.0",
    )))
    .await;
    // Both workers break, and their replacements keep failing to start: both slots
    // park, and the pool is down.
    for _ in 0..2 {
        s.submit("debug.crash_worker", json!({"failed_starts": 50}))
            .await;
    }
    assert!(
        wait_until(Duration::from_secs(10), || async {
            let st = s.state.pools[0].status();
            st.parked == 2 && st.is_dead()
        })
        .await,
        "{:?}",
        s.state.pools[0].status()
    );
    let tried = s.state.pools[0].status().failed_starts;
    // Shrinking drops one parked slot; the other gets a fresh start (which fails here,
    // as builds still fail): the operator's resize is honoured in either direction.
    let r = resize(&s, "reparked", json!({"concurrency": 1})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["size"], 1);
    assert!(
        wait_until(Duration::from_secs(5), || async {
            s.state.pools[0].status().failed_starts > tried
        })
        .await,
        "no fresh start after the shrink: {:?}",
        s.state.pools[0].status()
    );
    s.shutdown().await;
}

/// Two pools: `a` with a sleep task, an echo task and the test hook
/// `debug.panic_pool`; `b` with its own echo task.
fn two_pools() -> String {
    r#"
    [supervisor]
    backoff_initial_ms = 20
    backoff_max_ms = 200
    time_limit_check_ms = 10
    [pools.a]
    concurrency = 1
    [pools.b]
    concurrency = 1
    [tasks."a.sleep"]
    kind = "debug.sleep"
    pool = "a"
    [tasks."a.echo"]
    kind = "debug.echo"
    pool = "a"
    [tasks."a.break"]
    kind = "debug.panic_pool"
    pool = "a"
    [tasks."b.echo"]
    kind = "debug.echo"
    pool = "b"
    "#
    .to_string()
}

/// A pool actor that panics is contained: the other pool serves throughout, the pool
/// comes back, and every task the node accepted reaches a final state.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_panicking_pool_actor_is_restarted_and_the_other_pools_never_notice() {
    let s = Arc::new(start(&two_pools()).await);
    // One running and three queued behind it in pool `a`.
    let held: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            // Long enough to be running still when the pool actor panics.
            v.push(s.submit("a.sleep", json!({"ms": 3000})).await);
        }
        v
    };
    assert!(s.wait_started(&held[0]).await);
    // Pool `b` is called without a break while `a` fails and comes back.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let other = {
        let (s, stop, served) = (s.clone(), stop.clone(), served.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let r = s.post("/v1/tasks/b.echo?wait=5", &json!({"n": 1})).await;
                assert_eq!(r.status, 200, "pool b stopped serving: {}", r.body);
                assert_eq!(r.body["state"], "SUCCESS", "{}", r.body);
                served.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let boom = s.submit("a.break", json!({})).await;
    let broke = std::time::Instant::now();
    // Pool `a` serves again.
    let back = wait_until(Duration::from_secs(10), || async {
        let r = s.post("/v1/tasks/a.echo?wait=1", &json!("again")).await;
        r.status == 200 && r.body["result"] == "again"
    })
    .await;
    eprintln!(
        "pool `a` served again {:?} after its actor panicked",
        broke.elapsed()
    );
    assert!(back, "pool `a` did not come back");
    let v = s.wait_final(&boom, 5.0).await;
    assert_eq!(v["state"], "FAILURE", "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("debug.panic_pool"),
        "{v}"
    );
    // Every accepted task is final: the running and queued ones failed with the reason.
    for id in &held {
        let v = s.wait_final(id, 5.0).await;
        assert_eq!(v["state"], "FAILURE", "{v}");
        let error = v["error"].as_str().unwrap();
        assert!(
            error.contains("pool `a` was restarted after its actor failed")
                && error.contains("submit it again"),
            "{error}"
        );
    }
    stop.store(true, Ordering::SeqCst);
    other.await.unwrap();
    assert!(served.load(Ordering::SeqCst) > 0);
    let ready = s.get("/health/ready").await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert_eq!(s.state.pools[0].actor_restarts(), 1);
    assert_eq!(s.state.pools[1].actor_restarts(), 0);
    // The queue places of the failed tasks were given back.
    assert!(drained(&s).await);
    let scrape = s.scrape().await;
    let restarts = scrape
        .samples
        .iter()
        .find(|m| m.metric == "celeriac_pool_restarts_total" && m.labels.get("pool") == Some("a"))
        .map(|m| match m.value {
            prometheus_parse::Value::Counter(v) => v,
            _ => panic!("a counter"),
        });
    assert_eq!(restarts, Some(1.0));
    // The old worker's sleep finishes after the restart: its late answer changes nothing.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_eq!(s.wait_final(&held[0], 1.0).await["state"], "FAILURE");
    Arc::into_inner(s).unwrap().shutdown().await;
}

/// A pool whose actor keeps failing is not restarted forever: the process exits
/// non-zero, so an orchestrator restarts it, instead of staying alive and unready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_actor_that_keeps_failing_makes_the_process_exit_non_zero() {
    let mut node = common::Node::spawn("serve", &two_pools(), "keeps-failing");
    node.wait_ready(60).await;
    let client = reqwest::Client::new();
    let mut exited = None;
    for _ in 0..20 {
        let _ = client
            .post(format!("{}/v1/tasks/a.break", node.url))
            .json(&json!({}))
            .send()
            .await;
        if wait_until(Duration::from_secs(2), || {
            let done = node.child.try_wait().unwrap();
            exited = done.or(exited);
            async move { done.is_some() }
        })
        .await
        {
            break;
        }
    }
    let status = exited.expect("the process exited");
    assert!(!status.success(), "exit status {status}");
    assert_eq!(
        status.code(),
        Some(1),
        "an error exit (not a signal): {status}"
    );
    // The other pool served until then: nothing to assert after the exit.
    drop(node);
}
