//! What the broker tests share: a `redis-server` of their own (TCP, TLS with
//! certificates made here, or a Unix socket), scratch directories, and the Python
//! Celery virtualenv (`scripts/test-deps.sh` installs redis-server, openssl and it).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use celeriac::config::broker_url::BrokerUrl;
use serde_json::Value;

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A scratch directory of this test process.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("celeriac-broker-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A CA and the server and client certificates it signed (PEM files, P-256 keys), made
/// with the `openssl` command.
#[derive(Debug, Clone)]
pub struct Certs {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// Runs `openssl` in `dir` with `words` (split at spaces) and then `more`.
fn openssl(dir: &Path, words: &str, more: &[&str]) {
    let out = Command::new("openssl")
        .args(words.split_whitespace())
        .args(more)
        .current_dir(dir)
        .output()
        .expect("openssl runs (scripts/test-deps.sh installs it)");
    assert!(
        out.status.success(),
        "openssl {words} {more:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Certs {
    /// A fresh CA named `name` in `scratch(name)`; the server certificate names
    /// 127.0.0.1 and localhost.
    pub fn make(name: &str) -> Certs {
        let dir = scratch(name);
        let key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
        openssl(
            &dir,
            &format!("req -x509 {key} -days 2 -keyout ca.key -out ca.pem"),
            &["-subj", &format!("/CN=celeriac test CA {name}")],
        );
        for (who, ext) in [
            (
                "server",
                "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
            ),
            (
                "client",
                "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n",
            ),
        ] {
            std::fs::write(dir.join(format!("{who}.ext")), ext).unwrap();
            openssl(
                &dir,
                &format!("req {key} -keyout {who}.key -out {who}.csr"),
                &["-subj", &format!("/CN=celeriac test {who}")],
            );
            openssl(
                &dir,
                &format!(
                    "x509 -req -in {who}.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out {who}.pem -days 2 -extfile {who}.ext"
                ),
                &[],
            );
        }
        Certs {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        }
    }
}

/// How a [`Redis`] listens.
#[derive(Debug, Clone)]
enum Listen {
    Tcp,
    /// TLS only (`--port 0`), client certificates required.
    Tls(Certs),
    /// A Unix socket only.
    Unix(PathBuf),
}

/// A `redis-server` of our own, without persistence.
pub struct Redis {
    /// Its TCP or TLS port (0 for a socket).
    pub port: u16,
    listen: Listen,
    password: Option<String>,
    child: Option<Child>,
}

impl Redis {
    /// Plain TCP on a free port.
    pub fn start() -> Redis {
        Redis::launch(Listen::Tcp, None)
    }

    /// TLS only, on a free port, with `certs` (client certificates required), and a
    /// password if given.
    pub fn start_tls(certs: &Certs, password: Option<&str>) -> Redis {
        Redis::launch(Listen::Tls(certs.clone()), password)
    }

    /// A Unix socket only.
    pub fn start_unix(name: &str) -> Redis {
        Redis::launch(Listen::Unix(scratch(name).join("redis.sock")), None)
    }

    fn launch(listen: Listen, password: Option<&str>) -> Redis {
        let port = match listen {
            Listen::Unix(_) => 0,
            _ => free_port(),
        };
        let mut r = Redis {
            port,
            listen,
            password: password.map(String::from),
            child: None,
        };
        r.restart();
        r
    }

    /// Starts (again) on the same port or socket and waits (at most 10 s) until it
    /// answers.
    pub fn restart(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--save", "", "--appendonly", "no", "--bind", "127.0.0.1"]);
        let port = self.port.to_string();
        match &self.listen {
            Listen::Tcp => {
                cmd.args(["--port", &port]);
            }
            Listen::Tls(c) => {
                cmd.args(["--port", "0", "--tls-port", &port])
                    .arg("--tls-cert-file")
                    .arg(&c.server_cert)
                    .arg("--tls-key-file")
                    .arg(&c.server_key)
                    .arg("--tls-ca-cert-file")
                    .arg(&c.ca)
                    .args(["--tls-auth-clients", "yes"]);
            }
            Listen::Unix(path) => {
                let _ = std::fs::remove_file(path);
                cmd.args(["--port", "0", "--unixsocketperm", "700", "--unixsocket"])
                    .arg(path);
            }
        }
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p]);
        }
        let child = cmd
            .stdout(Stdio::null())
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

    fn pings(&self) -> bool {
        let client = self.client();
        let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_millis(500)) else {
            return false;
        };
        redis::cmd("PING")
            .query::<String>(&mut conn)
            .is_ok_and(|p| p == "PONG")
    }

    /// Stops it (SIGKILL: nothing is saved).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Its URL for database 0, as a Celery user writes it (TLS: Celery's `ssl_*` options
    /// with this server's CA and a client certificate).
    pub fn url(&self) -> String {
        self.url_db(0)
    }

    /// [`Redis::url`] for database `db`.
    pub fn url_db(&self, db: u32) -> String {
        let auth = self
            .password
            .as_ref()
            .map_or(String::new(), |p| format!(":{p}@"));
        match &self.listen {
            Listen::Tcp => format!("redis://{auth}127.0.0.1:{}/{db}", self.port),
            Listen::Tls(c) => format!(
                "rediss://{auth}127.0.0.1:{}/{db}?ssl_cert_reqs=required&ssl_ca_certs={}&ssl_certfile={}&ssl_keyfile={}",
                self.port,
                c.ca.display(),
                c.client_cert.display(),
                c.client_key.display()
            ),
            Listen::Unix(path) => {
                let pass = self
                    .password
                    .as_ref()
                    .map_or(String::new(), |p| format!("&password={p}"));
                format!("redis+socket://{}?virtual_host={db}{pass}", path.display())
            }
        }
    }

    /// A client of database 0, through celeriac's own URL parsing.
    pub fn client(&self) -> redis::Client {
        BrokerUrl::parse(&self.url()).unwrap().client().unwrap()
    }

    /// A raw command on database `db`, for checks (`LLEN`, `HLEN`, `GET`).
    pub async fn cmd_db(&self, db: u32, args: &[&str]) -> redis::Value {
        let client = BrokerUrl::parse(&self.url_db(db))
            .unwrap()
            .client()
            .unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query_async(&mut conn).await.unwrap()
    }

    /// A raw command on database 0.
    pub async fn cmd(&self, args: &[&str]) -> redis::Value {
        self.cmd_db(0, args).await
    }

    pub async fn int(&self, args: &[&str]) -> i64 {
        match self.cmd(args).await {
            redis::Value::Int(n) => n,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    /// The result-backend meta of a task in database `db`.
    pub async fn meta_db(&self, db: u32, id: &str) -> Value {
        match self
            .cmd_db(db, &["GET", &format!("celery-task-meta-{id}")])
            .await
        {
            redis::Value::BulkString(b) => serde_json::from_slice(&b).unwrap(),
            redis::Value::Nil => Value::Null,
            other => panic!("{other:?}"),
        }
    }

    /// The result-backend meta of a task.
    pub async fn meta(&self, id: &str) -> Value {
        self.meta_db(0, id).await
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The test virtualenv's Python (scripts/test-deps.sh).
pub fn python() -> PathBuf {
    std::env::var_os("CELERIAC_PYTHON").map_or_else(
        || {
            let home = std::env::var("HOME").unwrap();
            Path::new(&home).join(".cache/celeriac/pyenv/bin/python")
        },
        PathBuf::from,
    )
}

/// Runs a Python script with the test virtualenv (at most 120 s); returns its stdout.
pub fn run_python(script: &str, args: &[&str]) -> String {
    let dir = scratch("py");
    let path = dir.join(format!("s{}.py", uuid::Uuid::new_v4().simple()));
    std::fs::write(&path, script).unwrap();
    let child = Command::new(python())
        .arg(&path)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/test-deps.sh)", python().display()));
    let out = super::wait_child_output(child, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "python failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
