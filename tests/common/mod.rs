//! Shared helpers: a real celeriac server on 127.0.0.1:0, a client, `wait_until`.
#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use celeriac::app::{App, AppState};
use celeriac::config::Config;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running server.
pub struct Server {
    pub url: String,
    pub client: reqwest::Client,
    pub state: Arc<AppState>,
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<anyhow::Result<()>>,
}

/// Parses `toml` (relative model paths resolve against the repository root), serves it
/// on a free port, and waits (at most 120 s) until no worker is still warming up, so a
/// test's first request meets warm workers.
pub async fn start(toml: &str) -> Server {
    let s = start_cold(toml).await;
    wait_until(Duration::from_secs(120), || async {
        s.state.pools.iter().all(|p| p.status().warming == 0)
    })
    .await;
    s
}

/// [`start`] without waiting for warm-ups.
pub async fn start_cold(toml: &str) -> Server {
    // `processes` pools start the celeriac binary, not this test harness.
    celeriac::actors::worker::child::set_program(env!("CARGO_BIN_EXE_celeriac"));
    let config = Config::from_toml(toml, std::path::Path::new(env!("CARGO_MANIFEST_DIR")))
        .expect("test config parses");
    let app = App::start(config).await.expect("app starts");
    let state = app.state().clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(app.serve(listener, async {
        let _ = stopped.await;
    }));
    Server {
        url,
        client: reqwest::Client::new(),
        state,
        stop: Some(stop),
        handle,
    }
}

/// A response: status, headers, JSON body (Null when the body is not JSON).
pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Resp {
    pub async fn from_response(r: reqwest::Response) -> Resp {
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let bytes = r.bytes().await.unwrap();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Resp {
            status,
            headers,
            body,
        }
    }

    /// Asserts an error body: the status, the code, and a non-empty message.
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "body: {}", self.body);
        assert_eq!(self.body["code"], code, "body: {}", self.body);
        assert!(
            self.body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "error message missing: {}",
            self.body
        );
    }

    pub fn id(&self) -> String {
        self.body["task_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no task_id in {}", self.body))
            .to_string()
    }
}

impl Server {
    pub async fn post(&self, path: &str, body: &Value) -> Resp {
        let r = self
            .client
            .post(format!("{}{path}", self.url))
            .json(body)
            .send()
            .await
            .unwrap();
        Resp::from_response(r).await
    }

    pub async fn post_raw(&self, path: &str, content_type: &str, body: Vec<u8>) -> Resp {
        let r = self
            .client
            .post(format!("{}{path}", self.url))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        Resp::from_response(r).await
    }

    pub async fn get(&self, path: &str) -> Resp {
        let r = self
            .client
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap();
        Resp::from_response(r).await
    }

    pub async fn delete(&self, path: &str) -> Resp {
        let r = self
            .client
            .delete(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap();
        Resp::from_response(r).await
    }

    /// `PUT /v1/admin/pools/{pool}` with `body`, as an operator holding `token`.
    pub async fn admin_put(&self, pool: &str, token: &str, body: &Value) -> Resp {
        let r = self
            .client
            .put(format!("{}/v1/admin/pools/{pool}", self.url))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap();
        Resp::from_response(r).await
    }

    /// Submits one task and returns its id (asserting 202).
    pub async fn submit(&self, task: &str, input: Value) -> String {
        let r = self.post(&format!("/v1/tasks/{task}"), &input).await;
        assert_eq!(r.status, 202, "submit {task}: {}", r.body);
        r.id()
    }

    /// Long-polls a task until it is final (or the wait runs out) and returns its view.
    pub async fn wait_final(&self, id: &str, secs: f64) -> Value {
        let r = self.get(&format!("/v1/tasks/{id}?wait={secs}")).await;
        assert_eq!(r.status, 200, "poll {id}: {}", r.body);
        r.body
    }

    pub async fn state_of(&self, id: &str) -> String {
        let r = self.get(&format!("/v1/tasks/{id}")).await;
        r.body["state"].as_str().unwrap_or("?").to_string()
    }

    /// Waits (up to 5 s) until a worker has started the task.
    pub async fn wait_started(&self, id: &str) -> bool {
        wait_until(Duration::from_secs(5), || async {
            self.state_of(id).await == "STARTED"
        })
        .await
    }

    /// Scrapes `/metrics` and parses it with an independent Prometheus parser.
    pub async fn scrape(&self) -> prometheus_parse::Scrape {
        let text = self
            .client
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap()
    }

    /// Stops the server as SIGTERM would and waits for it to drain and exit.
    pub async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.handle.await.unwrap().unwrap();
    }
}

