//! The Redis broker against a real `redis-server` (started here on a free port): nodes
//! sharing a queue, polls on any node, revoke across nodes, `kill -9` of a node holding
//! tasks, SIGTERM, a Redis restart, and the real Python `celery` client in both
//! directions. `scripts/test-deps.sh` installs redis-server and the Python packages.

use crate::common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use celeriac::broker::Broker;
use celeriac::config::{BrokerConfig, Config};
use celeriac::store::TaskState;
use common::broker::{Redis, free_port, python, run_python, scratch};
use common::{Node, Server, debug_config_in, start, wait_until};
use serde_json::{Value, json};

/// A `[broker]` table for `redis`, with a short visibility timeout.
fn broker_table(redis: &Redis, node: &str) -> String {
    format!(
        "[broker]\nurl = \"{}\"\nvisibility_timeout_seconds = 2.0\nrestore_interval_seconds = 0.25\nnode_name = \"{node}\"\n",
        redis.url()
    )
}

/// A debug config (pool `pool`, which is also its queue) on `redis` as node `node`.
fn node_config(pool: &str, size: usize, redis: &Redis, node: &str) -> String {
    debug_config_in(
        pool,
        &format!("concurrency = {size}\nmax_batch_size = 8"),
        &broker_table(redis, node),
    )
}

/// A client of the broker with no pools: submits as the HTTP API does.
async fn client(redis: &Redis, queue: &str) -> Arc<Broker> {
    let config = BrokerConfig {
        url: Some(redis.url()),
        node_name: Some("celeriac@test-client".into()),
        ..BrokerConfig::default()
    };
    Broker::connect(&config, Duration::from_secs(600), vec![queue.into()])
        .await
        .unwrap()
}

async fn submit(b: &Broker, task: &str, input: Value) -> String {
    let id = uuid::Uuid::new_v4();
    b.submit(0, &[(id, task.into(), Arc::new(input))], 1000, 60.0)
        .await
        .unwrap();
    id.to_string()
}

