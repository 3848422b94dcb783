//! Pool kind `processes` against a real server and real child processes: crash
//! isolation, time limits that kill, recycling by task count and memory, resize and
//! drain, batching, and model answers equal to the `threads` kind's.
//!
//! The tests count this process's `celeriac child` processes in /proc, so they run one
//! at a time (`common::PROCESS_POOLS`, which the broker's processes test holds too).

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::{Server, debug_config_in, start, wait_until, with_admin_token};
use serde_json::{Value, json};

const TOKEN: &str = "pr0cesses";

/// A pool `name` of kind `processes` with `pool` settings, every debug task routed to
/// it; `supervisor` lines go in `[supervisor]`.
fn config(name: &str, pool: &str, supervisor: &str) -> String {
    let tasks: String = ["debug.abort", "debug.pid", "debug.spin", "debug.alloc"]
        .iter()
        .map(|t| format!("[tasks.\"{t}\"]\nkind = \"{t}\"\npool = \"{name}\"\n"))
        .collect();
    let config = debug_config_in(
        name,
        &format!("kind = \"processes\"\nintra_op_threads = 1\n{pool}"),
        &format!("{supervisor}\n{tasks}"),
    );
    with_admin_token(&config, TOKEN)
}

/// A process's state, parent and CPU time in clock ticks (utime + stime), from
/// /proc/PID/stat; `None` once it is gone (reaped).
fn stat(pid: u32) -> Option<(char, u32, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = s[s.rfind(')')? + 1..].split_whitespace().collect();
    let ticks = f[11].parse::<u64>().ok()? + f[12].parse::<u64>().ok()?;
    Some((f[0].chars().next()?, f[1].parse().ok()?, ticks))
}

/// This test process's live `celeriac child` processes, sorted.
fn children() -> Vec<u32> {
    children_of(std::process::id())
}

/// The live `celeriac child` processes of `parent`, sorted.
fn children_of(me: u32) -> Vec<u32> {
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|pid| matches!(stat(*pid), Some((state, ppid, _)) if ppid == me && state != 'Z'))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|arg| arg == b"child"))
        })
        .collect();
    pids.sort_unstable();
    pids
}

async fn children_are(n: usize) -> bool {
    wait_until(Duration::from_secs(10), || async { children().len() == n }).await
}

/// Reaped: no process, not even a zombie.
async fn reaped(pid: u32) -> bool {
    wait_until(Duration::from_secs(5), || async { stat(pid).is_none() }).await
}