/// Polls `cond` every 10 ms until it holds; false if `timeout` passes first.
pub async fn wait_until<F, Fut>(timeout: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A test config: one pool `p` with the given settings and all debug tasks routed to it.
pub fn debug_config(pool: &str, extra: &str) -> String {
    debug_config_in("p", pool, extra)
}

/// [`debug_config`] with the pool named `name` (metrics are per process: a test that
/// reads them uses a pool of its own).
pub fn debug_config_in(name: &str, pool: &str, extra: &str) -> String {
    format!(
        r#"
        [server]
        body_limit_bytes = 4096
        max_wait_seconds = 10.0
        drain_timeout_seconds = 20.0
        [supervisor]
        backoff_initial_ms = 20
        backoff_max_ms = 200
        time_limit_check_ms = 10
        {extra}
        [pools.{name}]
        {pool}
        [tasks."debug.echo"]
        kind = "debug.echo"
        pool = "{name}"
        [tasks."debug.sleep"]
        kind = "debug.sleep"
        pool = "{name}"
        [tasks."debug.fail"]
        kind = "debug.fail"
        pool = "{name}"
        [tasks."debug.panic"]
        kind = "debug.panic"
        pool = "{name}"
        [tasks."debug.crash_worker"]
        kind = "debug.crash_worker"
        pool = "{name}"
        "#
    )
}

/// A config from [`debug_config`] with the admin API enabled under `token`.
pub fn with_admin_token(config: &str, token: &str) -> String {
    assert!(
        config.contains("[server]\n"),
        "debug_config no longer emits a `[server]` table"
    );
    config.replacen(
        "[server]\n",
        &format!("[server]\nadmin_token = \"{token}\"\n"),
        1,
    )
}

/// [`debug_config`] with another restart back-off.
pub fn with_backoff(config: &str, initial_ms: u64, max_ms: u64) -> String {
    let from = "backoff_initial_ms = 20\n        backoff_max_ms = 200";
    assert!(
        config.contains(from),
        "debug_config changed its back-off lines"
    );
    config.replace(
        from,
        &format!("backoff_initial_ms = {initial_ms}\nbackoff_max_ms = {max_ms}"),
    )
}

/// The `text` field of every line of a JSON-lines file.
pub fn jsonl_texts(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A scratch directory of this test process.
pub fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("celeriac-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The Python of the test virtualenv (`scripts/test-deps.sh`): `CELERIAC_PYTHON`, else
/// `~/.cache/celeriac/pyenv/bin/python`.
pub fn python() -> std::path::PathBuf {
    std::env::var_os("CELERIAC_PYTHON").map_or_else(
        || {
            let home = std::env::var("HOME").unwrap();
            std::path::Path::new(&home).join(".cache/celeriac/pyenv/bin/python")
        },
        std::path::PathBuf::from,
    )
}

/// `../shared` (the bench inputs, the seed app, the data set): `CELERIAC_SHARED`, else
/// beside the repository. `None` when absent; under CI (`CI=true`) its absence fails
/// the test instead, so a check that needs it can never pass by skipping.
pub fn shared_dir() -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("CELERIAC_SHARED").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"),
        std::path::PathBuf::from,
    );
    if dir.join("bench/inputs.jsonl").is_file() {
        return Some(dir);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{} has no bench/inputs.jsonl: under CI this check must run (set CELERIAC_SHARED)",
        dir.display()
    );
    eprintln!(
        "{} is missing: skipping the checks that need it",
        dir.display()
    );
    None
}

/// The `celeriac` binary as a child process serving `config` on a free port, with
/// `role` (`serve` or `worker`); killed when dropped.
pub struct Node {
    pub child: std::process::Child,
    pub url: String,
}

impl Node {
    pub fn spawn(role: &str, config: &str, name: &str) -> Node {
        let path = scratch(name).join("config.toml");
        std::fs::write(&path, config).unwrap();
        let port = free_port();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_celeriac"))
            .args([role, "--config"])
            .arg(&path)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env_remove("CELERIAC_BROKER_URL")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Node {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Waits (at most `secs`) until `/health/ready` answers 200.
    pub async fn wait_ready(&self, secs: u64) {
        let client = reqwest::Client::new();
        let url = format!("{}/health/ready", self.url);
        assert!(
            wait_until(Duration::from_secs(secs), || {
                let r = client.get(&url).send();
                async move { r.await.is_ok_and(|r| r.status() == 200) }
            })
            .await,
            "node did not become ready"
        );
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `redis-server` of our own on a free port, without persistence; stopped when
/// dropped.
pub struct Redis {
    pub port: u16,
    child: Option<std::process::Child>,
}

impl Redis {
    pub fn start() -> Redis {
        let mut r = Redis {
            port: free_port(),
            child: None,
        };
        r.restart();
        r
    }

    /// Starts (again) on the same port and waits (at most 10 s) until it answers.
    pub fn restart(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server runs (scripts/test-deps.sh installs it)");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !self.pings() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pings(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}