async fn wait_state(b: &Broker, id: &str, state: TaskState, secs: u64) -> bool {
    let id: uuid::Uuid = id.parse().unwrap();
    wait_until(Duration::from_secs(secs), || async move {
        b.get(&id).await.unwrap().is_some_and(|v| v.state == state)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_share_a_queue_and_answer_for_each_other() {
    let redis = Redis::start();
    let a = start(&node_config("shared", 2, &redis, "celeriac@a")).await;
    let b = start(&node_config("shared", 2, &redis, "celeriac@b")).await;
    let ids: Vec<String> = futures_util::future::join_all(
        (0..16).map(|i| a.submit("debug.sleep", json!({"ms": 100 + i}))),
    )
    .await;
    let mut workers = std::collections::BTreeSet::new();
    for id in &ids {
        // Submitted on A, long-polled on B.
        let v = b.wait_final(id, 10.0).await;
        assert_eq!(v["state"], "SUCCESS", "{v}");
        assert_eq!(v["task"], "debug.sleep");
        let meta = redis.meta(id).await;
        assert_eq!(meta["status"], "SUCCESS");
        assert_eq!(meta["task_id"], id.as_str());
        workers.insert(meta["worker"].as_str().unwrap().to_string());
    }
    assert_eq!(
        workers,
        ["celeriac@a", "celeriac@b"].map(String::from).into(),
        "both nodes took work from the one queue"
    );
    // A poll of a task never issued is a 404 on every node, not an eternal PENDING.
    let missing = uuid::Uuid::new_v4();
    b.get(&format!("/v1/tasks/{missing}"))
        .await
        .assert_error(404, "task_not_found");

    // Revoke on B a task queued on A while every worker of both nodes is busy.
    let busy: Vec<String> = futures_util::future::join_all(
        (0..4).map(|_| a.submit("debug.sleep", json!({"ms": 1500}))),
    )
    .await;
    let running = |s: &Server, id: String| {
        let s = s.url.clone();
        async move {
            let v: Value = reqwest::get(format!("{s}/v1/tasks/{id}"))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["state"] == "STARTED"
        }
    };
    for id in &busy {
        assert!(wait_until(Duration::from_secs(5), || running(&a, id.clone())).await);
    }
    let queued = a.submit("debug.echo", json!({"n": 1})).await;
    let r = b.delete(&format!("/v1/tasks/{queued}")).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["state"], "REVOKED");
    for id in &busy {
        assert_eq!(a.wait_final(id, 10.0).await["state"], "SUCCESS");
    }
    // The message was taken and dropped; the task stays revoked, and a revoked task
    // cannot be revoked again.
    assert!(
        wait_until(Duration::from_secs(5), || async {
            redis.int(&["LLEN", "shared"]).await == 0
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(a.wait_final(&queued, 1.0).await["state"], "REVOKED");
    b.delete(&format!("/v1/tasks/{queued}"))
        .await
        .assert_error(409, "not_revocable");
    // Nothing left in flight.
    assert_eq!(redis.int(&["HLEN", "unacked"]).await, 0);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_node_s_tasks_finish_exactly_once_on_another() {
    let redis = Redis::start();
    let w1 = Node::spawn("worker", &node_config("k", 4, &redis, "celeriac@w1"), "w1");
    w1.wait_ready(30).await;
    let b = client(&redis, "k").await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(submit(&b, "debug.sleep", json!({"ms": 1500})).await);
    }
    for id in &ids {
        assert!(wait_state(&b, id, TaskState::Started, 10).await);
        assert_eq!(redis.meta(id).await["worker"], "celeriac@w1");
    }
    w1.signal("-KILL");
    let w2 = start(&node_config("k", 4, &redis, "celeriac@w2")).await;
    for id in &ids {
        assert!(
            wait_state(&b, id, TaskState::Success, 20).await,
            "{id}: {}",
            redis.meta(id).await
        );
        let meta = redis.meta(id).await;
        assert_eq!(meta["worker"], "celeriac@w2", "{meta}");
        assert_eq!(meta["retries"], 1, "{meta}");
    }
    let broker = w2.state.backend.broker().cloned().unwrap();
    assert_eq!(
        broker
            .redeliveries
            .load(std::sync::atomic::Ordering::Relaxed),
        4
    );
    // Exactly once: after another visibility timeout nothing is in flight or queued
    // again, and W2 ran each task once.
    tokio::time::sleep(Duration::from_millis(2600)).await;
    assert_eq!(redis.int(&["HLEN", "unacked"]).await, 0);
    assert_eq!(redis.int(&["LLEN", "k"]).await, 0);
    assert_eq!(
        broker
            .redeliveries
            .load(std::sync::atomic::Ordering::Relaxed),
        4
    );
    let finished = w2.scrape().await;
    let runs: f64 = finished
        .samples
        .iter()
        .filter(|s| s.metric == "celeriac_tasks_finished_total")
        .filter(|s| s.labels.get("pool") == Some("k") && s.labels.get("state") == Some("SUCCESS"))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) => v,
            _ => 0.0,
        })
        .sum();
    assert_eq!(runs, 4.0);
    w2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_puts_back_what_a_worker_cannot_finish() {
    let redis = Redis::start();
    let config = node_config("term", 2, &redis, "celeriac@t1").replace(
        "drain_timeout_seconds = 20.0",
        "drain_timeout_seconds = 0.5",
    );
    let w1 = Node::spawn("worker", &config, "t1");
    w1.wait_ready(30).await;
    let b = client(&redis, "term").await;
    let long = [
        submit(&b, "debug.sleep", json!({"ms": 3000})).await,
        submit(&b, "debug.sleep", json!({"ms": 3000})).await,
    ];
    for id in &long {
        assert!(wait_state(&b, id, TaskState::Started, 10).await);
    }
    let status = w1.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "{status:?}");
    // Back in the queue at once (not after the visibility timeout), nothing in flight.
    assert_eq!(redis.int(&["LLEN", "term"]).await, 2);
    assert_eq!(redis.int(&["HLEN", "unacked"]).await, 0);
    let w2 = start(&node_config("term", 2, &redis, "celeriac@t2")).await;
    for id in &long {
        assert!(wait_state(&b, id, TaskState::Success, 10).await);
        assert_eq!(redis.meta(id).await["worker"], "celeriac@t2");
    }
    w2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_restart_is_a_clear_503_then_service_resumes() {
    let mut redis = Redis::start();
    let s = start(&node_config("rr", 2, &redis, "celeriac@rr")).await;
    let id = s.submit("debug.echo", json!({"before": true})).await;
    assert_eq!(s.wait_final(&id, 5.0).await["state"], "SUCCESS");
    redis.stop();
    let r = s.post("/v1/tasks/debug.echo", &json!({"x": 1})).await;
    r.assert_error(503, "broker_unavailable");
    assert!(r.headers.contains_key("retry-after"));
    let ready = s.get("/health/ready").await;
    assert_eq!(ready.status, 503);
    assert!(
        ready.body["reasons"][0]
            .as_str()
            .unwrap()
            .contains("broker"),
        "{}",
        ready.body
    );
    redis.restart();
    assert!(
        wait_until(Duration::from_secs(15), || async {
            s.post("/v1/tasks/debug.echo?wait=5", &json!({"after": true}))
                .await
                .body["state"]
                == "SUCCESS"
        })
        .await,
        "service did not resume after Redis came back"
    );
    assert!(
        wait_until(Duration::from_secs(5), || async {
            s.get("/health/ready").await.status == 200
        })
        .await
    );
    s.shutdown().await;
}

/// The strings of an array reply (`HKEYS`, `LRANGE`).
async fn strings(redis: &Redis, args: &[&str]) -> Vec<String> {
    match redis.cmd(args).await {
        redis::Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                redis::Value::BulkString(b) => String::from_utf8(b).unwrap(),
                other => panic!("{args:?}: {other:?}"),
            })
            .collect(),
        other => panic!("{args:?}: {other:?}"),
    }
}

/// The lease (`unacked_index` score) of delivery tag `tag`, if held.
async fn lease(redis: &Redis, tag: &str) -> Option<f64> {
    match redis.cmd(&["ZSCORE", "unacked_index", tag]).await {
        redis::Value::BulkString(b) => Some(String::from_utf8(b).unwrap().parse().unwrap()),
        redis::Value::Double(d) => Some(d),
        redis::Value::Nil => None,
        other => panic!("{other:?}"),
    }
}

/// A task longer than the visibility timeout (3 s against 2 s), with a second node
/// idle on the same queue: the holder renews the lease, so no node puts the message back
/// and the task runs exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_task_longer_than_the_visibility_timeout_runs_exactly_once() {
    let redis = Redis::start();
    let a = start(&node_config("lease", 1, &redis, "celeriac@la")).await;
    let b = start(&node_config("lease", 1, &redis, "celeriac@lb")).await;
    let id = a.submit("debug.sleep", json!({"ms": 3000})).await;
    let held = wait_until(Duration::from_secs(5), || async {
        redis.meta(&id).await["status"] == "STARTED"
    })
    .await;
    assert!(held, "{}", redis.meta(&id).await);
    let tags = strings(&redis, &["HKEYS", "unacked"]).await;
    assert_eq!(tags.len(), 1, "{tags:?}");
    let first = lease(&redis, &tags[0]).await.expect("in flight");
    // Renewed every quarter of the timeout while it runs.
    assert!(
        wait_until(Duration::from_secs(3), || async {
            lease(&redis, &tags[0]).await.is_some_and(|l| l > first)
        })
        .await,
        "the lease was not renewed"
    );
    let v = b.wait_final(&id, 15.0).await;
    assert_eq!(v["state"], "SUCCESS", "{v}");
    assert_eq!(v["result"], json!({"slept_ms": 3000}));
    assert_eq!(v["retries"], 0, "{v}");
    let meta = redis.meta(&id).await;
    assert_eq!(meta["retries"], 0, "{meta}");
    // One run: no node restored the message or took it a second time.
    for node in [&a, &b] {
        let broker = node.state.backend.broker().cloned().unwrap();
        assert_eq!(broker.redeliveries.load(Ordering::Relaxed), 0);
        assert_eq!(broker.restored.load(Ordering::Relaxed), 0);
    }
    assert_eq!(redis.int(&["HLEN", "unacked"]).await, 0);
    assert_eq!(redis.int(&["LLEN", "lease"]).await, 0);
    a.shutdown().await;
    b.shutdown().await;
}

