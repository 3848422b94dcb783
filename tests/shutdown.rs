//! SIGTERM against the real binary: queued tasks finish before the process exits 0.

use crate::common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::wait_until;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

/// Kills the server if the test fails before it exits on its own.
struct Reap(Option<std::process::Child>);

impl Drop for Reap {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_queued_tasks_then_exits_zero() {
    let dir = std::env::temp_dir().join(format!("celeriac-sigterm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("test.toml");
    std::fs::write(&config, CONFIG).unwrap();

    let mut server = Reap(Some(
        Command::new(env!("CARGO_BIN_EXE_celeriac"))
            .args(["--log-json", "serve", "--config"])
            .arg(&config)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    ));
    let child = server.0.as_mut().unwrap();
    let pid = child.id();
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
    let client = common::client();

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
    // Long polls opened before the signal are answered while the server drains. Each
    // request is written whole on its own connection; a request on one more connection,
    // answered, shows the server accepted the earlier ones (accepts are in order), so
    // no fixed pause is needed before the signal.
    let addr_for_polls = addr.clone();
    let mut polls = Vec::new();
    for id in &ids {
        let mut conn = tokio::net::TcpStream::connect(&addr_for_polls)
            .await
            .unwrap();
        let req = format!(
            "GET /v1/tasks/{id}?wait=30 HTTP/1.1\r\nhost: {addr_for_polls}\r\nconnection: close\r\n\r\n"
        );
        conn.write_all(req.as_bytes()).await.unwrap();
        polls.push(tokio::spawn(async move {
            let mut raw = Vec::new();
            conn.read_to_end(&mut raw).await.map(|_| raw)
        }));
    }
    let live = client
        .get(format!("{url}/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status().as_u16(), 200);
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
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
        let raw = tokio::time::timeout(Duration::from_secs(40), p)
            .await
            .expect("long poll answered within its 30 s wait")
            .unwrap()
            .expect("long poll answered during the drain");
        let text = String::from_utf8_lossy(&raw);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
        let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(
            v["state"], "SUCCESS",
            "queued task finished before exit: {v}"
        );
    }
    let child = server.0.take().unwrap();
    let (exit, _) = common::wait_child_async(child, Duration::from_secs(40)).await;
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
