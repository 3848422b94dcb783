//! SIGTERM against the real binary: queued tasks finish before the process exits 0.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::wait_until;
use serde_json::{Value, json};

const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"
drain_timeout_seconds = 30.0
[pools.p]
concurrency = 2
[tasks."debug.sleep"]
kind = "debug.sleep"
pool = "p"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_queued_tasks_then_exits_zero() {
    let dir = std::env::temp_dir().join(format!("celeriac-sigterm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("test.toml");
    std::fs::write(&config, CONFIG).unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_celeriac"))
        .args(["--log-json", "serve", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // Read the log lines on a thread; find the address it listens on.
    let stdout = child.stdout.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                let _ = tx.send(v);
            }
        }
    });
    let mut logs = Vec::new();
    let addr = loop {
        let line = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("server logs that it listens")
            .expect("server exited early");
        logs.push(line.clone());
        if line["fields"]["message"] == "listening" {
            break line["fields"]["addr"].as_str().unwrap().to_string();
        }
    };
    let url = format!("http://{addr}");
    let client = reqwest::Client::new();

    // Two workers, ten 150 ms tasks: about 750 ms of queued work.
    let mut ids = Vec::new();
    for _ in 0..10 {
        let r: Value = client
            .post(format!("{url}/v1/tasks/debug.sleep"))
            .json(&json!({"ms": 150}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.push(r["task_id"].as_str().unwrap().to_string());
    }
    // Long polls opened before the signal are answered while the server drains.
    let polls: Vec<_> = ids
        .iter()
        .map(|id| {
            let c = client.clone();
            let u = format!("{url}/v1/tasks/{id}?wait=30");
            tokio::spawn(async move { c.get(u).send().await.unwrap().json::<Value>().await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    // New work is refused with 503 while draining.
    assert!(
        wait_until(Duration::from_secs(5), || async {
            match client
                .post(format!("{url}/v1/tasks/debug.sleep"))
                .json(&json!({"ms": 1}))
                .send()
                .await
            {
                Ok(r) => r.status().as_u16() == 503,
                Err(_) => false,
            }
        })
        .await,
        "submits get 503 once shutdown starts"
    );

    for p in polls {
        let v = p
            .await
            .unwrap()
            .expect("long poll answered during the drain");
        assert_eq!(
            v["state"], "SUCCESS",
            "queued task finished before exit: {v}"
        );
    }
    let exit = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(exit.code(), Some(0), "exits 0 after draining");
    // The reader thread ends when the process's stdout closes.
    while let Ok(Some(line)) = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
        logs.push(line);
    }
    let messages: Vec<_> = logs
        .iter()
        .filter_map(|l| l["fields"]["message"].as_str())
        .collect();
    assert!(
        messages
            .iter()
            .any(|m| m.starts_with("drained: every queued and running task finished")),
        "{messages:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