/// Redis goes away while a task runs and comes back empty on the same port: the result
/// the node computed meanwhile is written once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_result_computed_while_redis_is_down_is_written_when_it_returns() {
    let mut redis = Redis::start();
    let s = start(&node_config("down", 1, &redis, "celeriac@down")).await;
    let id = s.submit("debug.sleep", json!({"ms": 800})).await;
    let uuid: uuid::Uuid = id.parse().unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || async {
            redis.meta(&id).await["status"] == "STARTED"
        })
        .await
    );
    redis.stop();
    let broker = s.state.backend.broker().cloned().unwrap();
    // Finished on the node, and the broker seen down (a write failed) before Redis
    // returns.
    assert!(
        wait_until(Duration::from_secs(10), || async {
            s.state.store.state(&uuid).is_some_and(|st| st.is_final()) && !broker.is_up()
        })
        .await,
        "state {:?}, broker up {}",
        s.state.store.state(&uuid),
        broker.is_up()
    );
    redis.restart();
    assert_eq!(redis.meta(&id).await, Value::Null, "Redis came back empty");
    assert!(
        wait_until(Duration::from_secs(15), || async {
            redis.meta(&id).await["status"] == "SUCCESS"
        })
        .await,
        "the result was not written after Redis returned"
    );
    let meta = redis.meta(&id).await;
    assert_eq!(meta["result"], json!({"slept_ms": 800}), "{meta}");
    assert_eq!(meta["worker"], "celeriac@down");
    assert_eq!(s.wait_final(&id, 5.0).await["state"], "SUCCESS");
    s.shutdown().await;
}