/// The pid of the child that runs a `debug.pid`.
async fn pid_of(s: &Server) -> u32 {
    let r = s.post("/v1/tasks/debug.pid?wait=10", &json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["result"]["pid"].as_u64().expect("a pid") as u32
}

async fn pool_full(s: &Server, size: usize) -> bool {
    wait_until(Duration::from_secs(10), || async {
        let r = s.get("/health/ready").await;
        r.status == 200 && r.body["pools"][0]["live"] == size
    })
    .await
}

async fn replaced(s: &Server, n: u64) -> bool {
    wait_until(Duration::from_secs(5), || async {
        s.state.pools[0].status().replaced == n
    })
    .await
}

/// A counter or gauge's value for `pool` (and `reason`, when given).
async fn metric(s: &Server, name: &str, pool: &str, reason: Option<&str>) -> f64 {
    let m = s.scrape().await;
    m.samples
        .iter()
        .find(|x| {
            x.metric == name
                && x.labels.get("pool") == Some(pool)
                && (reason.is_none() || x.labels.get("reason") == reason)
        })
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => panic!("{name}: not a counter"),
        })
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborting_task_fails_alone_and_the_pool_recovers() {
    let _serial = common::PROCESS_POOLS.lock().await;
    let s = start(&config("abort", "concurrency = 2", "")).await;
    assert!(children_are(2).await, "{:?}", children());
    let before = children();
    let long = s.submit("debug.sleep", json!({"ms": 400})).await;
    assert!(s.wait_started(&long).await);
    let boom = s.submit("debug.abort", json!({})).await;
    let v = s.wait_final(&boom, 5.0).await;
    assert_eq!(v["state"], "FAILURE", "{v}");
    assert_eq!(v["retries"], 0);
    let err = v["error"].as_str().unwrap();
    assert!(
        err.contains("worker lost") && err.contains("signal 6 (SIGABRT)"),
        "{err}"
    );
    // The other child's task was not disturbed.
    let v = s.wait_final(&long, 5.0).await;
    assert_eq!(v["state"], "SUCCESS", "{v}");
    assert_eq!(v["result"], json!({"slept_ms": 400}));
    // A new child replaced the aborted one; the pool is whole and serves.
    assert!(replaced(&s, 1).await, "{:?}", s.state.pools[0].status());
    assert!(pool_full(&s, 2).await);
    assert!(children_are(2).await);
    let after = children();
    assert_eq!(
        after.iter().filter(|p| before.contains(p)).count(),
        1,
        "one child kept, one replaced: {before:?} -> {after:?}"
    );
    let r = s.post("/v1/tasks/debug.echo?wait=5", &json!("alive")).await;
    assert_eq!(r.body["result"], "alive");
    assert_eq!(
        metric(&s, "celeriac_worker_restarts_total", "abort", Some("lost")).await,
        1.0
    );
    s.shutdown().await;
    // No child outlives its server.
    assert!(children_are(0).await, "{:?}", children());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_task_is_retried_as_max_retries_says() {
    let _serial = common::PROCESS_POOLS.lock().await;
    let s = start(&config("retry", "concurrency = 1\nmax_retries = 2", "")).await;
    let v = s
        .post("/v1/tasks/debug.abort?wait=10", &json!({}))
        .await
        .body;
    let v = if v["state"] == "FAILURE" {
        v
    } else {
        s.wait_final(v["task_id"].as_str().unwrap(), 10.0).await
    };
    // Re-queued twice (a new child each time), then failed as a lost worker's.
    assert_eq!(v["state"], "FAILURE", "{v}");
    assert_eq!(v["retries"], 2, "{v}");
    let err = v["error"].as_str().unwrap();
    assert!(
        err.contains("SIGABRT") && err.contains("after 2 retries"),
        "{err}"
    );
    assert!(replaced(&s, 3).await, "{:?}", s.state.pools[0].status());
    assert!(pool_full(&s, 1).await);
    s.shutdown().await;
}

/// A child killed from outside with SIGKILL, as the OOM killer does, loses only the task
/// it held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_killed_with_sigkill_costs_only_its_task() {
    let _serial = common::PROCESS_POOLS.lock().await;
    let s = start(&config("oom", "concurrency = 1", "")).await;
    let pid = pid_of(&s).await;
    let id = s.submit("debug.sleep", json!({"ms": 30_000})).await;
    assert!(s.wait_started(&id).await);
    let queued = s.submit("debug.echo", json!("queued")).await;
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let v = s.wait_final(&id, 5.0).await;
    assert_eq!(v["state"], "FAILURE", "{v}");
    let err = v["error"].as_str().unwrap();
    assert!(
        err.contains("worker lost") && err.contains("signal 9"),
        "{err}"
    );
    // What waited in the queue runs on the new child.
    let v = s.wait_final(&queued, 5.0).await;
    assert_eq!(v["result"], "queued", "{v}");
    assert!(reaped(pid).await);
    assert_ne!(pid_of(&s).await, pid);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoscale_grows_and_shrinks_children() {
    let _serial = common::PROCESS_POOLS.lock().await;
    let s = start(&config("auto", "concurrency = 1\nmax_concurrency = 4", "")).await;
    let r = s
        .admin_put(
            "auto",
            TOKEN,
            &json!({"autoscale": {"min": 1, "max": 3, "scale_up_queue_depth": 1,
                "scale_up_cooldown_seconds": 0.05, "scale_down_idle_seconds": 0.3,
                "check_interval_ms": 20}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let mut ids = Vec::new();
    for _ in 0..12 {
        ids.push(s.submit("debug.sleep", json!({"ms": 150})).await);
    }
    assert!(
        children_are(3).await,
        "grew to 3 children: {:?}",
        children()
    );
    for id in &ids {
        assert_eq!(s.wait_final(id, 10.0).await["state"], "SUCCESS");
    }
    assert!(children_are(1).await, "shrank back to 1: {:?}", children());
    assert_eq!(s.state.pools[0].status().replaced, 0);
    s.shutdown().await;
}

/// A runaway task past its time limit: its child is killed (SIGTERM; SIGKILL after the
/// grace when it ignores SIGTERM) and reaped, so its CPU time stops rising, and a new
/// child takes the next task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_limit_kills_the_child_and_frees_its_cpu() {
    let _serial = common::PROCESS_POOLS.lock().await;
    let s = start(&config(
        "limit",
        "concurrency = 1\ntime_limit_seconds = 0.5",
        "child_kill_grace_ms = 300",
    ))
    .await;
    for (round, ignore_sigterm) in [false, true].into_iter().enumerate() {
        let pid = pid_of(&s).await;
        let id = s
            .submit(
                "debug.spin",
                json!({"ms": 60_000, "ignore_sigterm": ignore_sigterm}),
            )
            .await;
        assert!(s.wait_started(&id).await);
        // It burns a core while it spins: 10 ticks are 100 ms of CPU at the usual 100 Hz.
        let (_, _, t0) = stat(pid).expect("the child runs");
        assert!(
            wait_until(Duration::from_secs(5), || async {
                stat(pid).is_some_and(|(_, _, t)| t >= t0 + 10)
            })
            .await,
            "the spinning child uses CPU: {:?}",
            stat(pid)
        );
        let v = s.wait_final(&id, 5.0).await;
        assert_eq!(v["state"], "FAILURE", "{v}");
        assert!(
            v["error"].as_str().unwrap().contains("time limit exceeded"),
            "{v}"
        );
        // Killed and reaped long before its 60 s spin would end: its CPU is free.
        assert!(
            reaped(pid).await,
            "child {pid} (ignore_sigterm {ignore_sigterm}) still there: {:?}",
            stat(pid)
        );
        assert!(replaced(&s, round as u64 + 1).await);
        assert!(pool_full(&s, 1).await);
        assert_ne!(pid_of(&s).await, pid, "a new child serves");
    }
    assert_eq!(
        metric(
            &s,
            "celeriac_worker_restarts_total",
            "limit",
            Some("time_limit")
        )
        .await,
        2.0
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_tasks_per_child_recycles_between_tasks_and_loses_nothing() {
    let _serial = common::PROCESS_POOLS.lock().await;
    let s = start(&config(
        "count",
        "concurrency = 1\nmax_tasks_per_child = 2\nmax_batch_size = 1",
        "",
    ))
    .await;
    // One at a time: each child runs two tasks.
    let mut pids = Vec::new();
    for _ in 0..6 {
        pids.push(pid_of(&s).await);
    }
    assert_eq!(
        (pids[0], pids[2], pids[4]),
        (pids[1], pids[3], pids[5]),
        "{pids:?}"
    );
    assert!(
        pids[0] != pids[2] && pids[2] != pids[4] && pids[0] != pids[4],
        "{pids:?}"
    );
    // The recycled children exited and were reaped.
    assert!(reaped(pids[0]).await && reaped(pids[2]).await);
    // Queued work while children are recycled: every task runs, two per child.
    let r = s
        .post(
            "/v1/tasks/debug.pid/batch",
            &json!({ "inputs": vec![json!({}); 10] }),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let mut per_child = std::collections::BTreeMap::<u64, usize>::new();
    for t in r.body["tasks"].as_array().unwrap() {
        let v = s.wait_final(t["task_id"].as_str().unwrap(), 10.0).await;
        assert_eq!(v["state"], "SUCCESS", "{v}");
        *per_child
            .entry(v["result"]["pid"].as_u64().unwrap())
            .or_default() += 1;
    }
    assert_eq!(per_child.len(), 5, "{per_child:?}");
    assert!(per_child.values().all(|n| *n == 2), "{per_child:?}");
    // Recycling is not a loss: no worker was replaced.
    assert!(
        wait_until(Duration::from_secs(5), || async {
            metric(
                &s,
                "celeriac_worker_restarts_total",
                "count",
                Some("recycled"),
            )
            .await
                == 8.0
        })
        .await
    );
    assert_eq!(s.state.pools[0].status().replaced, 0);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_memory_per_child_recycles_a_child_past_the_limit() {
    let _serial = common::PROCESS_POOLS.lock().await;
    let s = start(&config(
        "memory",
        "concurrency = 1\nmax_memory_per_child_mb = 200",
        "",
    ))
    .await;
    let pid = pid_of(&s).await;
    let rss_mb = |pid: u32| -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .unwrap()
            .trim()
            .trim_end_matches(" kB")
            .parse()
            .unwrap();
        kb / 1024
    };
    let base = rss_mb(pid);
    assert!(
        base < 150,
        "a fresh child holds {base} MiB: the test needs room"
    );
    // Below the limit: the same child goes on.
    let r = s
        .post("/v1/tasks/debug.alloc?wait=10", &json!({"mb": 16}))
        .await;
    assert_eq!(r.body["result"], json!({"held_mb": 16}), "{}", r.body);
    assert_eq!(pid_of(&s).await, pid);
    assert!(rss_mb(pid) >= base + 16);
    // Past it: the task still succeeds, then the child is replaced before the next.
    let r = s
        .post("/v1/tasks/debug.alloc?wait=10", &json!({"mb": 256}))
        .await;
    assert_eq!(r.body["state"], "SUCCESS", "{}", r.body);
    assert_eq!(r.body["result"], json!({"held_mb": 272}));
    let next = pid_of(&s).await;
    assert_ne!(next, pid, "recycled past max_memory_per_child_mb");
    assert!(reaped(pid).await);
    assert!(rss_mb(next) < 150, "the new child starts small");
    assert_eq!(
        metric(
            &s,
            "celeriac_worker_restarts_total",
            "memory",
            Some("recycled")
        )
        .await,
        1.0
    );
    assert_eq!(s.state.pools[0].status().replaced, 0);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resize_and_drain_start_and_stop_children() {
    let _serial = common::PROCESS_POOLS.lock().await;
    let s = start(&config(
        "presize",
        "concurrency = 1\nmax_concurrency = 4",
        "",
    ))
    .await;
    assert!(children_are(1).await);
    let r = s
        .admin_put("presize", TOKEN, &json!({"concurrency": 4}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["kind"], "processes");
    assert!(children_are(4).await, "{:?}", children());
    assert!(pool_full(&s, 4).await);
    // Shrink while every child is busy: they finish what they hold, then stop.
    let ids: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..8 {
            v.push(s.submit("debug.sleep", json!({"ms": 300})).await);
        }
        v
    };
    assert!(s.wait_started(&ids[0]).await);
    let r = s
        .admin_put("presize", TOKEN, &json!({"concurrency": 2}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    for id in &ids {
        let v = s.wait_final(id, 10.0).await;
        assert_eq!(v["state"], "SUCCESS", "{v}");
    }
    assert!(children_are(2).await, "{:?}", children());
    assert_eq!(s.state.pools[0].status().replaced, 0);
    // Drain: queued and running tasks finish, then every child exits.
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(s.submit("debug.sleep", json!({"ms": 200})).await);
    }
    let state = s.state.clone();
    s.shutdown().await;
    for id in &ids {
        let v = state.store.get(&id.parse().unwrap()).expect("kept");
        assert_eq!(v.state.as_str(), "SUCCESS", "{v:?}");
    }
    assert!(children_are(0).await, "{:?}", children());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_go_to_one_child_and_answer_in_order() {
    let _serial = common::PROCESS_POOLS.lock().await;
    let s = start(&config(
        "batch",
        "concurrency = 2\nmax_batch_size = 16\nmax_batch_delay_ms = 20.0",
        "",
    ))
    .await;
    let inputs: Vec<Value> = (0..200).map(|i| json!([i])).collect();
    let r = s
        .post("/v1/tasks/debug.echo/batch", &json!({ "inputs": inputs }))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    for (t, input) in r.body["tasks"].as_array().unwrap().iter().zip(&inputs) {
        let v = s.wait_final(t["task_id"].as_str().unwrap(), 10.0).await;
        assert_eq!(&v["result"], input);
    }
    // The jobs crossed in batches, not one by one.
    let m = s.scrape().await;
    let get = |name: &str| {
        m.samples
            .iter()
            .find(|x| x.metric == name && x.labels.get("pool") == Some("batch"))
            .map(|x| match x.value {
                prometheus_parse::Value::Untyped(v) | prometheus_parse::Value::Counter(v) => v,
                ref other => panic!("{name}: {other:?}"),
            })
            .unwrap_or_else(|| panic!("{name} missing"))
    };
    let (sum, count) = (
        get("celeriac_batch_size_sum"),
        get("celeriac_batch_size_count"),
    );
    assert_eq!(sum, 200.0);
    assert!(count < 200.0, "{count} batches for 200 jobs");
    s.shutdown().await;
}

/// The same model in a `threads` pool and a `processes` pool gives the same answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spam_predict_answers_equal_the_threads_kind() {
    let _serial = common::PROCESS_POOLS.lock().await;
    let s = start(
        r#"
        [server]
        body_limit_bytes = 65536
        [pools.t]
        kind = "threads"
        concurrency = 1
        intra_op_threads = 1
        [pools.p]
        kind = "processes"
        concurrency = 1
        intra_op_threads = 1
        [tasks."spam.threads"]
        kind = "text_classifier"
        pool = "t"
        model = "models/spam-minilm"
        [tasks."spam.processes"]
        kind = "text_classifier"
        pool = "p"
        model = "models/spam-minilm"
        "#,
    )
    .await;
    let smoke = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/spam_smoke.jsonl"),
    )
    .unwrap();
    let texts: Vec<Value> = smoke
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["text"].clone())
        .collect();
    // One at a time: the same computation, bit for bit.
    for text in &texts {
        let input = json!({ "text": text });
        let t = s.post("/v1/tasks/spam.threads?wait=30", &input).await;
        let p = s.post("/v1/tasks/spam.processes?wait=30", &input).await;
        assert_eq!(t.status, 200, "{}", t.body);
        assert_eq!(p.status, 200, "{}", p.body);
        assert_eq!(t.body["result"], p.body["result"], "{text}");
    }
    // As one batch each: same labels, same probabilities within float noise.
    let inputs: Vec<Value> = texts.iter().map(|t| json!({ "text": t })).collect();
    let mut answers = Vec::new();
    for task in ["spam.threads", "spam.processes"] {
        let r = s
            .post(
                &format!("/v1/tasks/{task}/batch"),
                &json!({ "inputs": inputs }),
            )
            .await;
        assert_eq!(r.status, 202, "{}", r.body);
        let mut results = Vec::new();
        for t in r.body["tasks"].as_array().unwrap() {
            let v = s.wait_final(t["task_id"].as_str().unwrap(), 30.0).await;
            assert_eq!(v["state"], "SUCCESS", "{v}");
            results.push(v["result"].clone());
        }
        answers.push(results);
    }
    for (t, p) in answers[0].iter().zip(&answers[1]) {
        assert_eq!(t["label"], p["label"]);
        let (a, b) = (
            t["probabilities"]["spam"].as_f64().unwrap(),
            p["probabilities"]["spam"].as_f64().unwrap(),
        );
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
    // What the model code measures inside the child reaches the server's /metrics.
    let m = s.scrape().await;
    let value = |name: &str, task: &str| {
        m.samples
            .iter()
            .find(|x| x.metric == name && x.labels.get("task") == Some(task))
            .map(|x| match x.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                ref other => panic!("{name}: {other:?}"),
            })
            .unwrap_or(0.0)
    };
    for task in ["spam.threads", "spam.processes"] {
        assert!(value("celeriac_model_load_seconds", task) > 0.0, "{task}");
        assert!(
            value("celeriac_batch_padding_ratio_count", task) >= 1.0,
            "{task}"
        );
    }
    s.shutdown().await;
}

/// `debug.abort` is refused where it would take the server down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_abort_is_a_startup_error_outside_a_processes_pool() {
    let config = common::debug_config("concurrency = 1", "")
        + "[tasks.\"debug.abort\"]\nkind = \"debug.abort\"\npool = \"p\"\n";
    let config = celeriac::config::Config::from_toml(&config, Path::new(".")).unwrap();
    let err = celeriac::app::App::start(config)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("debug.abort") && err.contains("\"processes\""),
        "{err}"
    );
}

/// A server killed with SIGKILL cannot stop its children: they die with it
/// (`PR_SET_PDEATHSIG`), even while they run a task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_children_die_with_a_server_killed_by_sigkill() {
    let _serial = common::PROCESS_POOLS.lock().await;
    let dir = std::env::temp_dir().join(format!("celeriac-sigkill-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("processes.toml");
    std::fs::write(
        &file,
        "[pools.p]\nkind = \"processes\"\nconcurrency = 2\nintra_op_threads = 1\n\
         [tasks.\"debug.spin\"]\nkind = \"debug.spin\"\npool = \"p\"\n",
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = std::process::Command::new(env!("CARGO_BIN_EXE_celeriac"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--config",
        ])
        .arg(&file)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let ready = wait_until(Duration::from_secs(20), || async {
        client
            .get(format!("{url}/health/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(ready, "the server starts");
    let kids = children_of(server.id());
    assert_eq!(kids.len(), 2, "{kids:?}");
    for _ in 0..2 {
        let r = client
            .post(format!("{url}/v1/tasks/debug.spin"))
            .json(&json!({"ms": 60_000}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 202);
    }
    // Both children spin.
    let t0: Vec<u64> = kids.iter().map(|p| stat(*p).unwrap().2).collect();
    let busy = wait_until(Duration::from_secs(5), || async {
        kids.iter()
            .zip(&t0)
            .all(|(p, t)| stat(*p).is_some_and(|(_, _, now)| now >= t + 10))
    })
    .await;
    assert!(busy, "both children run a task");
    server.kill().unwrap();
    server.wait().unwrap();
    // Dead (a zombie at most, if whoever adopted them does not reap).
    let dead = wait_until(Duration::from_secs(5), || async {
        kids.iter()
            .all(|p| stat(*p).is_none_or(|(state, _, _)| state == 'Z'))
    })
    .await;
    assert!(
        dead,
        "children outlived their server: {:?}",
        kids.iter().map(|p| stat(*p)).collect::<Vec<_>>()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
