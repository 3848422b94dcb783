//! The seed's own FastAPI app (`../shared/baseline/api.py`), unchanged, in front of
//! celeriac workers: it calls `predict.delay(text)` and `noop.delay()` (Celery's
//! positional arguments) and reads `AsyncResult`, through the real uvicorn, the real
//! Python `celery` client and a real `redis-server`.

use crate::common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::broker::{Redis, free_port, python};
use common::{Node, shared_dir, wait_until};
use serde_json::{Value, json};

/// uvicorn serving the seed's `api:app` on a free port, with `REDIS_URL` set.
struct Api {
    child: Child,
    url: String,
}

impl Api {
    async fn start(baseline: &std::path::Path, redis: &Redis) -> Api {
        let port = free_port();
        let child = Command::new(python())
            .args(["-m", "uvicorn", "api:app", "--app-dir"])
            .arg(baseline)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--log-level", "warning", "--no-access-log"])
            .env("REDIS_URL", redis.url())
            // shared/ is read-only: no __pycache__ there.
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e} (run scripts/test-deps.sh)", python().display()));
        let api = Api {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let client = reqwest::Client::new();
        let health = format!("{}/health", api.url);
        assert!(
            wait_until(Duration::from_secs(60), || {
                let r = client.get(&health).send();
                async move { r.await.is_ok_and(|r| r.status() == 200) }
            })
            .await,
            "uvicorn did not serve the seed app"
        );
        api
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `POST path` with `body`, then `GET /result/{id}` until the state is final (at most
/// 60 s); the last `/result` answer.
async fn call(client: &reqwest::Client, api: &str, path: &str, body: &Value) -> Value {
    let r = client
        .post(format!("{api}{path}"))
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{path}");
    let id = r.json::<Value>().await.unwrap()["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let v: Value = client
            .get(format!("{api}/result/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if matches!(v["status"].as_str(), Some("SUCCESS" | "FAILURE"))
            || tokio::time::Instant::now() > deadline
        {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// celeriac's own answers for `texts`, from an in-process server of the default
/// config (the same model and precision the workers run).
async fn own_answers(texts: &[String]) -> Vec<Value> {
    let toml = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/default.toml"))
        .unwrap();
    let s = common::start(&toml).await;
    let inputs: Vec<Value> = texts.iter().map(|t| json!({"text": t})).collect();
    let mut out = Vec::new();
    for chunk in inputs.chunks(100) {
        let r = s
            .post("/v1/tasks/spam.predict/batch", &json!({"inputs": chunk}))
            .await;
        assert_eq!(r.status, 202, "{:?}", r.body);
        for t in r.body["tasks"].as_array().unwrap() {
            let v = s.wait_final(t["task_id"].as_str().unwrap(), 60.0).await;
            assert_eq!(v["state"], "SUCCESS", "{v}");
            out.push(v["result"].clone());
        }
    }
    s.shutdown().await;
    out
}

/// A worker node on `redis` serving the default config, plus `extra` tasks.
async fn worker(redis: &Redis, extra: &str, name: &str) -> Node {
    let toml = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/default.toml"))
        .unwrap();
    // The file lands in a scratch directory: the model path must not be relative.
    let toml = toml.replace(
        "model = \"models/",
        concat!("model = \"", env!("CARGO_MANIFEST_DIR"), "/models/"),
    );
    let config = format!(
        "{}\n{extra}",
        toml.replacen(
            "[broker]\n",
            &format!("[broker]\nurl = \"{}\"\n", redis.url()),
            1
        )
    );
    assert!(
        config.contains(&redis.url()),
        "default.toml has a [broker] table"
    );
    let node = Node::spawn("worker", &config, name);
    node.wait_ready(120).await;
    node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_seed_fastapi_app_works_unchanged_against_celeriac_workers() {
    let Some(shared) = shared_dir() else { return };
    let texts = common::jsonl_texts(&shared.join("bench/inputs.jsonl"));
    assert_eq!(texts.len(), 1000);
    let expected = own_answers(&texts).await;
    let redis = Redis::start();
    let node = worker(&redis, "", "seed-w1").await;
    let api = Api::start(&shared.join("baseline"), &redis).await;
    let client = reqwest::Client::new();

    // The seed's `noop.delay()` with no `noop` task here: a clear FAILURE, Celery's own
    // NotRegistered (as `repr` shows it), not an eternal PENDING.
    let v = call(&client, &api.url, "/noop", &json!({})).await;
    assert_eq!(v["status"], "FAILURE", "{v}");
    let error = v["result"]["error"].as_str().unwrap();
    assert_eq!(
        error,
        "Task of kind 'noop' never registered, please make sure it's imported."
    );

    // `predict.delay(text)` for the 1,000 bench inputs, 16 at a time.
    let texts = Arc::new(texts);
    let answers = Arc::new(parking_lot::Mutex::new(vec![Value::Null; texts.len()]));
    let mut handles = Vec::new();
    for lane in 0..16 {
        let (texts, answers, client, url) = (
            texts.clone(),
            answers.clone(),
            client.clone(),
            api.url.clone(),
        );
        handles.push(tokio::spawn(async move {
            for i in (lane..texts.len()).step_by(16) {
                let v = call(&client, &url, "/predict", &json!({"text": texts[i]})).await;
                answers.lock()[i] = v;
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let answers = answers.lock().clone();
    let pytorch = shared_expected();
    let mut agree_pytorch = 0;
    for (i, (got, want)) in answers.iter().zip(&expected).enumerate() {
        assert_eq!(got["status"], "SUCCESS", "input {i}: {got}");
        let result = &got["result"];
        assert_eq!(result["label"], want["label"], "input {i}: {got} vs {want}");
        let (p, q) = (
            result["probabilities"]["spam"].as_f64().unwrap(),
            want["probabilities"]["spam"].as_f64().unwrap(),
        );
        assert!((p - q).abs() < 1e-4, "input {i}: {p} vs {q}");
        if let Some(py) = &pytorch {
            agree_pytorch += usize::from(py[i]["label"] == result["label"]);
        }
    }
    if let Some(py) = &pytorch {
        let n = py.len().min(answers.len());
        eprintln!("labels equal to the PyTorch worker's (expected.jsonl): {agree_pytorch}/{n}");
        assert_eq!(
            agree_pytorch, n,
            "labels that differ from the PyTorch worker's"
        );
    }
    drop(node);

    // With a `noop` task configured, the seed's readiness probe passes.
    let _node = worker(
        &redis,
        "[tasks.noop]\nkind = \"noop\"\npool = \"default\"\n",
        "seed-w2",
    )
    .await;
    let v = call(&client, &api.url, "/noop", &json!({})).await;
    assert_eq!(
        v,
        json!({"task_id": v["task_id"], "status": "SUCCESS", "result": null})
    );
}

/// The PyTorch worker's answers (`$BASELINE_HOME/expected.jsonl`, made by the seed's
/// `setup.sh`), where that has run on this machine.
fn shared_expected() -> Option<Vec<Value>> {
    let home = match std::env::var_os("BASELINE_HOME") {
        Some(h) => std::path::PathBuf::from(h),
        None => std::path::Path::new(&std::env::var_os("HOME")?).join(".cache/celeriac-baseline"),
    };
    let text = std::fs::read_to_string(home.join("expected.jsonl")).ok()?;
    Some(
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect(),
    )
}