/// Messages that are not Celery task messages go, as they were, to
/// `<queue>.celeriac-dead-letter`; nothing is left in flight and the node serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unreadable_messages_go_to_the_dead_letter_list() {
    let redis = Redis::start();
    let s = start(&node_config("dlq", 1, &redis, "celeriac@dl")).await;
    let no_tag_id = uuid::Uuid::new_v4().to_string();
    let junk = [
        "not json at all".to_string(),
        r#"{"headers": {"id": "x", "task": "debug.echo"}}"#.to_string(),
        // A task message without kombu's delivery_tag (fatal to a Python worker too).
        json!({
            "body": "W1tdLCB7fSwge31d",
            "headers": {"id": no_tag_id, "task": "debug.echo", "lang": "py"},
            "properties": {"delivery_info": {"exchange": "", "routing_key": "dlq"}}
        })
        .to_string(),
    ];
    for raw in &junk {
        redis.cmd(&["LPUSH", "dlq", raw]).await;
    }
    assert!(
        wait_until(Duration::from_secs(10), || async {
            redis.int(&["LLEN", "dlq.celeriac-dead-letter"]).await == 3
        })
        .await,
        "{:?}",
        strings(&redis, &["LRANGE", "dlq.celeriac-dead-letter", "0", "-1"]).await
    );
    // Newest first, byte for byte.
    let mut dead = strings(&redis, &["LRANGE", "dlq.celeriac-dead-letter", "0", "-1"]).await;
    dead.reverse();
    assert_eq!(dead, junk);
    assert_eq!(redis.int(&["LLEN", "dlq"]).await, 0);
    assert_eq!(redis.int(&["HLEN", "unacked"]).await, 0);
    assert_eq!(
        redis.meta(&no_tag_id).await,
        Value::Null,
        "never marked STARTED"
    );
    let r = s.post("/v1/tasks/debug.echo?wait=5", &json!("after")).await;
    assert_eq!(r.body["result"], "after", "{}", r.body);
    s.shutdown().await;
}

/// A node whose only worker is lost and whose replacements fail to start (the restart
/// budget spent: every slot parked) gives the task it took back to the Redis queue, and
/// another node runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pool_with_no_live_worker_gives_its_tasks_back_to_the_queue() {
    let redis = Redis::start();
    let a = start(&debug_config_in(
        "gb",
        "concurrency = 1\nmax_retries = 1",
        &format!(
            "restart_budget = 1\nrestart_window_seconds = 60.0\n{}",
            broker_table(&redis, "celeriac@gb-a")
        ),
    ))
    .await;
    let b = client(&redis, "gb").await;
    // The worker is lost, its task re-queued on the node (max_retries), and the two
    // starts of its replacement fail: the second spends the budget and parks the slot.
    let id = submit(&b, "debug.crash_worker", json!({"failed_starts": 2})).await;
    assert!(
        wait_until(Duration::from_secs(10), || async {
            a.state.pools[0].status().is_dead()
        })
        .await,
        "{:?}",
        a.state.pools[0].status()
    );
    assert!(
        wait_until(Duration::from_secs(5), || async {
            redis.int(&["LLEN", "gb"]).await == 1
        })
        .await,
        "the task did not go back to the queue: {}",
        redis.meta(&id).await
    );
    assert_eq!(redis.int(&["HLEN", "unacked"]).await, 0, "A holds nothing");
    assert!(a.state.backend.broker().cloned().unwrap().held().is_empty());
    // Another node, where the name is served by an echo, runs it.
    let other = format!(
        "{}[pools.gb]\nconcurrency = 1\n[tasks.\"debug.crash_worker\"]\nkind = \"debug.echo\"\npool = \"gb\"\n",
        broker_table(&redis, "celeriac@gb-b")
    );
    let c = start(&other).await;
    assert!(
        wait_state(&b, &id, TaskState::Success, 15).await,
        "{}",
        redis.meta(&id).await
    );
    let meta = redis.meta(&id).await;
    assert_eq!(meta["worker"], "celeriac@gb-b", "{meta}");
    assert_eq!(meta["result"], json!({"failed_starts": 2}), "{meta}");
    assert!(meta["retries"].as_u64().unwrap() >= 1, "{meta}");
    assert_eq!(redis.int(&["LLEN", "gb"]).await, 0);
    c.shutdown().await;
    a.shutdown().await;
}

