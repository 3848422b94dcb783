//! Shared helpers: a real celeriac server on 127.0.0.1:0, a client, `wait_until`,
//! bounded waits on child processes; [`broker`] for the broker tests.
#![allow(dead_code)]

pub mod broker;

use std::future::Future;
use std::io::Read;
use std::process::{Child, ExitStatus, Output};
use std::sync::Arc;
use std::time::Duration;

use celeriac::app::{App, AppState};
use celeriac::config::Config;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Held by every test that starts a `processes` pool in this process, one at a time:
/// tests/processes.rs counts the `celeriac child` processes of this process.
pub static PROCESS_POOLS: std::sync::LazyLock<tokio::sync::Mutex<()>> =
    std::sync::LazyLock::new(|| tokio::sync::Mutex::new(()));

/// A running server in this process; its HTTP helpers are [`Api`]'s (`Deref`).
pub struct Server {
    pub api: Api,
    pub state: Arc<AppState>,
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl std::ops::Deref for Server {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

/// A served celeriac's URL and a client for it: the HTTP helpers of [`Server`] and
/// [`Node`].
pub struct Api {
    pub url: String,
    pub client: reqwest::Client,
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
        api: Api {
            url,
            client: client(),
        },
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

impl Api {
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
}

impl Server {
    /// Stops the server as SIGTERM would and waits (at most 60 s) for it to drain and
    /// exit.
    pub async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(60), self.handle)
            .await
            .expect("the server drained and exited within 60 s")
            .unwrap()
            .unwrap();
    }
}

/// An HTTP client whose every request gives up after 120 s, so a server that stops
/// answering fails the test instead of hanging it.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("reqwest client")
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

/// Waits (at most `limit`) for `child` to exit; kills it and panics past the limit, so a
/// stuck process fails the test instead of hanging it.
pub fn wait_child(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait on a child") {
            return status;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "child process {} still running after {limit:?}: killed",
                child.id()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// [`wait_child`] off the async runtime; gives the child back with its status.
pub async fn wait_child_async(mut child: Child, limit: Duration) -> (ExitStatus, Child) {
    tokio::task::spawn_blocking(move || {
        let status = wait_child(&mut child, limit);
        (status, child)
    })
    .await
    .expect("the waiting thread does not panic unless the child hangs")
}

/// Collects a child's piped stdout and stderr and waits (at most `limit`) for it to exit;
/// past the limit it is killed and the test fails with what it printed.
pub fn wait_child_output(mut child: Child, limit: Duration) -> Output {
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let err = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait on a child") {
            break Some(status);
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (stdout, stderr) = (out.join().unwrap(), err.join().unwrap());
    let Some(status) = status else {
        panic!(
            "child process still running after {limit:?}: killed\n{}\n{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        );
    };
    Output {
        status,
        stdout,
        stderr,
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
        Node::spawn_with_env(role, config, name, &[])
    }

    /// [`Node::spawn`] with `env` added to the child's environment.
    pub fn spawn_with_env(role: &str, config: &str, name: &str, env: &[(&str, &str)]) -> Node {
        let path = broker::scratch(name).join("config.toml");
        std::fs::write(&path, config).unwrap();
        let port = broker::free_port();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_celeriac"))
            .args([role, "--config"])
            .arg(&path)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env_remove("CELERIAC_BROKER_URL")
            .envs(env.iter().copied())
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

    /// An [`Api`] for this node.
    pub fn api(&self) -> Api {
        Api {
            url: self.url.clone(),
            client: client(),
        }
    }

    /// Sends the signal `sig` (`-TERM`, `-KILL`, ...) with `kill`.
    pub fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    /// Sends SIGTERM and waits (at most `limit`) for the node to drain and exit; past
    /// the limit it is killed and the test fails.
    pub async fn terminate(self, limit: Duration) -> ExitStatus {
        self.signal("-TERM");
        tokio::task::spawn_blocking(move || {
            let mut node = self;
            wait_child(&mut node.child, limit)
        })
        .await
        .unwrap()
    }

    /// Waits (at most `secs`) until `/health/ready` answers 200.
    pub async fn wait_ready(&self, secs: u64) {
        let client = client();
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