/// A Python Celery worker (`--pool solo`) on queue `pyq` running `source` as module
/// `module`, with the broker in `$BROKER`.
fn python_worker(redis: &Redis, module: &str, source: &str, extra: &[&str]) -> Child {
    let dir = scratch(module);
    std::fs::write(dir.join(format!("{module}.py")), source).unwrap();
    Command::new(python())
        .args([
            "-m", "celery", "-A", module, "worker", "-Q", "pyq", "--pool", "solo",
        ])
        .args(["--without-gossip", "--without-mingle", "-l", "warning"])
        .args(extra)
        .current_dir(&dir)
        .env("BROKER", redis.url())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

const CLIENT: &str = r#"
import json, sys
from celery import Celery
app = Celery("client", broker=sys.argv[1], backend=sys.argv[1])
out = {}
r = app.send_task("spam.predict", kwargs={"text": sys.argv[2]})
out["result"] = r.get(timeout=20)
bad = app.send_task("spam.predict", kwargs={"txt": "no text field"})
try:
    bad.get(timeout=20)
    out["error"] = None
except Exception as e:
    out["error"] = [type(e).__name__, str(e)]
out["state"] = bad.state
odd = app.send_task("spam.predict", kwargs={"text": "hi"}, task_id="doc-42")
try:
    odd.get(timeout=20)
    out["odd"] = None
except Exception as e:
    out["odd"] = str(e)
import datetime
late = app.send_task("spam.predict", kwargs={"text": "hi"},
                     expires=datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=5))
try:
    late.get(timeout=20)
    out["late"] = None
except Exception as e:
    out["late"] = [type(e).__name__, str(e)]
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn python_celery_calls_celeriac_with_the_default_config() {
    let redis = Redis::start();
    let mut config =
        Config::from_file(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.toml"))
            .unwrap();
    config.broker.url = Some(redis.url());
    let app = celeriac::app::App::start(config).await.unwrap();
    let state = app.state().clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(app.serve(listener, async {
        let _ = stopped.await;
    }));
    let text = "WINNER!! You have won a free cruise. Call now to claim";
    let out = tokio::task::spawn_blocking({
        let url = redis.url();
        move || run_python(CLIENT, &[&url, text])
    })
    .await
    .unwrap();
    let out: Value = serde_json::from_str(out.trim()).unwrap();
    // The same JSON as the HTTP API gives.
    let http: Value = reqwest::Client::new()
        .post(format!("{url}/v1/tasks/spam.predict?wait=10"))
        .json(&json!({"text": text}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(http["state"], "SUCCESS");
    assert_eq!(out["result"], http["result"], "{out}");
    assert_eq!(out["state"], "FAILURE");
    // A keyword the task does not take: Python's TypeError, as a Python task raises it.
    let error = out["error"][1].as_str().unwrap();
    assert_eq!(
        error, "spam.predict() got an unexpected keyword argument 'txt'",
        "{out}"
    );
    assert_eq!(out["error"][0], "TypeError");
    // A task id that is not a UUID fails where its sender looks, and is not stuck.
    assert!(
        out["odd"].as_str().is_some_and(|e| e.contains("UUID")),
        "{out}"
    );
    // Past its `expires` when taken: REVOKED, as Celery does.
    assert_eq!(out["late"][0], "TaskRevokedError", "{out}");
    assert_eq!(redis.int(&["HLEN", "unacked"]).await, 0);
    assert!(state.backend.broker().is_some());
    let _ = stop.send(());
    serving.await.unwrap().unwrap();
}

const WORKER: &str = r#"
from celery import Celery
import os
app = Celery("pyworker", broker=os.environ["BROKER"], backend=os.environ["BROKER"])
app.conf.worker_hijack_root_logger = False

@app.task(name="debug.echo")
def echo(**kwargs):
    return {"python": True, "got": kwargs}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn celeriac_s_messages_run_on_a_python_celery_worker() {
    let redis = Redis::start();
    let mut worker = python_worker(&redis, "pyworker", WORKER, &["--without-heartbeat"]);
    // The message celeriac's HTTP API writes (the same `Broker::submit`).
    let b = client(&redis, "pyq").await;
    let id = submit(&b, "debug.echo", json!({"text": "from rust"})).await;
    let done = wait_state(&b, &id, TaskState::Success, 60).await;
    let _ = worker.kill();
    let _ = worker.wait();
    assert!(done, "{}", redis.meta(&id).await);
    let view = b.get(&id.parse().unwrap()).await.unwrap().unwrap();
    assert_eq!(
        view.result,
        Some(json!({"python": true, "got": {"text": "from rust"}}))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_success_is_never_overwritten() {
    let redis = Redis::start();
    let b = client(&redis, "guard").await;
    let id: uuid::Uuid = submit(&b, "debug.echo", json!({})).await.parse().unwrap();
    let mut view = b.get(&id).await.unwrap().unwrap();
    assert_eq!(view.state, TaskState::Pending);
    view.state = TaskState::Success;
    view.result = Some(json!({"first": true}));
    view.finished_at = Some("2026-11-30T04:00:00.000000Z".into());
    b.finish(std::slice::from_ref(&view)).await.unwrap();
    // A late duplicate (a redelivered run, an abandoned worker) writes nothing.
    view.state = TaskState::Failure;
    view.result = None;
    view.error = Some("late duplicate".into());
    b.finish(&[view]).await.unwrap();
    let now = b.get(&id).await.unwrap().unwrap();
    assert_eq!(now.state, TaskState::Success);
    assert_eq!(now.result, Some(json!({"first": true})));
    // A finished task cannot be revoked.
    assert_eq!(
        b.revoke(&id).await.unwrap().unwrap_err(),
        celeriac::store::StoreError::WrongState(TaskState::Success)
    );
}

const CONTROL: &str = r#"
import json, sys, time
from celery import Celery
app = Celery("ctl", broker=sys.argv[1], backend=sys.argv[1])
out = {}
out["ping"] = app.control.ping(timeout=2)
out["ping_other"] = app.control.ping(destination=["celeriac@elsewhere"], timeout=1)
out["grow"] = app.control.pool_grow(1, reply=True, timeout=2)
runs = [app.send_task("debug.sleep", kwargs={"ms": 1500}, queue="ctl") for _ in range(2)]
queued = app.send_task("debug.sleep", kwargs={"ms": 10}, queue="ctl")
# Revoked while it waits behind the two (each inspect below waits out its timeout).
app.control.revoke(queued.id)
time.sleep(0.6)
i = app.control.inspect(timeout=1)
out["active"] = i.active()
out["stats"] = i.stats()
out["registered"] = i.registered()
out["active_queues"] = i.active_queues()
out["runs"] = [r.get(timeout=10) for r in runs]
time.sleep(0.5)
out["queued_state"] = queued.state
out["ids"] = [r.id for r in runs]
out["shrink"] = app.control.pool_shrink(1, reply=True, timeout=1)
out["autoscale"] = app.control.autoscale(3, 1, reply=True, timeout=1)
out["grow_autoscaling"] = app.control.pool_grow(1, reply=True, timeout=1)
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn celery_control_and_inspect_work_against_a_celeriac_node() {
    let redis = Redis::start();
    let s = start(&node_config("ctl", 1, &redis, "celeriac@ctl")).await;
    let out = tokio::task::spawn_blocking({
        let url = redis.url();
        move || run_python(CONTROL, &[&url])
    })
    .await
    .unwrap();
    let out: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        out["ping"],
        json!([{"celeriac@ctl": {"ok": "pong"}}]),
        "{out}"
    );
    assert_eq!(
        out["ping_other"],
        json!([]),
        "a broadcast for another node is ignored"
    );
    assert_eq!(
        out["grow"],
        json!([{"celeriac@ctl": {"ok": "pool will grow"}}])
    );
    // The pool really grew: both sleeps ran at once, and stats said 2 (below).
    // Both sleeps ran at once on the grown pool, and inspect saw them.
    let active = out["active"]["celeriac@ctl"].as_array().unwrap();
    let mut seen: Vec<&str> = active.iter().map(|t| t["id"].as_str().unwrap()).collect();
    seen.sort_unstable();
    let mut ids: Vec<&str> = out["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(seen, ids, "{out}");
    assert_eq!(active[0]["name"], "debug.sleep");
    assert_eq!(active[0]["kwargs"], json!({"ms": 1500}));
    let stats = &out["stats"]["celeriac@ctl"];
    assert_eq!(stats["pool"]["max-concurrency"], 2, "{stats}");
    assert!(
        out["registered"]["celeriac@ctl"]
            .as_array()
            .unwrap()
            .contains(&json!("debug.sleep(ms)"))
    );
    assert_eq!(out["active_queues"]["celeriac@ctl"][0]["name"], "ctl");
    assert_eq!(out["runs"], json!([{"slept_ms": 1500}, {"slept_ms": 1500}]));
    // Revoked while queued behind the two: never ran.
    assert_eq!(out["queued_state"], "REVOKED", "{out}");
    assert_eq!(
        out["shrink"],
        json!([{"celeriac@ctl": {"ok": "pool will shrink"}}])
    );
    assert_eq!(
        out["autoscale"],
        json!([{"celeriac@ctl": {"ok": "autoscale now max=3 min=1"}}])
    );
    assert_eq!(s.state.pools[0].status().autoscale, Some((1, 3)));
    assert_eq!(s.state.pools[0].status().size, 1, "shrunk back to 1");
    // As Celery: no grow or shrink while autoscaling.
    assert!(
        out["grow_autoscaling"][0]["celeriac@ctl"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("autoscale")),
        "{out}"
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flower_lists_a_celeriac_node_and_the_tasks_it_ran() {
    let redis = Redis::start();
    let s = start(&node_config("fl", 2, &redis, "celeriac@flower-test")).await;
    let port = free_port();
    let mut flower = Command::new(python())
        .args([
            "-m",
            "celery",
            &format!("--broker={}", redis.url()),
            "flower",
        ])
        .args(["--address=127.0.0.1", &format!("--port={port}")])
        .env("FLOWER_UNAUTHENTICATED_API", "true")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let api = format!("http://127.0.0.1:{port}/api");
    let client = reqwest::Client::new();
    let get = |path: String| {
        let (client, api) = (client.clone(), api.clone());
        async move {
            match client.get(format!("{api}{path}")).send().await {
                Ok(r) if r.status() == 200 => r.json::<Value>().await.unwrap_or(Value::Null),
                _ => Value::Null,
            }
        }
    };
    // Flower's workers API (inspect over pidbox) lists the node.
    let listed = wait_until(Duration::from_secs(30), || async {
        get("/workers?refresh=1".into()).await["celeriac@flower-test"]["stats"]["pool"]["max-concurrency"] == 2
    })
    .await;
    // Flower turns task events on (enable_events); then its tasks API shows what the
    // node ran, from the events.
    let ran = std::sync::Mutex::new(None);
    let shown = wait_until(Duration::from_secs(30), || async {
        let id = s.submit("debug.echo", json!({"flower": true})).await;
        assert_eq!(s.wait_final(&id, 5.0).await["state"], "SUCCESS");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let task = get("/tasks".into()).await[&id].clone();
        let done = task["state"] == "SUCCESS";
        *ran.lock().unwrap() = Some(task);
        done
    })
    .await;
    let _ = flower.kill();
    let _ = flower.wait();
    assert!(
        listed,
        "Flower's workers API did not list the celeriac node"
    );
    assert!(shown, "Flower's tasks API did not show a task celeriac ran");
    let task = ran.into_inner().unwrap().unwrap();
    assert_eq!(task["name"], "debug.echo", "{task}");
    assert_eq!(task["worker"], "celeriac@flower-test", "{task}");
    s.shutdown().await;
}

const FLEET_WORKER: &str = r#"
import os, time
from celery import Celery
app = Celery("fleet", broker=os.environ["BROKER"], backend=os.environ["BROKER"])
app.conf.result_extended = True
app.conf.worker_hijack_root_logger = False
# One message at a time: what waits stays in Redis, where a revoke can take it back.
app.conf.worker_prefetch_multiplier = 1

@app.task(name="py.shout")
def shout(text):
    return {"shout": text.upper()}

@app.task(name="py.sleep")
def sleep(ms):
    time.sleep(ms / 1000)
    return {"slept_ms": ms}
"#;

const FLEET_CLIENT: &str = r#"
import json, sys
from celery import Celery
app = Celery("c", broker=sys.argv[1], backend=sys.argv[1])
r = app.send_task("debug.echo", kwargs={"from": "python"}, queue="ce")
print(json.dumps({"result": r.get(timeout=20), "worker": app.backend.get_task_meta(r.id).get("worker")}))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mixed_fleet_python_and_celeriac_workers_on_one_redis() {
    let redis = Redis::start();
    let mut worker = python_worker(&redis, "fleet", FLEET_WORKER, &["-n", "py@%h"]);
    let config = format!(
        "{}\n[tasks.\"py.shout\"]\nqueue = \"pyq\"\n[tasks.\"py.sleep\"]\nqueue = \"pyq\"\n",
        node_config("ce", 2, &redis, "celeriac@fleet")
    );
    let s = start(&config).await;
    // HTTP to celeriac for the Python task: SUCCESS with the Python worker's result.
    let r = s
        .post("/v1/tasks/py.shout?wait=10", &json!({"text": "hi"}))
        .await;
    let id = r.id();
    let done = s.wait_final(&id, 30.0).await;
    let meta = redis.meta(&id).await;
    // Python to celeriac's task, on celeriac's queue.
    let out = tokio::task::spawn_blocking({
        let url = redis.url();
        move || run_python(FLEET_CLIENT, &[&url])
    })
    .await
    .unwrap();
    // DELETE of a Python task the Python worker is running: 409 (it was told, and
    // runs it anyway, as Celery does without terminate).
    let busy = s.submit("py.sleep", json!({"ms": 1500})).await;
    let taken = wait_until(Duration::from_secs(10), || async {
        redis.int(&["LLEN", "pyq"]).await == 0
    })
    .await;
    let running = s.delete(&format!("/v1/tasks/{busy}")).await;
    // DELETE of one queued behind it: 200 REVOKED, and it never runs.
    let queued = s.submit("py.shout", json!({"text": "never"})).await;
    let revoked = s.delete(&format!("/v1/tasks/{queued}")).await;
    // A sentinel queued after it: once it ran, the revoked one would have too.
    let sentinel = s.submit("py.shout", json!({"text": "after"})).await;
    let sentinel_done = s.wait_final(&sentinel, 20.0).await;
    let busy_done = s.wait_final(&busy, 20.0).await;
    let after = s.get(&format!("/v1/tasks/{queued}")).await;
    let _ = worker.kill();
    let _ = worker.wait();
    assert_eq!(done["state"], "SUCCESS", "{done}");
    assert_eq!(done["result"], json!({"shout": "HI"}));
    assert!(
        meta["worker"]
            .as_str()
            .is_some_and(|w| w.starts_with("py@")),
        "a Python worker ran it: {meta}"
    );
    let out: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(out["result"], json!({"from": "python"}), "{out}");
    assert_eq!(out["worker"], "celeriac@fleet", "{out}");
    assert!(taken, "the Python worker did not take its task");
    running.assert_error(409, "not_revocable");
    assert_eq!(revoked.status, 200, "{:?}", revoked.body);
    assert_eq!(revoked.body["state"], "REVOKED");
    assert_eq!(
        sentinel_done["result"],
        json!({"shout": "AFTER"}),
        "{sentinel_done}"
    );
    assert_eq!(busy_done["state"], "SUCCESS", "{busy_done}");
    assert_eq!(after.body["state"], "REVOKED", "{:?}", after.body);
    // An unknown name lists the queue-routed tasks too.
    let r = s.post("/v1/tasks/py.nope", &json!({})).await;
    r.assert_error(404, "unknown_task");
    assert!(r.body["error"].as_str().unwrap().contains("py.shout"));
    s.shutdown().await;
}

/// Pool kind `processes` behind the broker: its children run what the node takes from
/// Redis, and a child that aborts fails its task there as a lost worker's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_processes_pool_serves_from_the_broker() {
    let _children = common::PROCESS_POOLS.lock().await;
    let redis = Redis::start();
    let extra = format!(
        "{}[tasks.\"debug.abort\"]\nkind = \"debug.abort\"\npool = \"procq\"\n",
        broker_table(&redis, "celeriac@p")
    );
    let s = start(&debug_config_in(
        "procq",
        "kind = \"processes\"\nconcurrency = 2\nintra_op_threads = 1\nmax_batch_size = 8",
        &extra,
    ))
    .await;
    let ids: Vec<String> =
        futures_util::future::join_all((0..20).map(|i| s.submit("debug.echo", json!([i])))).await;
    for (i, id) in ids.iter().enumerate() {
        let v = s.wait_final(id, 10.0).await;
        assert_eq!(v["result"], json!([i]), "{v}");
        assert_eq!(redis.meta(id).await["status"], "SUCCESS");
    }
    let boom = s.submit("debug.abort", json!({})).await;
    let v = s.wait_final(&boom, 10.0).await;
    assert_eq!(v["state"], "FAILURE", "{v}");
    assert!(v["error"].as_str().unwrap().contains("SIGABRT"), "{v}");
    assert_eq!(redis.meta(&boom).await["status"], "FAILURE");
    let r = s.post("/v1/tasks/debug.echo?wait=5", &json!("after")).await;
    assert_eq!(r.body["result"], "after", "{}", r.body);
    s.shutdown().await;
}

/// With a broker, a pool actor that panics gives what it took back to Redis: the task
/// running on its other worker runs again on the restarted pool, and none is lost.
///
/// The consumer takes only what idle workers can start, so the pool holds broker tasks
/// only while they run: two workers, one busy with a long task when the other takes the
/// task that makes the actor panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_pool_gives_its_broker_tasks_back_and_they_finish() {
    let redis = Redis::start();
    let config = format!(
        "{}\n[tasks.\"brk.break\"]\nkind = \"debug.panic_pool\"\npool = \"brk\"\n",
        node_config("brk", 2, &redis, "celeriac@brk")
    );
    let s = start(&config).await;
    let b = client(&redis, "brk").await;
    let held = submit(&b, "debug.sleep", json!({"ms": 1500})).await;
    assert!(wait_state(&b, &held, TaskState::Started, 10).await);
    let started = Instant::now();
    let boom = submit(&b, "brk.break", json!({})).await;
    assert!(wait_state(&b, &boom, TaskState::Failure, 10).await);
    assert!(
        wait_until(Duration::from_secs(10), || async {
            s.state.pools[0].actor_restarts() == 1
        })
        .await
    );
    assert!(
        wait_state(&b, &held, TaskState::Success, 30).await,
        "{held}: {}",
        redis.meta(&held).await
    );
    // Given back and run again from the start, not finished by the stopped worker.
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert!(
        wait_until(Duration::from_secs(5), || async {
            redis.int(&["HLEN", "unacked"]).await == 0 && redis.int(&["LLEN", "brk"]).await == 0
        })
        .await
    );
    s.shutdown().await;
}
